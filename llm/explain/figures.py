"""The explorer's data as PNG figures (matplotlib, Agg canvas; no pyplot, so no global backend is touched).

    paths = write_pngs(explain_data(run, prompt), "docs/explain")

tokens.png       the prompt's tokens as coloured pieces with their ids, and how the byte, char and BPE tokenizers
                 split the same text
embeddings.png   the token embedding table's first two principal components, the prompt's tokens highlighted
attention.png    one heat-map per layer and head (rows: queries, columns: keys), masked cells hatched grey,
                 the mean row entropy in each title
positions.png    cosine similarity of the position vectors (learned or sinusoidal positions only)
prediction.png   the 20 most likely next tokens at temperature 1
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110
INK = "#1a1a1a"
MUTED = "#666666"
MASKED = "#d9d9d9"
HIGHLIGHT = "#c0392b"
# Light fills that keep dark text readable.
FILLS = ["#cfe3f6", "#fbd9b5", "#cdebc5", "#f6c9c9", "#e0d4ef", "#e8d8c9", "#f7d6ea", "#e3e3e3", "#eef0b8", "#c6ebef"]
# Characters the bundled DejaVu fonts lack, and what the figures draw instead.
_FONT_SWAPS = str.maketrans({"␠": "␣", "␍": "↵"})


def write_pngs(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the figures for `data` (from `explain_data`) into `out_dir` (created); returns the files written."""
    import matplotlib

    matplotlib.rcParams.update({"font.size": 10, "axes.titlesize": 10, "text.color": INK, "axes.labelcolor": INK,
                                "xtick.color": INK, "ytick.color": INK, "axes.edgecolor": MUTED})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("tokens.png", _tokens), ("embeddings.png", _embeddings), ("attention.png", _attention)]
    if data["positions"]["kind"] is not None:
        jobs.append(("positions.png", _positions))
    jobs.append(("prediction.png", _prediction))
    written = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from")  # e.g. CJK text in DejaVu
        for name, draw in jobs:
            fig = draw(data)
            path = out / name
            fig.savefig(path, dpi=DPI, facecolor="white")
            written.append(path)
    return written


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), facecolor="white", layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _show(text: str) -> str:
    """A token's text for a figure: whitespace made visible, glyphs the font lacks swapped."""
    text = text.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥").replace("\r", "↵")
    text = "".join(c if c.isprintable() else "".join(f"<0x{b:02X}>" for b in c.encode()) for c in text)
    return text.translate(_FONT_SWAPS) or "∅"


def _piece(token: dict[str, Any]) -> str:
    """A prompt token's piece; a partial character as its bytes in hex."""
    if token.get("partial"):
        return " ".join(f"{b:02X}" for b in token["bytes"])
    return _show(token["text"])


def _model_line(data: dict[str, Any]) -> str:
    m = data["model"]
    return (f"{m['n_layers']} layers, {m['n_heads']} heads, d_model {m['d_model']}, {m['position']} positions, "
            f"{m['tokenizer']} tokenizer, step {m['step']}")


# ---- tokens -------------------------------------------------------------------------------------------------


def _layout(pieces: list[tuple[str, str]], width: float) -> list[tuple[float, int, float]]:
    """(x, row, box width) in character units for each (text, id) piece, wrapping at `width` units."""
    x, row, boxes = 0.0, 0, []
    for text, sub in pieces:
        w = max(len(text), len(sub) * 0.75) + 1.2
        if x > 0 and x + w > width:
            x, row = 0.0, row + 1
        boxes.append((x, row, w))
        x += w + 0.4
    return boxes


def _tokens(data: dict[str, Any]):
    from matplotlib.patches import FancyBboxPatch

    width = 70.0
    sections = [(f"{data['model']['tokenizer']} tokenizer of the model: {len(data['tokens'])} tokens",
                 [(_piece(t), str(t["id"])) for t in data["tokens"]], True)]
    for kind, split in data["tokenizers"].items():
        sections.append((f"{kind}: {len(split)} tokens", [(_show(t["text"]), "") for t in split], False))
    layouts = [_layout(pieces, width) for _, pieces, _ in sections]
    row_h = [2.3 if with_ids else 1.5 for _, _, with_ids in sections]
    heights = [(max(r for _, r, _ in lay) + 1 if lay else 1) * h + 1.4 for lay, h in zip(layouts, row_h)]
    total = sum(heights)
    fig = _figure(10, max(2.0, total * 0.24))
    ax = fig.add_subplot()
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(total, 0)
    ax.axis("off")
    ax.set_title(f"Tokens of the prompt  ({_model_line(data)})", loc="left", color=INK)
    top = 0.0
    for (title, pieces, with_ids), lay, h, sec_h in zip(sections, layouts, row_h, heights):
        ax.text(0, top + 0.7, title, fontsize=10 if with_ids else 9, color=INK if with_ids else MUTED,
                weight="bold" if with_ids else "normal", va="center", parse_math=False)
        for k, ((text, sub), (x, row, w)) in enumerate(zip(pieces, lay)):
            y = top + 1.4 + row * h
            box_h = h - 0.5
            ax.add_patch(FancyBboxPatch((x, y), w, box_h, boxstyle="round,pad=0,rounding_size=0.3",
                                        facecolor=FILLS[k % len(FILLS)], edgecolor="none"))
            ax.text(x + w / 2, y + (0.65 if with_ids else box_h / 2), text, ha="center", va="center",
                    fontsize=10 if with_ids else 8.5, family="DejaVu Sans Mono", color=INK, parse_math=False)
            if with_ids:
                ax.text(x + w / 2, y + 1.45, sub, ha="center", va="center", fontsize=7.5, color=MUTED)
        top += sec_h
    return fig


# ---- embeddings ---------------------------------------------------------------------------------------------


def _embeddings(data: dict[str, Any]):
    emb = data["embeddings"]
    pts = np.asarray(emb["points"], float).reshape(-1, 2)
    ids = emb["ids"]
    where = {i: k for k, i in enumerate(ids)}
    prompt_ids = list(dict.fromkeys(t["id"] for t in data["tokens"]))
    fig = _figure(8, 6.5)
    ax = fig.add_subplot()
    ax.scatter(pts[:, 0], pts[:, 1], s=6, color="#9db4c8", alpha=0.6, linewidths=0, label="vocabulary")
    hl = [where[i] for i in prompt_ids if i in where]
    ax.scatter(pts[hl, 0], pts[hl, 1], s=36, color=HIGHLIGHT, linewidths=0, label="prompt tokens", zorder=3)
    for k in hl:
        ax.annotate(_show(emb["labels"][k]), pts[k], xytext=(4, 3), textcoords="offset points", fontsize=9,
                    color=INK, family="DejaVu Sans Mono", zorder=4, parse_math=False)
    e1, e2 = emb["explained"]
    ax.set_xlabel(f"PC 1 ({100 * e1:.1f}% of the variance)")
    ax.set_ylabel(f"PC 2 ({100 * e2:.1f}% of the variance)")
    ax.set_title(f"Token embeddings: {len(ids)} tokens of the vocabulary, first two principal components")
    ax.legend(loc="best", frameon=False)
    ax.grid(True, color="#eeeeee")
    return fig


# ---- attention ----------------------------------------------------------------------------------------------


def _attention(data: dict[str, Any]):
    att = data["attention"]
    n_layers, n_heads = att["layers"], att["heads"]
    w = np.asarray(att["weights"], float)  # [L, H, T, T]
    mask = np.asarray(att["mask"], bool)
    t = mask.shape[0]
    labels = [_piece(tok) for tok in data["tokens"]]
    ticks = t <= 24
    cell = min(2.4, max(1.1, 22.0 / max(n_layers, n_heads)))
    fig = _figure(min(26, 0.9 + cell * n_heads), min(30, 0.8 + cell * n_layers * 1.05))
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    cmap = _cmap("Blues").with_extremes(bad=MASKED)
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(np.ma.masked_array(w[layer, head], ~mask), cmap=cmap, vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            ys, xs = np.nonzero(~mask)
            if len(xs):  # hatching marks masked cells apart from tiny weights
                ax.scatter(xs, ys, marker="x", s=max(2.0, 60.0 / t), color="#b0b0b0", linewidths=0.6)
            ax.set_title(f"L{layer} H{head}  H={att['entropy'][layer][head]:.2f} nats", fontsize=8.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if ticks and head == 0:
                ax.set_yticks(range(t), labels, fontsize=7, family="DejaVu Sans Mono", parse_math=False)
            if ticks and layer == n_layers - 1:
                ax.set_xticks(range(t), labels, fontsize=7, family="DejaVu Sans Mono", rotation=90,
                              parse_math=False)
    source = data["model"]["weights_source"]
    fig.suptitle(f"Attention weights (rows: queries, columns: keys; grey ×: masked; {source})", color=INK)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="weight")
    return fig


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


# ---- positions and prediction -------------------------------------------------------------------------------


def _positions(data: dict[str, Any]):
    pos = data["positions"]
    sim = np.asarray(pos["similarity"], float)
    t = sim.shape[0]
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    image = ax.imshow(sim, cmap=_cmap("RdBu_r"), vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    step = max(1, math.ceil(t / 16))
    ax.set_xticks(range(0, t, step))
    ax.set_yticks(range(0, t, step))
    ax.set_title(f"{pos['kind'].capitalize()} position vectors: cosine similarity")
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine")
    return fig


def _prediction(data: dict[str, Any]):
    top = data["prediction"]["top"][:20]
    logits = np.array([p["logit"] for p in top], float)
    if top and all("prob" in p for p in top):
        probs = np.array([p["prob"] for p in top], float)
        what = "probability"
    else:  # softmax over the listed logits only
        probs = np.exp(logits - logits.max()) if len(logits) else logits
        probs = probs / probs.sum() if len(probs) else probs
        what = "probability among the listed tokens"
    fig = _figure(7.5, max(2.5, 0.6 + 0.3 * len(top)))
    ax = fig.add_subplot()
    y = np.arange(len(top))
    ax.barh(y, probs, color="#4a78a8")
    ax.set_yticks(y, [f"{_show(p['text'])}  ({p['id']})" for p in top], family="DejaVu Sans Mono",
                  parse_math=False)
    ax.invert_yaxis()
    for yi, p in zip(y, probs):
        ax.text(p, yi, f" {p:.3f}", va="center", fontsize=8, color=INK)
    ax.set_xlim(0, max(0.05, float(probs.max()) * 1.18) if len(probs) else 1)
    ax.set_xlabel(f"next-token {what} (temperature 1)")
    prompt = data["prompt"]
    shown = prompt if len(prompt) <= 40 else "…" + prompt[-39:]
    ax.set_title(f"Most likely next tokens after {_show(shown)!s}", loc="left", parse_math=False)
    ax.grid(True, axis="x", color="#eeeeee")
    return fig
