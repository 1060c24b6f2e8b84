"""Streaming generation: ONE prompt, its new tokens yielded one at a time as they are produced (a chat's live
output), with two compiled programs per model (a bucketed prefill and a one-token decode step)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm.config.sampling import SamplingParams
from llm.errors import PromptError
from llm.ops.sampling import sample_logits


def prefill_bucket(n: int, max_len: int) -> int:
    """The padded prefill length of an n-token prompt: the next power of two >= n, at least 16, at most max_len."""
    bucket = 16
    while bucket < n:
        bucket *= 2
    return min(bucket, max_len)


def stream_generate(model: nn.Module, params, prompt_ids, sampling: SamplingParams, *,
                    eos_id: int | None = None) -> Iterator[int]:
    """New token ids for ONE prompt, yielded one at a time as they are produced (for a chat's live output).

    Stops after max_new_tokens, at eos_id (which is NOT yielded: the caller sees the answer only), or when the
    prompt and the new tokens fill the model's context (max_len tokens in all; unlike `generate` it does not
    slide on: a chat decides itself what to drop). PromptError, raised by this call (not at the first `next`),
    for an empty prompt or one with no room left in the context (ConfigError for bad sampling parameters).

    Two compiled programs per model, cached across calls: a prefill of the prompt padded to `prefill_bucket`
    tokens (so prompts of nearby lengths share one program) and a one-token decode step. The padding goes at
    the END with segment id 0 and the cache index is then set back to the prompt's length, so decoding
    overwrites the padding slots: slot = position for every real token, and the whole context stays usable
    (left padding would spend bucket - n cache slots). The padding is never seen by a real token (it sits at
    later slots, and has its own segment id). Sampling (`sample_logits`) runs between the steps, outside the
    decode program, with the same keys as `generate`'s first chunk: for the same seed, equal logits give equal
    tokens.
    """
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    max_len = model.cfg.max_len
    if prompt.size == 0:
        raise PromptError("the prompt needs at least one token (use the tokenizer's eos or a newline)")
    if prompt.size >= max_len:
        raise PromptError(f"a prompt of {prompt.size} tokens does not fit the model's context of {max_len} "
                          f"(at most {max_len - 1} tokens, leaving room to generate); shorten the prompt")
    sampling.check()
    return _stream(model, params, prompt, min(sampling.max_new_tokens, max_len - prompt.size),
                   float(sampling.temperature), sampling.filters["top_k"], sampling.filters["top_p"], sampling.seed,
                   eos_id)


def _stream(model, params, prompt, steps, temperature, top_k, top_p, seed, eos_id) -> Iterator[int]:
    n = prompt.size
    tokens = np.zeros((1, prefill_bucket(n, model.cfg.max_len)), np.int32)
    tokens[0, :n] = prompt
    cache, logits_1V = _prefill(model, params, jnp.asarray(tokens), jnp.asarray(n, jnp.int32))
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    for i in range(steps):
        rng, sub = jax.random.split(rng)
        token = int(_sample(logits_1V, sub, temperature=temperature, top_k=top_k, top_p=top_p)[0])
        if token == eos_id:
            return
        yield token
        if i + 1 < steps:  # the last token is never fed back: nothing would read its logits
            cache, logits_1V = _decode_step(model, params, cache, jnp.full((1, 1), token, jnp.int32),
                                            jnp.full((1, 1), n + i, jnp.int32))


def compiled_programs() -> tuple[int, int]:
    """How many prefill and decode-step programs streaming has compiled so far (in this process)."""
    return _prefill._cache_size(), _decode_step._cache_size()


_sample = jax.jit(sample_logits, static_argnames=("temperature", "top_k", "top_p"))


@functools.partial(jax.jit, static_argnames=("model",))
def _prefill(model, params, tokens_1T, length):
    """(cache holding the prompt, logits [1, V] after its last token) for a prompt right-padded to T tokens."""
    t = tokens_1T.shape[1]
    cache_shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens_1T[:, :1], decode=True))["cache"]
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    slots = jnp.arange(t, dtype=jnp.int32)[None]
    real = slots < length
    logits, state = model.apply({"params": params, "cache": cache}, tokens_1T,
                                positions_BT=jnp.where(real, slots, 0), segment_ids_BT=real.astype(jnp.int32),
                                decode=True, mutable=["cache"])
    cache = dict(state["cache"])
    cache["index"] = length  # the next token goes into the first padding slot (the model's own write index)
    return cache, jax.lax.dynamic_index_in_dim(logits[0], length - 1, keepdims=True)


prefill_prompt = _prefill  # the serving engine (llm/serving/engine.py) prefills each request with this program


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _decode_step(model, params, cache, token_11, position_11):
    """Feed one token at slot `position` (= the cache index): (updated cache, logits [1, V] of the next token)."""
    logits, state = model.apply({"params": params, "cache": cache}, token_11, positions_BT=position_11,
                                segment_ids_BT=jnp.ones((1, 1), jnp.int32), decode=True, mutable=["cache"])
    return state["cache"], logits[:, -1]
