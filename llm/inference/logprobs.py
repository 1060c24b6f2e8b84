"""Log-probabilities of given tokens under a model: what a harness's loglikelihood request and a prompt's `echo`
need. Rows are right-padded to a few bucketed lengths and a fixed batch, so a stream of requests of every length
compiles a handful of programs (a causal model's output at a position ignores the padding after it)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm.errors import PromptError
from llm.inference.streaming import prefill_bucket


@functools.partial(jax.jit, static_argnames=("model", "top"))
def _scored(model, params, inputs_BT, targets_BT, top: int = 0):
    logits_BTV = model.apply({"params": params}, inputs_BT).astype(jnp.float32)
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    chosen_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
    best = jax.lax.top_k(logp_BTV, top) if top else ()
    return chosen_BT, jnp.argmax(logits_BTV, axis=-1) == targets_BT, best


def token_logprobs(model, params, rows: Sequence[Sequence[int]], *, batch_size: int = 8, top: int = 0) -> list[tuple]:
    """For each row of token ids (2 to max_len + 1 of them): (log p(row[i] | row[:i]) for i >= 1, whether each of
    those tokens is the model's argmax there), float32 and bool arrays of len(row) - 1, in the rows' order; with
    top > 0 also the `top` most likely tokens' log-probabilities and ids at each of those positions ([n, top])."""
    max_len = model.cfg.max_len
    for row in rows:
        if not 2 <= len(row) <= max_len + 1:
            raise PromptError(f"a scored row needs 2 to {max_len + 1} tokens (the model's context + 1), got "
                              f"{len(row)}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # similar lengths share a batch and a bucket
    out: list[tuple | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        width = prefill_bucket(len(rows[ids[0]]) - 1, max_len)  # the chat prefill's lengths
        tokens = np.zeros((batch_size, width + 1), np.int32)
        for j, i in enumerate(ids):
            tokens[j, :len(rows[i])] = rows[i]
        logp, greedy, best = _scored(model, params, jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]), top)
        logp, greedy, best = np.asarray(logp), np.asarray(greedy), [np.asarray(x) for x in best]
        for j, i in enumerate(ids):
            n = len(rows[i]) - 1
            out[i] = (logp[j, :n], greedy[j, :n], *(x[j, :n] for x in best))
    return out
