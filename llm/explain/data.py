"""What the explorer shows about one prompt: tokens, embeddings, positions, attention and the next-token prediction.

    run = load_run("runs/x")
    data = explain_data(run, "def f(x):")       # a JSON-serialisable dict, laid out as in SCHEMA.md
    text = explain_json(data)

One forward pass with the 'intermediates' collection mutable gives the logits and every layer's attention
probabilities (`SelfAttention` sows them, computed by the reference softmax from the layer's own queries and keys;
see `llm.ops.attention.attention_weights`). Everything else is read from the parameters and the tokenizers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm.config.sampling import SamplingParams
from llm.inference import encode_prompts
from llm.model import Transformer
from llm.model.mixer_table import MIXER_TABLE
from llm.model.positions import sinusoidal
from llm.ops.attention import CAPABILITIES, make_mask, runnable_impl
from llm.runs import LoadedRun
from llm.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer

EXPLAIN_SAMPLING = SamplingParams(temperature=1.0)  # the page's controls: the model's own distribution
N_NEIGHBORS = 8
BPE_DEMO_VOCAB = 512  # the BPE split shown for runs with another tokenizer

_LABEL_CHARS = {"\n": "⏎", " ": "␠", "\t": "⇥", "\r": "␍"}


def explain_data(run: LoadedRun, prompt: str, *, top: int = 50, max_vocab_points: int = 2000,
                 workdir: str | Path | None = None, sampling: SamplingParams = EXPLAIN_SAMPLING) -> dict[str, Any]:
    """The explorer's data for `prompt` (see SCHEMA.md). PromptError (one line) for an empty prompt, one that does
    not fit the context, or characters a char tokenizer lacks; ValueError when the model's outputs are not finite.

    top: how many of the largest next-token logits to list. max_vocab_points: how many tokens of the vocabulary
    the embedding map shows (the prompt's tokens and their neighbours always among them). workdir: reported in
    "model" (default: `run.workdir` if the run has one, else ""). sampling: where the page's temperature / top-k /
    top-p controls start.
    """
    model, tok = run.model, run.tokenizer
    cfg = model.cfg
    ids = encode_prompts(tok, [prompt], cfg.max_len)[0]
    params = nn.unbox(run.params)
    logits_TV, probs_LHTT = forward(run, ids)
    if not (np.isfinite(logits_TV).all() and np.isfinite(probs_LHTT).all()):
        raise ValueError(f"the model's logits or attention weights for this prompt are not finite (NaN or inf): the "
                         f"checkpoint of step {run.step} has diverged or is damaged; try another checkpoint")
    n_vocab = min(cfg.vocab_size, tok.vocab_size)  # ids past the tokenizer's are padding rows
    if workdir is None:
        workdir = getattr(run, "workdir", None) or ""
    captured = CAPABILITIES[cfg.attention_impl].weights  # else a fused kernel: the probabilities never exist
    if captured:
        note = ("Attention weights were captured during the forward pass: the softmax of each layer's own queries "
                f"and keys, the same math as the '{cfg.attention_impl}' implementation the model runs.")
    else:
        note = (f"The fused '{cfg.attention_impl}' attention kernel never materialises the attention weights, so "
                "the explorer recomputed them with the reference softmax from each layer's own queries and keys.")
    mixers = [f"{i} ({m})" for i, m in enumerate(cfg.layer_mixers) if not MIXER_TABLE[m].softmax]
    if mixers:
        layers = ", ".join(mixers)
        note += (f" Layers {layers} have sub-quadratic mixers instead of attention: no probabilities exist there; "
                 "shown is their token-mixing matrix M (out = M v) as |M| normalised per row.")
    t = len(ids)
    mask_TT = np.asarray(make_mask(t, t, causal=True, window=cfg.window)[0, 0]).astype(int)
    return {
        "model": {"workdir": str(workdir), "step": int(run.step), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                  "kv_heads": cfg.kv_heads, "d_model": cfg.d_model, "max_len": cfg.max_len,
                  "vocab_size": cfg.vocab_size, "position": cfg.position, "window": cfg.window,
                  "attention_impl": cfg.attention_impl, "tokenizer": tok.kind,
                  "weights_source": "captured" if captured else "recomputed", "note": note},
        "prompt": prompt,
        "tokens": [_token_entry(tok, i) for i in ids.tolist()],
        "tokenizers": _splits(tok, prompt),
        "embeddings": _embeddings(tok, _embedding_table(params, n_vocab), ids, max_vocab_points),
        "positions": _positions(cfg, params, t),
        "attention": {"layers": cfg.n_layers, "heads": cfg.n_heads,
                      "weights": round_rows(probs_LHTT).tolist(),
                      "entropy": np.round(row_entropy(probs_LHTT).mean(axis=-1), 6).tolist(),
                      "mask": mask_TT.tolist()},
        "prediction": {"top": _prediction(tok, logits_TV[-1, :n_vocab], top)},
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k or 0,
                     "top_p": 1.0 if sampling.top_p is None else sampling.top_p},
    }


def explain_json(data: dict[str, Any]) -> str:
    """`data` as compact JSON (no NaN or infinity: ValueError if any slipped in)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# ---- the forward pass ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _compiled_forward(model):
    def f(params, tokens_BT):
        logits, state = model.apply({"params": params}, tokens_BT, mutable=["intermediates"])
        return logits, state.get("intermediates", {})

    return jax.jit(f)


def forward(run: LoadedRun, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [T, vocab], attention probabilities [L, H, T, T]) of one sequence, both float32 numpy.

    A model whose attention implementation does not run on this backend (cuDNN without a GPU) runs a fallback
    that does (llm/ops/attention/capabilities.py): the same function."""
    model = run.model
    impl = runnable_impl(model.cfg.attention_impl, jax.default_backend(), **model.cfg.attention_features)
    if impl != model.cfg.attention_impl:
        model = Transformer(dataclasses.replace(model.cfg, attention_impl=impl))
    logits, inter = _compiled_forward(model)(run.params, jnp.asarray(np.asarray(ids)[None], jnp.int32))
    cfg = run.model.cfg
    probs = np.stack([_layer_weights(inter, cfg, i) for i in range(cfg.n_layers)])
    return np.asarray(logits[0], np.float32), probs.astype(np.float32)


def _layer_weights(inter, cfg, i: int) -> np.ndarray:
    """Layer i's [H, T, T]: its attention probabilities, or for a sub-quadratic mixer its token-mixing matrix M
    (out = M v) as |M| normalised per row: how strongly each earlier token's value enters each output."""
    attention = MIXER_TABLE[cfg.layer_mixers[i]].softmax
    sub, name = ("attention", "attention_weights") if attention else ("mixer", "mixing_weights")
    if not cfg.scan_layers:
        w = np.asarray(inter[f"layers_{i}"][sub][name][0])[0]
    elif cfg.mixer_group == 1:  # one stacked entry [L, B, H, T, T]
        w = np.asarray(inter["layers"][sub][name][0])[i, 0]
    else:  # a stacked entry per block of the pattern: [L / P, B, H, T, T]
        w = np.asarray(inter["layers"][f"block_{i % cfg.mixer_group}"][sub][name][0])[i // cfg.mixer_group, 0]
    if attention:
        return w
    w = np.abs(w)
    return w / np.maximum(w.sum(axis=-1, keepdims=True), np.finfo(np.float32).tiny)


def round_rows(p: np.ndarray, decimals: int = 4) -> np.ndarray:
    """Probabilities rounded to `decimals` places along the last axis so that every row still sums to exactly 1
    (largest remainders get the missing units); zeros stay zeros."""
    unit = 10**decimals
    scaled = np.asarray(p, np.float64) * unit
    floor = np.floor(scaled)
    frac = scaled - floor
    total = np.round(scaled.sum(axis=-1, keepdims=True))  # a row of probabilities: 0 or `unit`
    missing = (total - floor.sum(axis=-1, keepdims=True)).astype(np.int64)
    rank = np.argsort(np.argsort(-frac, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (floor + (rank < missing)) / unit


def row_entropy(p: np.ndarray) -> np.ndarray:
    """-sum p log p along the last axis (nats), 0 log 0 = 0."""
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


# ---- tokens -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte, inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(rest)}}


def _is_byte_level(tok: BPETokenizer) -> bool:
    """Whether the HF tokenizer's pieces are spelled in the byte-level alphabet (its decoder says so)."""
    decoder = tok.hf.decoder
    return decoder is not None and b'"ByteLevel"' in decoder.__getstate__()


def _special_text(tok: Tokenizer, i: int) -> str | None:
    """The text of special token `i`, or None when it is an ordinary token."""
    if i in tok._special_text:
        return tok._special_text[i]
    if isinstance(tok, ByteTokenizer) and i == tok.EOS:
        return tok.decode([i])
    if isinstance(tok, BPETokenizer):
        added = tok.hf.get_added_tokens_decoder().get(i)
        if added is not None:
            return added.content
    return None


def token_bytes(tok: Tokenizer, i: int) -> tuple[bytes, bool]:
    """(the UTF-8 bytes token `i` stands for, whether it is a special token)."""
    special = _special_text(tok, i)
    if special is not None:
        return special.encode("utf-8"), True
    if isinstance(tok, ByteTokenizer) and i < 256:
        return bytes([i]), False
    if isinstance(tok, BPETokenizer):
        piece = tok.hf.id_to_token(i)
        if piece is not None:
            table = _byte_level_table()
            if _is_byte_level(tok) and all(c in table for c in piece):
                return bytes(table[c] for c in piece), False
            m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # SentencePiece-style byte fallback
            if m:
                return bytes([int(m.group(1), 16)]), False
    return tok.decode([i]).encode("utf-8"), False


def _complete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def hex_text(b: bytes) -> str:
    """Bytes as text, each byte that is not part of a whole UTF-8 character written <0xNN>."""
    out, i = [], 0
    while i < len(b):
        for n in (1, 2, 3, 4):
            try:
                out.append(b[i : i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{b[i]:02X}>")
            i += 1
    return "".join(out)


def display_text(tok: Tokenizer, i: int) -> str:
    """The token's text, with <0xNN> for the bytes of a partial character."""
    b, special = token_bytes(tok, i)
    return b.decode("utf-8") if special else hex_text(b)


def label(tok: Tokenizer, i: int) -> str:
    """A printable label: special tokens as themselves, newline ⏎, space ␠, tab ⇥, other control characters and
    partial characters as <0xNN>."""
    b, special = token_bytes(tok, i)
    if special:
        return b.decode("utf-8")
    text = hex_text(b)
    out = []
    for c in text:
        if c in _LABEL_CHARS:
            out.append(_LABEL_CHARS[c])
        elif not c.isprintable():
            out.append("".join(f"<0x{x:02X}>" for x in c.encode("utf-8")))
        else:
            out.append(c)
    return "".join(out) or "∅"


def _token_entry(tok: Tokenizer, i: int) -> dict[str, Any]:
    b, special = token_bytes(tok, i)
    return {"id": i, "text": tok.decode([i]), "bytes": list(b), "partial": not special and not _complete(b)}


@functools.lru_cache(maxsize=1)
def demo_bpe() -> BPETokenizer:
    """A small byte-level BPE (512 ids) trained on the builtin Python docs corpus, for runs with another kind."""
    from llm.data.corpora.corpus import load_corpus

    return BPETokenizer.train(load_corpus("builtin:python_docs").text, BPE_DEMO_VOCAB)


def _splits(tok: Tokenizer, prompt: str) -> dict[str, list[dict[str, Any]]]:
    """The prompt as each kind of tokenizer splits it (the run's own tokenizer for its kind)."""
    others = {
        "byte": tok if tok.kind == "byte" else ByteTokenizer(),
        "char": tok if tok.kind == "char" else CharTokenizer(sorted(set(prompt))),
        "bpe": tok if tok.kind == "bpe" else demo_bpe(),
    }
    return {kind: [{"id": i, "text": display_text(t, i)} for i in t.encode(prompt).tolist()]
            for kind, t in others.items()}


# ---- embeddings and positions -------------------------------------------------------------------------------


def _embedding_table(params, n_vocab: int) -> np.ndarray:
    return np.asarray(params["embed"]["embedding"], np.float32)[:n_vocab]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _embeddings(tok: Tokenizer, table: np.ndarray, ids: np.ndarray, max_points: int) -> dict[str, Any]:
    unit = _unit_rows(table)
    neighbors: dict[str, list[list[float]]] = {}
    for i in dict.fromkeys(ids.tolist()):
        cos = unit @ unit[i]
        cos[i] = -np.inf
        k = min(N_NEIGHBORS, len(cos) - 1)
        best = np.argsort(-cos, kind="stable")[:k]
        neighbors[str(i)] = [[int(j), round(float(cos[j]), 6)] for j in best]
    # The points: the prompt's tokens and their neighbours, then the lowest ids up to max_points.
    needed = set(ids.tolist()) | {j for ns in neighbors.values() for j, _ in ns}
    fill = [j for j in range(len(table)) if j not in needed][: max(0, max_points - len(needed))]
    shown = np.array(sorted(needed | set(fill)), np.int64)
    x = np.asarray(table[shown], np.float64)
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # A deterministic sign: each axis's largest loading positive.
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1
    u, vt = u * signs, vt * signs[:, None]
    points = np.zeros((len(shown), 2))
    k = min(2, len(s))
    points[:, :k] = u[:, :k] * s[:k]
    var = s**2
    explained = np.zeros(2)
    if var.sum() > 0:
        explained[:k] = var[:k] / var.sum()
    return {"method": "pca", "explained": [round(float(e), 6) for e in explained],
            "ids": shown.tolist(), "labels": [label(tok, int(j)) for j in shown],
            "points": np.round(points, 6).tolist(), "neighbors": neighbors}


def _positions(cfg, params, t: int) -> dict[str, Any]:
    if cfg.position == "learned":
        vectors = np.asarray(params["positions"]["embedding"], np.float32)[:t]
    elif cfg.position == "sinusoidal":
        vectors = np.asarray(sinusoidal(jnp.arange(t)[None], cfg.d_model)[0])
    else:
        return {"kind": None, "similarity": None}
    unit = _unit_rows(vectors)
    return {"kind": cfg.position, "similarity": np.round(unit @ unit.T, 4).tolist()}


def _prediction(tok: Tokenizer, logits_V: np.ndarray, top: int) -> list[dict[str, Any]]:
    logits = np.asarray(logits_V, np.float64)
    m = logits.max()
    log_z = m + np.log(np.sum(np.exp(logits - m)))
    order = np.argsort(-logits, kind="stable")[: max(0, min(top, len(logits)))]
    return [{"id": int(i), "text": display_text(tok, int(i)), "logit": round(float(logits[i]), 4),
             "prob": round(float(np.exp(logits[i] - log_z)), 6)} for i in order]
