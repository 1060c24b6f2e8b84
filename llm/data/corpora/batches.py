"""Batches: windows of a split's token ids (a memory-mapped array, or a prepared split's ShardedTokens).

    tokens = PreparedData.open(path).tokens("train")                   # llm/data/corpora/prepared.py
    x, y = sample_batch(tokens, seed=0, step=step, batch_size=12, seq_len=256)

Batches are pure functions of their arguments: `sample_batch` draws its window offsets from (seed, step)
alone, so there is no iterator state to checkpoint, and a run resumed at step k sees exactly the batches
an unbroken run would have. Every batch is (inputs, targets), int32 [B, T], with targets = inputs shifted
left by one token (as in nanoGPT's get_batch).

Multi-process runs: every function that makes batches takes `process_index` and `process_count` and
returns this process's rows of the global batch, a contiguous block
`rows[process_index * B/P : (process_index + 1) * B/P]` (B must be divisible by P). The global batch is
the same for every process count, so concatenating the blocks in process order gives the P=1 batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from llm.data.corpora.prepared import ShardedTokens
from llm.data.corpora.shuffle import shuffled_index
from llm.errors import DataError

Windows = tuple[np.ndarray, np.ndarray]  # (inputs, targets), int32 [B, T]

# Mixed into the random seed so that training and evaluation windows come from unrelated streams.
TRAIN_STREAM, EVAL_STREAM = 0, 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0..vocab_size-1: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# ---------------------------------------------------------------------------------------------------------
# Batches


def sample_batch(
    tokens: np.ndarray,
    *,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Windows:
    """Training batch `step`: batch_size windows at random offsets, like nanoGPT's get_batch.

    Offsets are uniform in [0, len(tokens) - seq_len - 1] and depend only on (seed, step). Returns this
    process's rows (see the module docstring) as (inputs, targets), int32 [batch_size / process_count,
    seq_len].
    """
    return windows_at(tokens, seed=seed, stream=TRAIN_STREAM, index=step, batch_size=batch_size, seq_len=seq_len,
                      rows=local_rows(batch_size, process_index, process_count))


def pass_batch(tokens: np.ndarray, *, seed: int, step: int, batch_size: int, seq_len: int, process_index: int = 0,
               process_count: int = 1) -> Windows:
    """Training batch `step` of sequential passes without replacement: the split's n = (len - 1) // seq_len
    non-overlapping windows, every one once per pass, in an order shuffled anew for each pass. Row r of batch s is
    sample k = s * batch_size + r of the stream: window shuffled_index(k mod n) of pass k // n, a function of
    (seed, step) alone, so it holds for any number of processes and across resumes."""
    tokens = _as_tokens(tokens)
    _check_window(len(tokens), seq_len)
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got {seed} and {step}")
    n = (len(tokens) - 1) // seq_len
    k = step * batch_size + np.arange(batch_size)[local_rows(batch_size, process_index, process_count)]
    passes, within = np.divmod(k, n)
    window = np.empty_like(k)
    for p in np.unique(passes):  # a batch spans at most two passes unless the split holds fewer windows than a batch
        here = passes == p
        window[here] = shuffled_index(within[here], n, (seed, TRAIN_STREAM, int(p)))
    return _windows(tokens, window * seq_len, seq_len)


def windows_at(tokens: np.ndarray, *, seed: int, stream: int, index: int, batch_size: int, seq_len: int,
               rows: np.ndarray) -> Windows:
    """Rows `rows` (indices into the global batch) of the batch `sample_batch` (stream TRAIN_STREAM, index = step)
    or `eval_batches` (EVAL_STREAM, index = batch number) draws; only those rows' windows are read."""
    tokens = _as_tokens(tokens)
    _check_window(len(tokens), seq_len)
    offsets = _random_offsets(len(tokens), seq_len, batch_size, (seed, stream, index))
    return _windows(tokens, offsets[rows], seq_len)


def eval_batches(
    tokens: np.ndarray,
    *,
    seed: int,
    n_batches: int,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Windows]:
    """A fixed set of n_batches random batches (the same on every call), for cheap periodic evaluation.

    Drawn like `sample_batch` but from a stream of their own, so they never coincide with training batch
    numbers of the same seed.
    """
    tokens = _as_tokens(tokens)
    _check_window(len(tokens), seq_len)
    rows = local_rows(batch_size, process_index, process_count)
    if n_batches < 0:
        raise ValueError(f"n_batches must be >= 0, got {n_batches}")

    def batches() -> Iterator[Windows]:
        for i in range(n_batches):
            yield windows_at(tokens, seed=seed, stream=EVAL_STREAM, index=i, batch_size=batch_size,
                             seq_len=seq_len, rows=rows)

    return batches()  # a generator inside, so that bad arguments fail here and not at the first next()


def sequential_batches(
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The whole split once, in order: (inputs, targets, weights), weights float32 [B, T] of 1s and 0s.

    Window j holds tokens [j*T, j*T + T] (non-overlapping: each window starts with an empty context), so
    every token but the first is a target exactly once. Positions past the end, in the last window and in
    padding rows of the last batch, have inputs = targets = 0 and weight 0; the weights sum to
    len(tokens) - 1 over all batches, and sum(loss * weights) / sum(weights) is the exact mean loss.
    Needs only 2 tokens. `sequential_batch_count` says how many batches come.
    """
    tokens = _as_tokens(tokens)
    if len(tokens) < 2:
        raise DataError(f"a split of {len(tokens)} token(s) has no next-token targets; use a bigger corpus")
    rows = local_rows(batch_size, process_index, process_count)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n_targets = len(tokens) - 1
    n_batches = sequential_batch_count(len(tokens), batch_size=batch_size, seq_len=seq_len)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        positions = np.arange(seq_len + 1)
        for b in range(n_batches):
            starts = (b * batch_size + np.arange(batch_size))[rows] * seq_len
            valid = np.clip(n_targets - starts, 0, seq_len)  # targets in each window
            idx = np.minimum(starts[:, None] + positions, len(tokens) - 1)
            window = np.asarray(tokens[idx], dtype=np.int32)
            mask = positions[:-1] < valid[:, None]
            yield window[:, :-1] * mask, window[:, 1:] * mask, mask.astype(np.float32)

    return batches()


def sequential_batch_count(n_tokens: int, *, batch_size: int, seq_len: int) -> int:
    """How many batches `sequential_batches` yields for n_tokens tokens."""
    return math.ceil(math.ceil(max(n_tokens - 1, 0) / seq_len) / batch_size)


def document_segments(inputs: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
    """{"segment_ids", "positions"} int32 [B, T] for windows `inputs` whose documents end with `eos_id`: segment
    ids 1, 2, ... within a row (a document starts after each end-of-text id) and positions restarting at 0 in each
    document, so attention does not cross documents."""
    ends = inputs == eos_id
    before = np.cumsum(ends, axis=1) - ends  # end-of-text ids strictly before each position
    segment_ids = (1 + before).astype(np.int32)
    t = np.arange(inputs.shape[1])
    start = np.maximum.accumulate(np.where(np.c_[np.zeros((len(inputs), 1), bool), ends[:, :-1]], t, 0), axis=1)
    return {"segment_ids": segment_ids, "positions": (t - start).astype(np.int32)}


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _as_tokens(tokens: np.ndarray | ShardedTokens) -> np.ndarray | ShardedTokens:
    if isinstance(tokens, ShardedTokens):  # a prepared split: indexing reads only the shards it touches
        return tokens.shards[0] if len(tokens.shards) == 1 else tokens
    tokens = np.asarray(tokens)  # a plain ndarray view of a memmap: indexing it reads only what it needs
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    return tokens


def _check_window(n_tokens: int, seq_len: int, name: str = "the token split") -> None:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if n_tokens < seq_len + 1:
        raise DataError(
            f"{name} has {n_tokens} tokens, fewer than the {seq_len + 1} one window of seq_len {seq_len} "
            f"needs (inputs plus the next-token target); use a shorter context or a bigger corpus"
        )


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's block of rows of a global batch (checking the arguments)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    per_process = batch_size // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def _random_offsets(n_tokens: int, seq_len: int, batch_size: int, entropy: tuple[int, ...]) -> np.ndarray:
    # Always the whole global batch's offsets (cheap), so every process count sees the same batch. Entropy
    # tuples all have the same length: numpy's SeedSequence pads short entropy with zeros, so [s] == [s, 0].
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed and step must be non-negative, got {entropy[0]} and {entropy[2]}")
    rng = np.random.default_rng(np.random.SeedSequence(list(entropy)))
    return rng.integers(0, n_tokens - seq_len, size=batch_size)  # high is exclusive


def _windows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> Windows:
    window = np.asarray(tokens[offsets[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    return window[:, :-1], window[:, 1:]
