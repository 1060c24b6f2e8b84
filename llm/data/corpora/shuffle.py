"""A random permutation of 0..n-1 evaluated one index at a time, in O(1) memory, for any n.

    j = shuffled_index(np.arange(8), n=1_000_000_000, key=(seed, epoch))   # 8 entries of one permutation

A 4-round Feistel network over the 2h-bit integers (4^h >= n) is a bijection of [0, 4^h); an output >= n is put
through the network again ("cycle walking") until it lands below n, which keeps it a bijection of [0, n). At most
4^h / n < 4 passes are expected. Sequential passes over billions of windows thus need no permutation array.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's mixing constants


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _feistel(i: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    left, right = i >> np.uint64(half_bits), i & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << np.uint64(half_bits)) | right


def shuffled_index(index: np.ndarray, n: int, key: tuple[int, ...]) -> np.ndarray:
    """Entries `index` (integers in [0, n)) of the permutation of 0..n-1 that `key` (non-negative ints) picks."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index = np.asarray(index, np.uint64)
    if index.size and int(index.max()) >= n:
        raise ValueError(f"indices must be in [0, {n})")
    half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
    keys = np.random.SeedSequence(list(key)).generate_state(ROUNDS, np.uint64)
    with np.errstate(over="ignore"):  # the mixing multiplies modulo 2^64 on purpose
        out = _feistel(index, half_bits, keys)
        outside = out >= n
        while outside.any():
            out[outside] = _feistel(out[outside], half_bits, keys)
            outside = out >= n
    return out.astype(np.int64)
