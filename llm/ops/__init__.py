"""Array functions behind one interface each: attention implementations (with their capability table), losses,
matmuls and sampling from logits. The names below import on first use (llm/lazy.py)."""

from llm.lazy import exports

_NAMES = {"IMPLEMENTATIONS": "llm.ops.attention.capabilities", "attention": "llm.ops.attention.dispatch",
          "cross_entropy": "llm.ops.losses", "filter_logits": "llm.ops.sampling", "sample_logits": "llm.ops.sampling"}
__all__ = sorted(_NAMES)
__getattr__ = exports(__name__, _NAMES)
