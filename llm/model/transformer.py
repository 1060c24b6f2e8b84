"""The decoder-only transformer language model: embeddings -> blocks -> final norm -> logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm.model.attention import SelfAttention
from llm.model.config import ModelConfig
from llm.model.dropout import Dropout
from llm.model.feedforward import FeedForward
from llm.model.linear import Projection
from llm.model.matmuls import matmul_2d
from llm.model.mixer_table import DEFAULT_MIXER, MIXER_TABLE
from llm.model.mixers import Mixer
from llm.model.norms import make_norm
from llm.model.positions import LearnedPositions, sinusoidal
from llm.parallel.context.layout import context_layout

# Names of jax.checkpoint policies for `ModelConfig.remat` ('none' disables remat, 'full' saves nothing).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
    """One transformer layer: attention and feed-forward sublayers, each inside a residual connection.

    pre-norm:  x = x + drop(attn(norm(x)));  x = x + drop(ffn(norm(x)))       (GPT-2, Llama)
    post-norm: x = norm(x + drop(attn(x)));  x = norm(x + drop(ffn(x)))       (the original Transformer)
    """

    cfg: ModelConfig
    deterministic: bool = True
    decode: bool = False
    mixer: str = DEFAULT_MIXER  # the sequence mixer (llm/model/mixer_table.py)

    @nn.compact
    def __call__(self, x_BTE, positions_BT, segment_ids_BT, decode_index):
        cfg = self.cfg

        def norm(name):
            return make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=jnp.dtype(cfg.dtype),
                             param_dtype=jnp.dtype(cfg.param_dtype), name=name)

        if MIXER_TABLE[self.mixer].softmax:
            attn = SelfAttention(cfg, decode=self.decode, deterministic=self.deterministic, name="attention")
        else:
            attn = Mixer(cfg, self.mixer, decode=self.decode, deterministic=self.deterministic, name="mixer")
        ffn = FeedForward(cfg, deterministic=self.deterministic, name="feed_forward")
        drop = Dropout(cfg.dropout, deterministic=self.deterministic, mask=cfg.dropout_mask)
        if cfg.norm_position == "pre":
            x_BTE = x_BTE + drop(attn(norm("attention_norm")(x_BTE), positions_BT, segment_ids_BT, decode_index))
            x_BTE = x_BTE + drop(ffn(norm("ffn_norm")(x_BTE)))
        else:
            x_BTE = norm("attention_norm")(x_BTE + drop(attn(x_BTE, positions_BT, segment_ids_BT, decode_index)))
            x_BTE = norm("ffn_norm")(x_BTE + drop(ffn(x_BTE)))
        x_BTE = nn.with_logical_constraint(x_BTE, ("batch", "length", "embed"))
        return x_BTE, None  # (carry, per-layer output) so the block can be nn.scan'ed


class Group(nn.Module):
    """One repetition of `model.mixer_pattern`: a block per mixer of the pattern (what scan_layers scans over)."""

    cfg: ModelConfig
    block: type = Block
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x_BTE, positions_BT, segment_ids_BT, decode_index):
        for i, mixer in enumerate(self.cfg.layer_mixers[: self.cfg.mixer_group]):
            x_BTE, _ = self.block(self.cfg, deterministic=self.deterministic, decode=self.decode, mixer=mixer,
                                  name=f"block_{i}")(x_BTE, positions_BT, segment_ids_BT, decode_index)
        return x_BTE, None


class Transformer(nn.Module):
    """A decoder-only language model. `__call__(tokens [B, T]) -> logits [B, T, vocab] (float32)`.

    positions: [B, T] position of each token (default 0..T-1, or cache index + 0..T-1 when decoding); packed
      documents restart positions per document.
    segment_ids: [B, T] document id per token; attention never crosses a document boundary.
    train: enables dropout (needs a 'dropout' rng).
    decode: use and update the KV cache ('cache' collection, made by `init(..., decode=True)`).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, *, positions_BT=None, segment_ids_BT=None, train: bool = False,
                 decode: bool = False):
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        b, t = tokens_BT.shape

        decode_index = jnp.zeros((), jnp.int32)
        if decode:
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            decode_index = index.value
            if self.is_mutable_collection("cache") and not self.is_initializing():
                index.value = decode_index + t
        layout = None if decode else context_layout()
        if layout is not None and layout.balanced and positions_BT is None and not self.is_initializing():
            raise ValueError("the mesh splits the sequence in the balanced layout: pass the tokens in its order with "
                             "their positions (llm.parallel.context.layout.to_context_layout)")
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(decode_index + jnp.arange(t, dtype=jnp.int32), (b, t))

        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, name="embed",
                         embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std),
                                                                     ("vocab", "embed")))
        x_BTE = embed(tokens_BT)
        if cfg.position == "learned":
            x_BTE = x_BTE + LearnedPositions(cfg.max_len, cfg.d_model, cfg.init_std, dtype, param_dtype,
                                             name="positions")(positions_BT)
        elif cfg.position == "sinusoidal":
            x_BTE = x_BTE + sinusoidal(positions_BT, cfg.d_model).astype(dtype)
        x_BTE = Dropout(cfg.dropout, deterministic=not train, mask=cfg.dropout_mask)(x_BTE)
        x_BTE = nn.with_logical_constraint(x_BTE, ("batch", "length", "embed"))

        block = Block
        if cfg.remat != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        args = (positions_BT, segment_ids_BT, decode_index)
        if cfg.scan_layers:
            # Scanned: one layer's parameters stacked n_layers deep; with a pattern, one group's, n_layers / P deep.
            unit, kw = (block, {"mixer": cfg.mixer}) if cfg.mixer_group == 1 else (Group, {"block": block})
            stack = nn.scan(unit, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 3,
                            length=cfg.n_layers // cfg.mixer_group, metadata_params={nn.PARTITION_NAME: "layers"})
            x_BTE, _ = stack(cfg, deterministic=not train, decode=decode, name="layers", **kw)(x_BTE, *args)
        else:
            for i, mixer in enumerate(cfg.layer_mixers):
                x_BTE, _ = block(cfg, deterministic=not train, decode=decode, mixer=mixer,
                                 name=f"layers_{i}")(x_BTE, *args)

        if cfg.norm_position == "pre":
            x_BTE = make_norm(cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=dtype,
                              param_dtype=param_dtype, name="final_norm")(x_BTE)
        if cfg.tie_embeddings:
            logits_BTV = matmul_2d(x_BTE, jnp.asarray(embed.embedding).T, 1, dtype=dtype,
                                   matmul_dtype=cfg.matmul_dtype)
        else:
            logits_BTV = Projection((cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False,
                                    kernel_init=nn.initializers.normal(cfg.init_std), dtype=dtype,
                                    param_dtype=param_dtype, matmul_dtype=cfg.matmul_dtype, name="unembed")(x_BTE)
        logits_BTV = nn.with_logical_constraint(logits_BTV, ("batch", "length", "vocab"))
        return logits_BTV.astype(jnp.float32)
