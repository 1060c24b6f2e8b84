"""Autoregressive generation with the KV cache: prefill the prompts, then one token per step, all in one jit.

Prompts of different lengths are left-padded to a common length; padding gets segment id 0 (real tokens 1), so
no real token ever attends to it, and positions count from each prompt's first real token.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class PromptError(ValueError):
    """A prompt the model cannot take (too long for the context, empty, ...)."""


def filter_logits(logits_BV, *, top_k: int | None = None, top_p: float | None = None):
    """Set excluded tokens' logits to -inf: keep the top_k largest, then the smallest set with mass >= top_p."""
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
        logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
    if top_p is not None and top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of strictly more likely tokens
        # The cut-off logit: the smallest one still needed to reach top_p (the top token always stays).
        keep = mass_before < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff, -jnp.inf, logits_BV)
    return logits_BV


def sample_logits(logits_BV, rng, *, temperature: float, top_k: int | None, top_p: float | None):
    """Next tokens [B]: argmax when temperature == 0, else a draw from the filtered, tempered distribution."""
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = filter_logits(logits_BV / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[np.ndarray], pad_id: int = 0):
    """(tokens, segment_ids, positions), each [B, T_max], for prompts of different lengths."""
    t = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), t), pad_id, np.int32)
    segments = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, t - len(p):] = p
        segments[i, t - len(p):] = 1
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, segments, positions


def generate(model: nn.Module, params, prompts: Sequence[np.ndarray], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eos_id: int | None = None) -> list[np.ndarray]:
    """New tokens for each prompt (token id arrays), cut after the first eos_id when there is one.

    Generation may run past the model's context: when the cache is full, the last half-context of each row is
    prefilled into a fresh cache and decoding continues (the model then sees a sliding window of its text, as
    nanoGPT's sampler does). Every prompt must itself fit in the context.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise PromptError("every prompt needs at least one token (use the tokenizer's eos or a newline)")
    max_len = model.cfg.max_len
    longest = max(len(p) for p in prompts)
    if longest >= max_len:
        raise PromptError(f"a prompt of {longest} tokens does not fit the model's context of {max_len} "
                          f"(at most {max_len - 1} tokens, leaving room to generate); shorten the prompt")
    if max_new_tokens < 1:
        raise PromptError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rows = [np.asarray(p, np.int32) for p in prompts]
    new: list[list[np.ndarray]] = [[] for _ in rows]
    remaining, chunk = max_new_tokens, 0
    keep = max(1, max_len // 2)
    while remaining > 0:
        tokens, segments, positions = left_pad(rows)
        steps = min(remaining, max_len - tokens.shape[1])
        out = _generate(model, params, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions),
                        jax.random.fold_in(jax.random.PRNGKey(seed), chunk), steps=steps,
                        temperature=float(temperature), top_k=top_k, top_p=top_p, eos_id=eos_id)
        out = np.asarray(out)
        for i, row in enumerate(out):
            new[i].append(row)
            rows[i] = np.concatenate([rows[i], row])[-keep:]
        remaining -= steps
        chunk += 1
        if eos_id is not None and all((np.concatenate(n) == eos_id).any() for n in new):
            break
    results = []
    for parts in new:
        row = np.concatenate(parts)
        if eos_id is not None and (hits := np.flatnonzero(row == eos_id)).size:
            row = row[: hits[0] + 1]
        results.append(row)
    return results


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k", "top_p", "eos_id"))
def _generate(model, params, tokens_BT, segments_BT, positions_BT, rng, *, steps, temperature, top_k, top_p,
              eos_id):
    b = tokens_BT.shape[0]
    cache_shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens_BT[:, :1], decode=True))["cache"]
    cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)
    logits, state = model.apply({"params": params, "cache": cache}, tokens_BT, positions_BT=positions_BT,
                                segment_ids_BT=segments_BT, decode=True, mutable=["cache"])
    ones = jnp.ones((b, 1), jnp.int32)

    def step(i, carry):
        cache, last_BV, pos_B, rng, out_BS, done_B = carry
        rng, sub = jax.random.split(rng)
        tok_B = sample_logits(last_BV, sub, temperature=temperature, top_k=top_k, top_p=top_p)
        if eos_id is not None:
            tok_B = jnp.where(done_B, eos_id, tok_B)
            done_B = done_B | (tok_B == eos_id)
        out_BS = out_BS.at[:, i].set(tok_B)
        logits, state = model.apply({"params": params, "cache": cache}, tok_B[:, None], positions_BT=pos_B[:, None],
                                    segment_ids_BT=ones, decode=True, mutable=["cache"])
        return state["cache"], logits[:, -1], pos_B + 1, rng, out_BS, done_B

    carry = (state["cache"], logits[:, -1], positions_BT[:, -1] + 1, rng, jnp.zeros((b, steps), jnp.int32),
             jnp.zeros((b,), bool))
    return jax.lax.fori_loop(0, steps, step, carry)[4]


# ---------------------------------------------------------------------------------------------------------
# Streaming: one prompt, one token at a time


def prefill_bucket(n: int, max_len: int) -> int:
    """The padded prefill length of an n-token prompt: the next power of two >= n, at least 16, at most max_len."""
    bucket = 16
    while bucket < n:
        bucket *= 2
    return min(bucket, max_len)


def stream_generate(model: nn.Module, params, prompt_ids, *, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                    eos_id: int | None = None) -> Iterator[int]:
    """New token ids for ONE prompt, yielded one at a time as they are produced (for a chat's live output).

    Stops after max_new_tokens, at eos_id (which is NOT yielded: the caller sees the answer only), or when the
    prompt and the new tokens fill the model's context (max_len tokens in all; unlike `generate` it does not
    slide on: a chat decides itself what to drop). PromptError, raised by this call (not at the first `next`),
    for an empty prompt, one with no room left in the context, or max_new_tokens < 1.

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
    if max_new_tokens < 1:
        raise PromptError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return _stream(model, params, prompt, min(max_new_tokens, max_len - prompt.size), float(temperature),
                   top_k, top_p, seed, eos_id)


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


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _decode_step(model, params, cache, token_11, position_11):
    """Feed one token at slot `position` (= the cache index): (updated cache, logits [1, V] of the next token)."""
    logits, state = model.apply({"params": params, "cache": cache}, token_11, positions_BT=position_11,
                                segment_ids_BT=jnp.ones((1, 1), jnp.int32), decode=True, mutable=["cache"])
    return state["cache"], logits[:, -1]
