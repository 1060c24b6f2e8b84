"""Attention written from scratch in NumPy, one query row at a time, for checking every implementation in llm/ops
against something that shares none of their code: its own visibility rule, soft-cap, ALiBi bias and softmax, in
float64.

    out, probs = oracle(q, k, v, causal=True, window=None, q_segments=None, k_segments=None, q_offset=0,
                        scale=None, softcap=None, alibi_slopes=None)

q [B, Tq, H, D], k and v [B, Tk, K, D] with K dividing H (query head h reads key head h // (H // K)); query row i
sits at slot q_offset + i, key j at slot j. Returns out [B, Tq, H, D] and probs [B, H, Tq, Tk]; a row that sees no
key is all zeros.
"""

from __future__ import annotations

import math

import numpy as np


def visible(q_slot: int, k_slot: int, *, causal: bool, window: int | None, same_segment: bool) -> bool:
    """A query sees keys at or before its slot (causal), at most window - 1 slots away (in both directions when
    not causal), in its own segment."""
    if causal and k_slot > q_slot:
        return False
    if window is not None and (q_slot - k_slot >= window or (not causal and k_slot - q_slot >= window)):
        return False
    return same_segment


def oracle(q, k, v, *, causal=True, window=None, q_segments=None, k_segments=None, q_offset=0, scale=None,
           softcap=None, alibi_slopes=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, tq, h, d = q.shape
    tk, kh = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = np.zeros((b, tq, h, d))
    probs = np.zeros((b, h, tq, tk))
    for bi in range(b):
        for hi in range(h):
            ki = hi // (h // kh)
            for i in range(tq):
                q_slot = q_offset + i
                scores = {}
                for j in range(tk):
                    same = q_segments is None or q_segments[bi][i] == k_segments[bi][j]
                    if not visible(q_slot, j, causal=causal, window=window, same_segment=same):
                        continue
                    s = float(q[bi, i, hi] @ k[bi, j, ki]) * scale
                    if softcap is not None:
                        s = softcap * math.tanh(s / softcap)
                    if alibi_slopes is not None:
                        s -= float(alibi_slopes[hi]) * abs(q_slot - j)  # a penalty growing with distance
                    scores[j] = s
                if not scores:
                    continue
                top = max(scores.values())
                weights = {j: math.exp(s - top) for j, s in scores.items()}
                total = sum(weights.values())
                for j, w in weights.items():
                    probs[bi, hi, i, j] = w / total
                    out[bi, i, hi] += (w / total) * v[bi, j, ki]
    return out, probs
