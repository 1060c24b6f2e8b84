"""Sub-quadratic sequence mixers: what a layer has instead of softmax attention (`model.mixer`).

    linear          linear attention, q and k through `model.feature_map` (identity, elu: elu+1, taylor: Based's
                    second-order Taylor map 1 + x + x x^T / 2 on `model.feature_dim` dimensions)
    based           Based: Taylor linear attention plus a sliding-window softmax attention (`model.window`)
    retnet          RetNet's retention: a fixed decay per head, 1 - 2^(-5-h)
    gla             gated linear attention: a data-dependent decay per key dimension (a low-rank gate)
    mamba2          Mamba-2's SSD: a data-dependent scalar decay per head, -exp(A) softplus(dt)
    deltanet        the delta rule, keys L2-normalised, a learned write strength b = sigmoid(.)
    gated_deltanet  the delta rule with Mamba-2's decay

Each keeps a fixed-size state [B, H, K, V] (llm/ops/mixers) instead of a KV cache: training runs the chunked
form (`model.mixer_chunk` tokens a chunk), decoding continues the state (a 'cache' variable). Packed documents
restart the state. Outputs are RMS-normalised per head before the output projection, as GLA, RetNet and the
delta-rule layers do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm.model.attention import SelfAttention
from llm.model.config import ModelConfig
from llm.model.conv import ShortConv
from llm.model.linear import model_projection
from llm.model.mixer_table import MIXER_TABLE
from llm.model.norms import RMSNorm
from llm.ops.mixers import (
    delta_chunked,
    delta_mixing,
    delta_recurrent,
    gla_chunked,
    gla_mixing,
    gla_pallas,
    gla_recurrent,
)

GLA_GATE_RANK = 16  # the GLA paper's low-rank decay gate
GLA_GATE_TEMPERATURE = 16.0  # g = logsigmoid(.) / 16: decays near 1 at the start of training (GLA, sec. 4.4)


def taylor_features(x):
    """Based's feature map: [1, x, vec(x x^T) / sqrt(2)] with x scaled by d^-1/4, so phi(q).phi(k) = 1 + q.k/sqrt(d)
    + (q.k)^2 / (2 d), the second-order Taylor expansion of exp(q.k / sqrt(d))."""
    d = x.shape[-1]
    x = x * d ** -0.25
    outer = (x[..., :, None] * x[..., None, :]).reshape(*x.shape[:-1], d * d) / 2 ** 0.5
    return jnp.concatenate([jnp.ones((*x.shape[:-1], 1), x.dtype), x, outer], axis=-1)


def feature_map(cfg: ModelConfig, mixer: str) -> str:
    """The map of the mixer's queries and keys (MIXER_TABLE's `feature_map`, else `cfg.feature_map`)."""
    fixed = MIXER_TABLE[mixer].feature_map
    return cfg.feature_map if fixed is None else fixed


def uses_taylor(cfg: ModelConfig, mixer: str) -> bool:
    """Whether the mixer's queries and keys go through Based's Taylor map (on `cfg.feature_dim` dimensions)."""
    return feature_map(cfg, mixer) == "taylor"


def key_dim(cfg: ModelConfig, mixer: str) -> int:
    """A mixer's projected query / key size per head, before its feature map."""
    return cfg.feature_dim if uses_taylor(cfg, mixer) else cfg.dim_per_head


def feature_dims(cfg: ModelConfig, mixer: str) -> int:
    """The key (and query) size per head the state is built on: the feature map's output size."""
    d = cfg.feature_dim
    return 1 + d + d * d if uses_taylor(cfg, mixer) else cfg.dim_per_head


def state_size(cfg: ModelConfig, mixer: str) -> int:
    """Numbers a layer of this mixer keeps per sequence when decoding (its recurrent state; Based adds its window's
    keys and values)."""
    state = cfg.n_heads * feature_dims(cfg, mixer) * cfg.dim_per_head
    return state + (attention_state_size(cfg) if MIXER_TABLE[mixer].window else 0)


def layer_state_size(cfg: ModelConfig, mixer: str) -> int:
    """Numbers one layer needs to keep per sequence to decode at the context `cfg.max_len`: a mixer's state, or
    softmax attention's keys and values over the context (the window, with one: Zoology's accounting)."""
    return attention_state_size(cfg) if MIXER_TABLE[mixer].softmax else state_size(cfg, mixer)


def attention_state_size(cfg: ModelConfig) -> int:
    """Softmax attention's keys and values per sequence over the context (the window, with one)."""
    return 2 * cfg.kv_heads * cfg.dim_per_head * min(cfg.max_len, cfg.window or cfg.max_len)


def decode_state_size(cfg: ModelConfig) -> int:
    """Numbers the whole model keeps per sequence to decode at its context (every layer's `layer_state_size`)."""
    return sum(layer_state_size(cfg, m) for m in cfg.layer_mixers)


class Mixer(nn.Module):
    """A sub-quadratic mixer layer: projections, optional short convolutions, the decay or write strength, the
    chunked core, a per-head norm, the output projection. Called as `SelfAttention` is."""

    cfg: ModelConfig
    mixer: str
    decode: bool = False
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x_BTE, positions_BT, segment_ids_BT, decode_index):
        cfg, mixer, row = self.cfg, self.mixer, MIXER_TABLE[self.mixer]
        q_BTHK, k_BTHK, v_BTHV = self._qkv(x_BTE, key_dim(cfg, mixer), segment_ids_BT, decode_index)
        q_BTHK, k_BTHK = self._features(q_BTHK), self._features(k_BTHK)
        if row.core == "delta":
            beta_BTH = jax.nn.sigmoid(self._heads(x_BTE, "beta"))
            g_BTH = self._ssd_decay(x_BTE) if row.decay == "ssd" else jnp.zeros_like(beta_BTH)
            out_BTHV = self._core(delta_chunked, delta_recurrent, (q_BTHK, k_BTHK, v_BTHV, beta_BTH, g_BTH),
                                  segment_ids_BT)
            self._sow_mixing(delta_mixing, (q_BTHK, k_BTHK, beta_BTH, g_BTH), segment_ids_BT)
        else:
            q_BTHK = q_BTHK * q_BTHK.shape[-1] ** -0.5
            g = self._decay(x_BTE, k_BTHK.shape)
            out_BTHV = self._core(gla_chunked, gla_recurrent, (q_BTHK, k_BTHK, v_BTHV, g), segment_ids_BT)
            self._sow_mixing(gla_mixing, (q_BTHK, k_BTHK, g), segment_ids_BT)
        out_BTHV = RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), axis_name="kv",
                           name="head_norm")(out_BTHV.astype(jnp.dtype(cfg.dtype)))
        out_BTHV = nn.with_logical_constraint(out_BTHV, ("batch", "length", "heads", "kv"))
        y_BTE = self._proj(out_BTHV, (cfg.d_model,), ("heads", "kv"), ("embed",), "out", out=True)
        if row.window:  # the model's window (validated set) and position scheme
            y_BTE = y_BTE + SelfAttention(cfg, decode=self.decode, deterministic=self.deterministic,
                                          name="window_attention")(x_BTE, positions_BT, segment_ids_BT, decode_index)
        return y_BTE

    # ---- pieces ----------------------------------------------------------------------------------------

    def _proj(self, x, shape, in_names, out_names, name, out=False):
        cfg = self.cfg
        return model_projection(cfg, shape, in_names, out_names, name=name, residual=out,
                                use_bias=cfg.use_bias and out, deterministic=self.deterministic)(x)

    def _heads(self, x_BTE, name):
        """A per-head scalar per token [B, T, H] (write strength, time step)."""
        return self._proj(x_BTE, (self.cfg.n_heads,), ("embed",), ("heads",), name).astype(jnp.float32)

    def _qkv(self, x_BTE, dk, segment_ids_BT, decode_index):
        cfg = self.cfg
        h, dv = cfg.n_heads, cfg.dim_per_head
        q = self._proj(x_BTE, (h, dk), ("embed",), ("heads", None), "query")
        k = self._proj(x_BTE, (h, dk), ("embed",), ("heads", None), "key")
        v = self._proj(x_BTE, (h, dv), ("embed",), ("heads", "kv"), "value")
        if cfg.short_conv:
            def conv(x, names, name):
                return ShortConv(cfg.short_conv, names, cfg.max_len, decode=self.decode, dtype=jnp.dtype(cfg.dtype),
                                 param_dtype=jnp.dtype(cfg.param_dtype), rolling=True, name=name)(
                    x, segment_ids_BT, decode_index)

            q = conv(q, ("heads", None), "query_conv")
            k = conv(k, ("heads", None), "key_conv")
            v = conv(v, ("heads", "kv"), "value_conv")
        return q, k, v

    def _features(self, x):
        kind = feature_map(self.cfg, self.mixer)
        if kind == "taylor":
            return taylor_features(x.astype(jnp.float32))
        if kind == "elu":
            return jax.nn.elu(x) + 1.0
        if kind == "silu_l2":
            return _unit(jax.nn.silu(x))
        return x

    def _decay(self, x_BTE, k_shape):
        """The log decay g <= 0: [B, T, H, K] (GLA), [B, T, H, 1] (the others)."""
        b, t, h, _ = k_shape
        decay = MIXER_TABLE[self.mixer].decay
        if decay == "gate":
            low = self._proj(x_BTE, (GLA_GATE_RANK,), ("embed",), (None,), "gate_down")
            logits = self._proj(low, (h, k_shape[-1]), (None,), ("heads", None), "gate_up")
            bias = self.param("gate_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", None)),
                              (h, k_shape[-1]), jnp.float32)
            return jax.nn.log_sigmoid(logits.astype(jnp.float32) + bias) / GLA_GATE_TEMPERATURE
        if decay == "fixed":
            gamma = 1.0 - 2.0 ** (-5.0 - jnp.arange(h, dtype=jnp.float32))
            return jnp.broadcast_to(jnp.log(gamma)[None, None, :, None], (b, t, h, 1))
        if decay == "ssd":
            return self._ssd_decay(x_BTE)[..., None]
        return jnp.zeros((b, t, h, 1), jnp.float32)

    def _ssd_decay(self, x_BTE):
        """Mamba-2's log decay per head and token: -exp(A_log) * softplus(dt + dt_bias), A in [1, 16] at init."""
        h = self.cfg.n_heads
        a_log = self.param("a_log", nn.with_logical_partitioning(
            lambda key, shape, dtype: jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0)), ("heads",)),
            (h,), jnp.float32)
        dt_bias = self.param("dt_bias", nn.with_logical_partitioning(
            lambda key, shape, dtype: jnp.log(jnp.expm1(jnp.exp(jax.random.uniform(
                key, shape, dtype, jnp.log(1e-3), jnp.log(1e-1))))), ("heads",)), (h,), jnp.float32)
        return -jnp.exp(a_log) * jax.nn.softplus(self._heads(x_BTE, "dt") + dt_bias)

    def _sow_mixing(self, mixing, args, segment_ids_BT):
        """With 'intermediates' mutable (the explorer): the token-mixing matrix M [B, H, T, T], out = M v."""
        if not self.decode and self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "mixing_weights", mixing(*args, segment_ids=segment_ids_BT))

    def _core(self, chunked, recurrent, args, segment_ids_BT):
        """The chunked form in training; in decoding, the state in the 'cache' collection carried on, one token by
        the recurrence, a prompt by chunks (padding, segment id 0, changes nothing: zero keys, values, write
        strength and decay)."""
        chunk = self.cfg.mixer_chunk
        if not self.decode:
            if self.cfg.mixer_impl == "pallas" and segment_ids_BT is None and MIXER_TABLE[self.mixer].pallas:
                return gla_pallas(*args, chunk=chunk)[0]
            return chunked(*args, chunk=chunk, segment_ids=segment_ids_BT)[0]
        q, k, v, *rest = args
        b, _, h, dk = k.shape
        initialized = self.has_variable("cache", "state")
        state = self.variable("cache", "state", jnp.zeros, (b, h, dk, v.shape[-1]), jnp.float32)
        if segment_ids_BT is not None:
            real = (segment_ids_BT != 0)[:, :, None]
            k, v = k * real[..., None], v * real[..., None]
            rest = [r * (real if r.ndim == 3 else real[..., None]) for r in rest]
        if q.shape[1] == 1:
            out, new_state = recurrent(q, k, v, *rest, state=state.value)
        else:
            out, new_state = chunked(q, k, v, *rest, chunk=chunk, state=state.value)
        if initialized:
            state.value = new_state
        return out


def _unit(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)
