"""The explorer page: one self-contained HTML file (styles, script and data inline; nothing fetched to open it).

`render_html(data)` fills llm/explain/static/explain.html with explain.css, explain.js and the data of
llm/explain/SCHEMA.md as JSON in `<script type="application/json" id="data">`; the script draws everything from
it. Served by `llm explain --serve`, the page also gets a prompt box that posts to the server's API and redraws in
place (`api=`).

Elements the script keeps stable (tests and users can rely on them):
    #model .fact[data-key]          the model facts; #model-note the weights note (shown when "recomputed")
    #tokens .token[data-index][data-id]   the prompt's tokens; while a query token is hovered each carries
                                    data-weight (its attention from that query in the enlarged head) and
                                    data-masked ("1" where the mask forbids it), and #tokens has data-query
    #tokenizers .tokenizer[data-name] .piece[data-id]   the prompt in the byte / char / bpe tokenizers
    #embedding-plot .point[data-id] the embedding scatter (SVG); #neighbors[data-for] .neighbor[data-id][data-cosine]
    #positions-map[data-kind]       the position-similarity heat-map (hidden when there are no position vectors)
    .head-map[data-layer][data-head][data-entropy]   the small heat-maps; click one to enlarge it
    #enlarged[data-layer][data-head][data-query]     the enlarged head; .row-label / .col-label[data-index]
    #temperature, #top-k, #top-p    range inputs (top-k 0 and top-p 1 are "off"; temperature 0 is greedy)
    #prediction .bar[data-id][data-prob][data-rank][data-logit]   the kept next tokens, most likely first
    #prompt-form, #prompt-input, #explain-button, #error   (served pages only)
    body[data-rendered]             how many times the page has been drawn (1 after loading, +1 per new prompt)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from llm.files import write_text

STATIC = Path(__file__).resolve().parent / "static"


def _finite(value):
    """`value` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists (json.dumps' fallback)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(value, **kwargs) -> str:
    """Strict JSON (non-finite floats written as null; numpy values as numbers)."""
    try:
        return json.dumps(value, allow_nan=False, default=_plain, **kwargs)
    except ValueError:  # NaN or infinity somewhere
        return json.dumps(_finite(json.loads(json.dumps(value, default=_plain))), allow_nan=False, **kwargs)


def embed_json(value) -> str:
    """JSON safe to place inside a <script> element: no "</script>", "<!--" or "&" can appear in it."""
    text = to_json(value, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def render_html(data: dict | None, *, api: str | None = None, error: str | None = None,
                max_prompt_chars: int | None = None) -> str:
    """The page for `data` (SCHEMA.md). api: the URL the prompt box posts to (served pages; None: no box).
    error: a message shown in the page's error line (served pages, e.g. when the default prompt failed; data may
    then be None and only the prompt box is drawn)."""
    if data is None and api is None:
        raise ValueError("render_html needs data (a static page has nothing else to show)")
    config = {"api": api, "error": error, "maxPromptChars": max_prompt_chars}
    parts = {
        "style": _static("explain.css"),
        "script": _static("explain.js"),
        "config": embed_json(config),
        "data": embed_json(data),
    }
    for name in ("style", "script"):  # they are inlined as is: they must not close their element
        if re.search(r"</(script|style)", parts[name], re.IGNORECASE):
            raise ValueError(f"static/explain.{'css' if name == 'style' else 'js'} contains a closing tag")
    # One pass over the template only: placeholders inside the inserted texts are left alone.
    return re.sub(r"\{\{(style|script|config|data)\}\}", lambda m: parts[m[1]], _static("explain.html"))


def write_html(data: dict, path: str | Path) -> Path:
    """Write the page for `data` to `path` (atomically, so a failed write leaves no half page)."""
    path = Path(path)
    write_text(path, render_html(data))
    return path
