"""The model explorer: what a trained run does with one prompt (tokens, embeddings, positions, attention, the
next-token prediction), as JSON for the page (`explain_data`, laid out in SCHEMA.md), as one self-contained HTML
page or a local web app (page.py, server.py) and as PNG figures (`write_pngs`).

The names below are imported on first use: the page and the server start without importing JAX.
"""

import importlib

_LAZY = {"explain_data": "llm.explain.data", "explain_json": "llm.explain.data", "write_pngs": "llm.explain.figures"}

__all__ = ["explain_data", "explain_json", "write_pngs"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm.explain' has no attribute {name!r}")
