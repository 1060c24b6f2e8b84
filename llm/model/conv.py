"""A short causal depthwise convolution over the sequence, for the attention's queries, keys and values.

    y_t = sum_{j < K} w_j * x_{t-j}      (per channel; terms from another document, or before the start, are 0)

With K >= 2 a key can carry the previous token's identity, so one attention layer does what otherwise needs a
previous-token head in an earlier layer (the induction / associative-recall circuit): the short convolutions of
H3, Based, Mamba and the flash-linear-attention layers (Zoology's MQAR configs likewise put a kernel-3
convolution layer before attention, in one hybrid mixer). `model.short_conv` sets K (0: none).

Decoding keeps the inputs (and their segment ids) in the 'cache' collection, so a token generated one at a time
gets exactly the convolution it gets in a full forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NO_SEGMENT = -1  # the segment id of the empty slots before the first token: never a real document's id


def causal_conv(x_BTF, w_KF, segment_ids_BT=None, prev_x_BPF=None, prev_segment_ids_BP=None):
    """y [B, T, *F] = the causal depthwise convolution of x [B, T, *F] with w [K, *F] (w[0]: the current token).

    segment_ids [B, T]: a term x_{t-j} counts only if its segment id equals token t's. prev_x [B, K-1, *F] and
    prev_segment_ids [B, K-1]: the inputs just before x (decoding); absent, the sequence starts at x.
    """
    k = w_KF.shape[0]
    b, t = x_BTF.shape[:2]
    if prev_x_BPF is None:
        prev_x_BPF = jnp.zeros((b, k - 1, *x_BTF.shape[2:]), x_BTF.dtype)
        prev_segment_ids_BP = jnp.full((b, k - 1), NO_SEGMENT, jnp.int32)
    if segment_ids_BT is None:
        segment_ids_BT = jnp.zeros((b, t), jnp.int32)
    xs = jnp.concatenate([prev_x_BPF.astype(x_BTF.dtype), x_BTF], axis=1)  # [B, K-1+T, *F]
    segs = jnp.concatenate([prev_segment_ids_BP.astype(jnp.int32), segment_ids_BT.astype(jnp.int32)], axis=1)
    feature_axes = (1,) * (x_BTF.ndim - 2)
    y = jnp.zeros_like(x_BTF)
    for j in range(k):  # K is small (2-4): K shifted multiply-adds, no convolution op needed
        start = k - 1 - j
        same = (segs[:, start:start + t] == segment_ids_BT).astype(x_BTF.dtype).reshape(b, t, *feature_axes)
        y = y + xs[:, start:start + t] * same * w_KF[j].astype(x_BTF.dtype)
    return y


class ShortConv(nn.Module):
    """`causal_conv` with a learned kernel [K, *features] (logical names (None, *names)).

    The kernel starts uniform in +-1/sqrt(K) (PyTorch's Conv1d default for a depthwise filter, as the
    flash-linear-attention short convolutions use).

    decode=True: like the KV cache, the 'cache' collection keeps this module's inputs per cache slot (`inputs`
    [B, K-1 + max_len, *F], `segment_ids`; slot s at row K-1+s, the K-1 rows before slot 0 stay empty), and a call
    writes its T inputs at slots [index, index + T) and reads slots index-K+1 .. index-1 as the preceding inputs.
    So moving the cache index back (chat's bucketed prefill does: it pads the prompt at the end, then sets the
    index to the prompt's length) moves the convolution's history back with it.

    rolling=True (the sub-quadratic mixers, whose decoding memory must not grow with the context): the cache keeps
    only the last K-1 real inputs (`last_inputs`, `last_segment_ids`); padding (segment id 0, which the mixers'
    callers pass for it) never enters it, so the index need not move back.
    """

    kernel_size: int
    names: Sequence[str | None]
    max_len: int
    decode: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    rolling: bool = False

    @nn.compact
    def __call__(self, x_BTF, segment_ids_BT, decode_index):
        k = self.kernel_size
        bound = k ** -0.5
        init = lambda key, shape, dtype: nn.initializers.uniform(2 * bound)(key, shape, dtype) - bound
        w = self.param("kernel", nn.with_logical_partitioning(init, (None, *self.names)), (k, *x_BTF.shape[2:]),
                       self.param_dtype)
        if not self.decode:
            return causal_conv(x_BTF, w, segment_ids_BT).astype(self.dtype)
        b, t = x_BTF.shape[:2]
        features = x_BTF.shape[2:]
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)  # as the KV cache's default
        if self.rolling:
            return self._rolling(x_BTF, w, segment_ids_BT)
        initialized = self.has_variable("cache", "inputs")
        inputs = self.variable("cache", "inputs", jnp.zeros, (b, k - 1 + self.max_len, *features), x_BTF.dtype)
        segments = self.variable("cache", "segment_ids", jnp.zeros, (b, k - 1 + self.max_len), jnp.int32)
        zeros = (0,) * len(features)
        prev_x = jax.lax.dynamic_slice(inputs.value, (0, decode_index, *zeros), (b, k - 1, *features))
        prev_seg = jax.lax.dynamic_slice(segments.value, (0, decode_index), (b, k - 1))
        y = causal_conv(x_BTF, w, segment_ids_BT, prev_x, prev_seg)
        if initialized:
            at = decode_index + k - 1
            inputs.value = jax.lax.dynamic_update_slice(inputs.value, x_BTF.astype(inputs.value.dtype),
                                                        (0, at, *zeros))
            segments.value = jax.lax.dynamic_update_slice(segments.value, segment_ids_BT.astype(jnp.int32), (0, at))
        return y.astype(self.dtype)

    def _rolling(self, x_BTF, w, segment_ids_BT):
        k, b = self.kernel_size, x_BTF.shape[0]
        initialized = self.has_variable("cache", "last_inputs")
        last = self.variable("cache", "last_inputs", jnp.zeros, (b, k - 1, *x_BTF.shape[2:]), x_BTF.dtype)
        last_seg = self.variable("cache", "last_segment_ids", jnp.full, (b, k - 1), NO_SEGMENT, jnp.int32)
        y = causal_conv(x_BTF, w, segment_ids_BT, last.value, last_seg.value)
        if initialized:
            xs = jnp.concatenate([last.value, x_BTF.astype(last.value.dtype)], axis=1)
            segs = jnp.concatenate([last_seg.value, segment_ids_BT.astype(jnp.int32)], axis=1)
            real = jnp.concatenate([jnp.ones((b, k - 1), bool), segment_ids_BT != 0], axis=1)
            # The last K-1 real entries, in order: real ones sorted first (stably), then the K-1 before the count.
            order = jnp.argsort(~real, axis=1, stable=True)
            end = jnp.sum(real, axis=1)
            take = jax.vmap(lambda o, e: jax.lax.dynamic_slice(o, (e - (k - 1),), (k - 1,)))(order, end)
            last.value = jnp.take_along_axis(xs, take.reshape(b, k - 1, *(1,) * (xs.ndim - 2)), axis=1)
            last_seg.value = jnp.take_along_axis(segs, take, axis=1)
        return y.astype(self.dtype)
