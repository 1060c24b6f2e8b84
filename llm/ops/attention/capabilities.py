"""What each attention implementation supports: one table, read by config validation, KV-cache decoding and
the explorer.

    caps = CAPABILITIES["xla"]
    caps.softcap        # False: XLA's fused attention has no logit soft-cap
    missing("xla", softcap=True, alibi=True)   # ["softcap"]: what the implementation lacks of what is used

Columns:
  softcap   a logit soft-cap (`softcap`, Gemma-2 style)
  alibi     an ALiBi bias (`alibi_slopes`)
  window    a sliding window (`window`)
  segments  packed documents (`segment_ids`, `kv_segment_ids`)
  gqa       fewer key/value heads than query heads, without repeating them
  q_offset  a query offset (`q_offset`), including a traced one: attending over a KV cache
  decode    the implementation to use against a KV cache when the model trains with it (else `decode_impl`
            picks the first of DECODE_FALLBACKS that has every feature the model uses)
  weights   the softmax probabilities exist as arrays inside it (the explorer shows them as "captured" rather
            than "recomputed")
  backends  the JAX platforms it runs on
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Capabilities:
    softcap: bool
    alibi: bool
    window: bool
    segments: bool
    gqa: bool
    q_offset: bool
    decode: bool
    weights: bool
    backends: tuple[str, ...]


ALL = ("cpu", "gpu", "tpu")
CAPABILITIES: dict[str, Capabilities] = {
    "reference": Capabilities(softcap=True, alibi=True, window=True, segments=True, gqa=True, q_offset=True,
                              decode=True, weights=True, backends=ALL),
    # Its query blocks skip keys only with a static offset; against a KV cache it would span every slot.
    "dense": Capabilities(softcap=True, alibi=True, window=True, segments=True, gqa=True, q_offset=True,
                          decode=False, weights=True, backends=ALL),
    "xla": Capabilities(softcap=False, alibi=True, window=True, segments=True, gqa=True, q_offset=True,
                        decode=True, weights=True, backends=ALL),
    "cudnn": Capabilities(softcap=False, alibi=True, window=True, segments=True, gqa=True, q_offset=False,
                          decode=False, weights=False, backends=("gpu",)),
    "chunked": Capabilities(softcap=True, alibi=True, window=True, segments=True, gqa=True, q_offset=True,
                            decode=True, weights=False, backends=ALL),
    # The Pallas kernel runs on CPU too, in interpret mode (slow; for tests). A traced offset works (its key
    # blocks stop at the offset; one query is padded to a tile), but decoding stays with DECODE_FALLBACKS: each
    # step runs B x H programs that walk the cache serially (no split over keys), unmeasured against xla's
    # whole-GPU read at small batch, and the cached path calls it outside shard_map on a mesh.
    "flash": Capabilities(softcap=True, alibi=True, window=True, segments=True, gqa=True, q_offset=True,
                          decode=False, weights=False, backends=ALL),
}
IMPLEMENTATIONS = tuple(CAPABILITIES)
DECODE_FALLBACKS = ("xla", "reference")  # also what runs a model whose implementation this backend lacks

# How a config names each feature, for messages.
FEATURES = {"softcap": "logit soft-cap (model.attn_softcap)", "alibi": "ALiBi bias (model.position='alibi')",
            "window": "sliding window (model.window)", "q_offset": "query offset (KV-cache decoding)"}


def missing(impl: str, **used: bool) -> list[str]:
    """The features in `used` (softcap=True, alibi=False, ...) that `impl` lacks, by name."""
    caps = CAPABILITIES[impl]
    return [name for name, on in used.items() if on and not getattr(caps, name)]


def decode_impl(impl: str, **used: bool) -> str:
    """The implementation that attends against a KV cache for a model that trains with `impl` and uses the
    features `used`: `impl` itself when it is made for decoding, else the first fallback with every feature."""
    if CAPABILITIES[impl].decode and not missing(impl, **used):
        return impl
    return next(f for f in DECODE_FALLBACKS if not missing(f, q_offset=True, **used))


def runnable_impl(impl: str, backend: str, **used: bool) -> str:
    """`impl` when it runs on `backend` (a JAX platform name), else the first fallback that does and has every
    feature in `used`."""
    if backend in CAPABILITIES[impl].backends:
        return impl
    return next(f for f in DECODE_FALLBACKS if backend in CAPABILITIES[f].backends and not missing(f, **used))
