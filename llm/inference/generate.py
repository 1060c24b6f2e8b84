"""Autoregressive generation with the KV cache: prefill the prompts, then one token per step, all in one jit.

Prompts of different lengths are left-padded to a common length; padding gets segment id 0 (real tokens 1), so
no real token ever attends to it, and positions count from each prompt's first real token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm.config.sampling import SamplingParams
from llm.errors import PromptError
from llm.ops.sampling import sample_logits


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


def generate(model: nn.Module, params, prompts: Sequence[np.ndarray], sampling: SamplingParams, *,
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
    sampling.check()
    rows = [np.asarray(p, np.int32) for p in prompts]
    new: list[list[np.ndarray]] = [[] for _ in rows]
    remaining, chunk = sampling.max_new_tokens, 0
    keep = max(1, max_len // 2)
    while remaining > 0:
        tokens, segments, positions = left_pad(rows)
        steps = min(remaining, max_len - tokens.shape[1])
        out = _generate(model, params, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions),
                        jax.random.fold_in(jax.random.PRNGKey(sampling.seed), chunk), steps=steps,
                        temperature=float(sampling.temperature), **sampling.filters, eos_id=eos_id)
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
