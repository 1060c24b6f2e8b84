"""Array functions behind one interface: attention implementations and losses."""

from llm.ops.attention import IMPLEMENTATIONS, attention
from llm.ops.losses import cross_entropy

__all__ = ["IMPLEMENTATIONS", "attention", "cross_entropy"]
