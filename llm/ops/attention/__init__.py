"""Scaled dot-product attention as plain array functions, behind one entry point.

Layout: q is [B, Tq, H, D]; k and v are [B, Tk, K, D] where K (the number of key/value heads) divides H.
K == H is multi-head attention, 1 < K < H grouped-query, K == 1 multi-query. Query head h reads key/value
head h // (H // K); no implementation here materialises the repeated K/V.

Masking is defined once, in `masking.allowed`, in terms of *slot* indices (query row i at slot `q_offset + i`),
so the same rule covers training, prefill and one-token decoding. Rows with no visible key produce zeros.
The static options of a call (implementation, causal, window, soft-cap, scale) are one `AttentionSpec` (spec.py);
segment ids, the query offset and ALiBi slopes are arrays beside it. What each implementation supports
(soft-cap, ALiBi, windows, segments, query offsets, backends) is the table in `capabilities.py`; asking one for
what it lacks is a ValueError naming the feature.

Implementations:
  reference  explicit einsum + masked softmax in float32: the readable definition (its probabilities, [B, H, Tq,
             Tk], are `attention_weights(q, k, ...)`);
  dense      the same in query blocks that skip the keys a causal or windowed block cannot see, with a
             hand-written backward pass (`dense.py`): the fastest on CPU;
  xla        `jax.nn.dot_product_attention` (XLA's fused attention);
  cudnn      the same function asked for cuDNN's kernel (GPU only);
  chunked    online softmax over key blocks with `lax.scan` and a recomputing backward pass: O(Tq * block)
             memory in the forward and backward pass;
  flash      the Pallas kernel in `llm.kernels.flash_attention`.
One module each: reference.py, dense.py, xla.py (xla and cudnn), chunked.py.
"""

from llm.lazy import exports

_NAMES = {"attention": "llm.ops.attention.dispatch", "attention_weights": "llm.ops.attention.reference",
          "AttentionSpec": "llm.ops.attention.spec",
          **dict.fromkeys(("allowed", "make_mask"), "llm.ops.attention.masking"),
          **dict.fromkeys(("CAPABILITIES", "IMPLEMENTATIONS", "FEATURES", "decode_impl", "missing", "runnable_impl"),
                          "llm.ops.attention.capabilities")}
__all__ = sorted(_NAMES)
__getattr__ = exports(__name__, _NAMES)
