"""The static options of an attention call, as one hashable value that travels from the model through the entry
point (`llm.ops.attention.attention`) to each implementation and the context-parallel code.

    spec = AttentionSpec(impl="dense", window=64, softcap=30.0)
    attention(q, k, v, spec, segment_ids=ids)          # arrays (segment ids, offset, ALiBi slopes) go beside it

Arrays stay out of it: segment ids, the query offset (traced when decoding) and ALiBi's slopes (split over
devices with the heads) are arguments of their own.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """impl: one of IMPLEMENTATIONS (llm/ops/attention/capabilities.py).
    causal: mask keys at later slots than the query.
    window: sliding-window size W (a query sees at most W keys, itself included), or None.
    softcap: if set, logits become softcap * tanh(logits / softcap) (Gemma-2 style).
    scale: the softmax scale; None: 1/sqrt(head_dim), which `scaled` fills in."""

    impl: str = "xla"
    causal: bool = True
    window: int | None = None
    softcap: float | None = None
    scale: float | None = None

    def scaled(self, head_dim: int) -> AttentionSpec:
        """This spec with its scale set (the default 1/sqrt(head_dim) when None), as implementations take it."""
        scale = head_dim ** -0.5 if self.scale is None else float(self.scale)
        return dataclasses.replace(self, scale=scale)

    def replace(self, **changes) -> AttentionSpec:
        return dataclasses.replace(self, **changes)

    def features(self, *, alibi: bool) -> dict[str, bool]:
        """The capability-table features (`capabilities.missing`) this spec uses, with ALiBi slopes or without."""
        return {"softcap": self.softcap is not None, "alibi": alibi, "window": self.window is not None}


DEFAULT_SPEC = AttentionSpec()  # causal, XLA's, no window or soft-cap
