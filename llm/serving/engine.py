"""The decode batch of a server: `slots` rows of KV cache, each holding one request at its own position.

`SlotEngine` owns the model's compiled programs for serving (llm/serving/__init__.py has the design):
- `prefill(slot, prompt)`: the prompt alone, right-padded to its bucket (`stream_generate`'s prefill program,
  llm/inference/streaming.py, so a request's cache is exactly the one `llm chat` would build), then copied into
  row `slot` of the batch cache (every cache variable of the row replaced: keys, values, segment ids, recurrent
  states, conv histories and the write index; nothing of the row's previous request survives).
- `step(tokens)`: one token for every slot. The model's one-token decode is vmapped over the slots, each with its
  own scalar cache index (so its own write slot, query offset and position): JAX turns the per-row
  dynamic_update_slice into a scatter. Rows not in use compute garbage nobody reads.
- `choose(logits, ...)`: the next token of each row by its own sampling settings and key, with log-probabilities.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm.inference.streaming import prefill_bucket, prefill_prompt

TOP_LOGPROBS = 5  # the most alternatives a response may ask for (OpenAI's completions limit)


class SlotEngine:
    """`slots` decoding rows of one model; not thread-safe (the scheduler's decode thread is its only user)."""

    def __init__(self, model: nn.Module, params, slots: int):
        self.model, self.params, self.slots = model, params, slots
        self.max_len = model.cfg.max_len
        one = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                                                decode=True))["cache"]
        self.cache = jax.tree_util.tree_map(lambda s: jnp.zeros((slots, *s.shape), s.dtype), one)

    def prefill(self, slot: int, prompt: np.ndarray) -> jax.Array:
        """Put `prompt` (at most max_len - 1 ids) into row `slot`; the logits [V] after its last token."""
        n = len(prompt)
        tokens = np.zeros((1, prefill_bucket(n, self.max_len)), np.int32)
        tokens[0, :n] = prompt
        cache1, logits_1V = prefill_prompt(self.model, self.params, jnp.asarray(tokens), jnp.asarray(n, jnp.int32))
        self.cache = _insert(self.cache, cache1, jnp.asarray(slot, jnp.int32))
        return logits_1V[0]

    def step(self, tokens_N: np.ndarray) -> jax.Array:
        """Feed one token per slot (at the slot's own next position); the logits [N, V] of the next tokens."""
        self.cache, logits_NV = _slot_step(self.model, self.params, self.cache, jnp.asarray(tokens_N, jnp.int32))
        return logits_NV

    @staticmethod
    def choose(logits_NV, keys_N2, temperature_N, top_k_N, top_p_N):
        """(tokens [N], their log-probabilities [N], the TOP_LOGPROBS best log-probabilities and ids [N, k], the
        keys for the next step [N, 2]); numpy arrays. A row's key is split as `stream_generate` splits its own,
        and temperature 0 is the argmax, so a greedy row is `llm sample`'s and a seeded one `llm chat`'s."""
        out = _choose(logits_NV, jnp.asarray(keys_N2), jnp.asarray(temperature_N, jnp.float32),
                      jnp.asarray(top_k_N, jnp.int32), jnp.asarray(top_p_N, jnp.float32))
        return tuple(np.asarray(x) for x in out)


def request_key(seed: int) -> np.ndarray:
    """The first key of a request with this seed: `stream_generate`'s (its chunk 0)."""
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), 0))


@functools.partial(jax.jit, donate_argnames=("slots",))
def _insert(slots, cache1, slot):
    return jax.tree_util.tree_map(lambda s, c: s.at[slot].set(c.astype(s.dtype)), slots, cache1)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _slot_step(model, params, cache, tokens_N):
    def one(row_cache, token):
        position_11 = jnp.reshape(row_cache["index"], (1, 1))
        logits, state = model.apply({"params": params, "cache": row_cache}, jnp.reshape(token, (1, 1)),
                                    positions_BT=position_11, segment_ids_BT=jnp.ones((1, 1), jnp.int32),
                                    decode=True, mutable=["cache"])
        return state["cache"], logits[0, -1]

    return jax.vmap(one)(cache, tokens_N)


@jax.jit
def _choose(logits_NV, keys_N2, temperature_N, top_k_N, top_p_N):
    def one(logits_V, key, temperature, top_k, top_p):
        key, sub = jax.random.split(key)
        greedy = jnp.argmax(logits_V).astype(jnp.int32)
        scaled = logits_V / jnp.where(temperature > 0, temperature, 1.0)
        # top-k and top-p as llm/ops/sampling.py's filter_logits, with traced settings (off: a no-op where).
        sorted_V = jnp.sort(scaled)[::-1]
        v = scaled.shape[0]
        kth = sorted_V[jnp.clip(top_k - 1, 0, v - 1)]
        scaled = jnp.where((top_k > 0) & (top_k < v) & (scaled < kth), -jnp.inf, scaled)
        sorted_V = jnp.sort(scaled)[::-1]
        probs = jax.nn.softmax(sorted_V)
        keep = (jnp.cumsum(probs) - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_V, jnp.inf))
        scaled = jnp.where((top_p < 1.0) & (scaled < cutoff), -jnp.inf, scaled)
        drawn = jax.random.categorical(sub, scaled).astype(jnp.int32)
        token = jnp.where(temperature > 0, drawn, greedy)
        logp_V = jax.nn.log_softmax(logits_V)
        top_lp, top_ids = jax.lax.top_k(logp_V, min(TOP_LOGPROBS, v))
        return token, logp_V[token], top_lp, top_ids, key

    return jax.vmap(one)(logits_NV, keys_N2, temperature_N, top_k_N, top_p_N)
