"""Synthetic attention tasks, generated on the fly: multi-query associative recall, copying, selective copying.

    task = make_task("mqar:pairs=16,vocab=128", seq_len=256)
    batch = task.batch(seed=0, step=step, batch_size=64)       # same keys/dtypes as SFTDataset.batch
    logits = model.apply(variables, batch["inputs"], positions_BT=batch["positions"],
                         segment_ids_BT=batch["segment_ids"])
    loss_sum, n = cross_entropy(logits, batch["targets"], batch["weights"])
    n_correct, n_counted = task.accuracy(logits, batch)        # argmax accuracy on the answer positions
    tokenizer = task.tokenizer()                               # CharTokenizer: id i <-> the i-th character

No files: every batch is a pure function of (seed, split, step) - a numpy Generator seeded from
SeedSequence([seed, stream, step]), stream 0 for split "train" and 1 for "eval" - so a resumed run sees the same
batches and the held-out eval batches (`eval_batches`: split "eval", seed `eval_seed`, steps 0, 1, ...) are never
training batches. The whole global batch is generated and each process takes its block of rows (as in
llm.data.corpora.batches), so the batch does not depend on the process count.

Rows: a token sequence s of length seq_len + 1 gives inputs = s[:-1] and targets = s[1:] (targets at answer
positions may be overridden, see MQAR's zoology layout); weights are 1 exactly at the positions whose target is an
answer the task asks for, 0 elsewhere. A row is one example: segment id 1 and positions 0, 1, ... on its tokens;
padding at the end (token PAD = id 0) has segment id 0, position 0, weight 0 (as in SFTDataset).

Tasks and sequence formats (ids; `vocab` is the task's vocab_size):

mqar (Zoology, Arora et al. 2023), options pairs=8, vocab=128, queries=pairs, layout=packed|zoology, min_pairs:
    keys are ids 1 .. vocab//2 - 1, values vocab//2 .. vocab - 1; per row `pairs` distinct keys and `pairs`
    distinct values (drawn without replacement, as in Zoology).
    packed:  k1 v1 k2 v2 ... kP vP  q1 a1 q2 a2 ... qQ aQ  PAD ...    (q: distinct keys of the pairs, in random
             order; a: the value paired with q). Weight 1 on the input positions holding q (target a).
    zoology: k1 v1 ... kP vP, then filler 0s with the Q query keys at even offsets 2*g (g drawn without replacement,
             power-law p(g) ~ g^(a-1), a=0.01, as Zoology's MultiQueryAR), every token real (no padding); the
             answer is not in the input (the token after a query is 0) but is the target at the query's position.
             The Zoology setting "seq_len 256, 16 pairs, vocab 8192": make_task("mqar:pairs=16,vocab=8192,
             layout=zoology", 256).
    min_pairs=m (m <= pairs): each training row has a pair count drawn uniformly from m .. pairs (and as many
             queries), a mixture of easier rows like Zoology's training mixture of settings; eval rows keep
             `pairs`. Rows with few pairs teach the recall mechanism sooner (tested in the ablation's report).
copy, options len=seq_len//2, vocab=32:
    x1 .. xn SEP x1 .. xn PAD ...   (SEP = id 1, x uniform over ids 2 .. vocab - 1); weight 1 on SEP and the first
    n - 1 tokens of the repeat (targets x1 .. xn: the whole second copy).
selective_copy (Gu & Dao 2023, Mamba), options content=16, vocab=16, noise=seq_len-content:
    a region of `noise` tokens: `content` tokens c1 .. ck (uniform over ids 3 .. vocab - 1) at random positions
    (in order), NOISE (id 1) elsewhere; then MARK (id 2), then c1 .. ck, then PAD ...; weight 1 on MARK and
    c1 .. c(k-1) (targets c1 .. ck). Teacher forced, like any LM.

The tokenizer (`SyntheticTask.tokenizer()`) is a CharTokenizer over `alphabet(vocab_size)`: the first vocab_size
printable, non-space characters by code point ("!", '"', "#", ...: ASCII first), so token id i is the i-th character
and `llm sample` / `llm explain` can show these runs.
"""

from __future__ import annotations

import abc
import unicodedata
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from llm.data.corpora.batches import EVAL_STREAM, TRAIN_STREAM, local_rows
from llm.tokenizers import CharTokenizer

KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")  # as llm.data.records.sft.KEYS
PAD = 0
STREAMS = {"train": TRAIN_STREAM, "eval": EVAL_STREAM}
DEFAULT_EVAL_BATCHES = 8
ZOOLOGY_POWER_A = 0.01


# ---------------------------------------------------------------------------------------------------------
# The tokenizer's alphabet


def alphabet(vocab_size: int) -> str:
    """The first `vocab_size` printable, non-space characters by code point (letters, digits, punctuation and
    symbols; no combining marks), so that CharTokenizer(alphabet(n)) gives character k the id k."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    chars: list[str] = []
    code = 0x21
    while len(chars) < vocab_size:
        if code > 0x10FFFF:
            raise ValueError(f"vocab_size {vocab_size} is more than the printable characters")
        c = chr(code)
        if c.isprintable() and not c.isspace() and unicodedata.category(c)[0] in "LNPS":
            chars.append(c)
        code += 1
    return "".join(chars)


# ---------------------------------------------------------------------------------------------------------
# The task base class


class SyntheticTask(abc.ABC):
    """A task of rows [seq_len] over ids [0, vocab_size), generated from (seed, split, step); see the module doc.

    Subclasses set `name`, `OPTIONS` (option -> default; None for a default computed from seq_len) and
    implement `_sequences(rng, n, train) -> (seq int32 [n, seq_len + 1], answer bool [n, seq_len], answers int32
    [n, seq_len], length int [n])`: the tokens, the answer positions (of inputs), the targets there, and the
    number of real tokens of each sequence (the rest is PAD).
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, seq_len: int, *, eval_seed: int = 0, n_eval_batches: int = DEFAULT_EVAL_BATCHES,
                 **options: Any):
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
            raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; options are "
                             f"{', '.join(self.OPTIONS) or 'none'}")
        if n_eval_batches < 1:
            raise ValueError(f"n_eval_batches must be >= 1, got {n_eval_batches}")
        self.seq_len = seq_len
        self.eval_seed = eval_seed
        self.n_eval_batches = n_eval_batches
        self.options = {k: options.get(k, v) for k, v in self.OPTIONS.items()}
        self._setup()

    @abc.abstractmethod
    def _setup(self) -> None:
        ...

    @abc.abstractmethod
    def _sequences(self, rng: np.random.Generator, n: int, train: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ...

    def _int_option(self, key: str, low: int, high: int | None = None) -> int:
        value = self.options[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{self.name}: {key} must be an int {bound} (seq_len {self.seq_len}), got {value!r}")
        return value

    # ---- description ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.options["vocab"]

    @property
    def spec(self) -> str:
        """The spec string `make_task` rebuilds this task from (with seq_len)."""
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.options.items() if v is not None)

    @abc.abstractmethod
    def describe(self) -> str:
        ...

    def __repr__(self) -> str:
        return f"SyntheticTask({self.spec!r}, seq_len={self.seq_len})"

    def tokenizer(self) -> CharTokenizer:
        """A char tokenizer whose id i is the i-th character of `alphabet(vocab_size)`."""
        return CharTokenizer(alphabet(self.vocab_size))

    # ---- batches --------------------------------------------------------------------------------------

    def batch(self, seed: int, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1,
              split: str = "train") -> dict[str, np.ndarray]:
        """Batch `step` of `split` ("train" or "eval"): dict of numpy arrays [B, seq_len] (this process's block of
        the global batch): inputs, targets (int32), weights (float32, 1 on answer positions), segment_ids (int32,
        1 real, 0 padding), positions (int32)."""
        local = local_rows(batch_size, process_index, process_count)
        if seed < 0 or step < 0:
            raise ValueError(f"seed and step must be non-negative, got {seed} and {step}")
        if split not in STREAMS:
            raise ValueError(f"split must be one of {', '.join(STREAMS)}, got {split!r}")
        rng = np.random.default_rng(np.random.SeedSequence([seed, STREAMS[split], step]))
        seq, answer, answers, length = self._sequences(rng, batch_size, split == "train")
        seq, answer, answers, length = seq[local], answer[local], answers[local], length[local]
        T = self.seq_len
        real = np.arange(T)[None, :] < np.minimum(length, T)[:, None]
        targets = np.where(answer, answers, seq[:, 1:])
        return {
            "inputs": np.ascontiguousarray(seq[:, :-1], dtype=np.int32),
            "targets": targets.astype(np.int32),
            "weights": answer.astype(np.float32),
            "segment_ids": real.astype(np.int32),
            "positions": np.where(real, np.arange(T, dtype=np.int32)[None, :], 0).astype(np.int32),
        }

    def eval_batch_count(self, batch_size: int) -> int:
        """How many batches `eval_batches` gives by default (n_eval_batches, whatever the batch size)."""
        local_rows(batch_size, 0, 1)
        return self.n_eval_batches

    def eval_batches(self, batch_size: int, n_batches: int | None = None, *, process_index: int = 0,
                     process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Fixed held-out batches: split "eval", seed `eval_seed`, steps 0 .. n_batches - 1 (default
        n_eval_batches); the same whatever the training seed."""
        local_rows(batch_size, process_index, process_count)
        n = self.n_eval_batches if n_batches is None else n_batches
        if n < 0:
            raise ValueError(f"n_batches must be >= 0, got {n}")

        def batches() -> Iterator[dict[str, np.ndarray]]:
            for i in range(n):
                yield self.batch(self.eval_seed, i, batch_size, process_index=process_index,
                                 process_count=process_count, split="eval")

        return batches()

    # ---- accuracy -------------------------------------------------------------------------------------

    @staticmethod
    def accuracy(logits_or_preds: Any, batch: dict[str, Any]) -> tuple[int, int]:
        """(n_correct, n_counted) over the positions with weight > 0: logits [B, T, V] (argmax taken) or predicted
        ids [B, T] against batch["targets"]. Sum both over batches, then divide."""
        x, targets, counted = _scored(logits_or_preds, batch)
        return int(((x == targets) & counted).sum()), int(counted.sum())

    @staticmethod
    def sequence_accuracy(logits_or_preds: Any, batch: dict[str, Any]) -> tuple[int, int]:
        """(rows with every answer right, rows with any answer): exact match per example."""
        x, targets, counted = _scored(logits_or_preds, batch)
        wrong = ((x != targets) & counted).any(-1)
        has = counted.any(-1)
        return int((has & ~wrong).sum()), int(has.sum())


def _scored(logits_or_preds: Any, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted ids [B, T], targets [B, T], positions counted [B, T]) of logits [B, T, V] (argmax taken) or
    predicted ids against a batch."""
    x = np.asarray(logits_or_preds)
    targets = np.asarray(batch["targets"])
    if x.ndim == targets.ndim + 1:
        x = x.argmax(-1)
    if x.shape != targets.shape:
        raise ValueError(f"predictions of shape {x.shape} do not match targets of shape {targets.shape}")
    return x, targets, np.asarray(batch["weights"]) > 0


def _uniform_subsets(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    """[n, k] distinct ints in [0, population), each row a uniformly random ordered k-subset."""
    return np.argsort(rng.random((n, population)), axis=1)[:, :k]


# ---------------------------------------------------------------------------------------------------------
# The tasks


class MQAR(SyntheticTask):
    """Multi-query associative recall (Zoology); see the module doc."""

    name = "mqar"
    OPTIONS: ClassVar[dict[str, Any]] = {"pairs": 8, "vocab": 128, "queries": None, "layout": "packed",
                                         "min_pairs": None}
    LAYOUTS = ("packed", "zoology")

    def _setup(self) -> None:
        vocab = self._int_option("vocab", 4)
        self.n_keys, self.n_values = vocab // 2 - 1, vocab - vocab // 2
        pairs = self._int_option("pairs", 1, min(self.n_keys, self.n_values))
        if self.options["min_pairs"] is not None:
            self._int_option("min_pairs", 1, pairs)
            if self.options["queries"] not in (None, pairs):
                raise ValueError(f"{self.name}: min_pairs asks as many queries as pairs in each row; drop queries")
        if self.options["queries"] is None:
            self.options["queries"] = pairs
        layout = self.options["layout"]
        if layout not in self.LAYOUTS:
            raise ValueError(f"{self.name}: layout must be one of {', '.join(self.LAYOUTS)}, got {layout!r}")
        T = self.seq_len
        if layout == "packed":
            if 4 * pairs > T + 1:  # so queries=pairs always fits when pairs fits
                raise ValueError(f"{self.name}: {pairs} pairs need seq_len >= {4 * pairs - 1} (pairs and queries), "
                                 f"got {T}")
            self._int_option("queries", 1, min(pairs, (T + 1) // 2 - pairs))
        else:
            space = (T - 2 * pairs) // 2
            if space < 1:
                raise ValueError(f"{self.name}: {pairs} pairs leave no room for queries in seq_len {T}")
            self._int_option("queries", 1, min(pairs, space))

    def describe(self) -> str:
        o = self.options
        return (f"mqar: {o['pairs']} key-value pairs then {o['queries']} queries ({o['layout']} layout), vocab "
                f"{o['vocab']} ({self.n_keys} keys, {self.n_values} values), seq_len {self.seq_len}; loss on the "
                f"{o['queries']} recalled values"
                + (f"; training rows have {o['min_pairs']}-{o['pairs']} pairs" if o["min_pairs"] is not None else ""))

    def _sequences(self, rng, n, train):
        low = self.options["min_pairs"]
        if not train or low is None or low == self.options["pairs"]:
            return self._rows(rng, n, self.options["pairs"], self.options["queries"])
        counts = rng.integers(low, self.options["pairs"] + 1, size=n)
        out = [np.zeros((n, self.seq_len + 1), np.int64), np.zeros((n, self.seq_len), bool),
               np.zeros((n, self.seq_len), np.int64), np.zeros(n, np.int64)]
        for p in np.unique(counts):
            rows = np.flatnonzero(counts == p)
            for whole, part in zip(out, self._rows(rng, len(rows), int(p), int(p))):
                whole[rows] = part
        return tuple(out)

    def _rows(self, rng, n, P, Q):
        """n rows of P pairs and Q queries."""
        T = self.seq_len
        vocab = self.options["vocab"]
        keys = 1 + _uniform_subsets(rng, n, self.n_keys, P)
        values = vocab // 2 + _uniform_subsets(rng, n, self.n_values, P)
        which = _uniform_subsets(rng, n, P, Q)  # the pairs queried, in query order
        q_keys = np.take_along_axis(keys, which, 1)
        q_values = np.take_along_axis(values, which, 1)
        seq = np.zeros((n, T + 1), np.int64)
        seq[:, 0:2 * P:2], seq[:, 1:2 * P:2] = keys, values
        answers = np.zeros((n, T), np.int64)
        answer = np.zeros((n, T), bool)
        rows = np.arange(n)[:, None]
        if self.options["layout"] == "packed":
            at = 2 * P + 2 * np.arange(Q)[None, :].repeat(n, 0)  # query positions
            seq[rows, at], seq[rows, at + 1] = q_keys, q_values
            length = np.full(n, 2 * P + 2 * Q)
        else:  # Zoology: query i at 2 * gap_i after the context, gaps without replacement, p(g) ~ (g+1)^(a-1)
            space = (T - 2 * P) // 2
            log_p = (ZOOLOGY_POWER_A - 1) * np.log(np.arange(1, space + 1))
            gumbel = -np.log(-np.log(rng.random((n, space))))  # Gumbel top-k: sampling without replacement
            gaps = np.argsort(-(log_p[None, :] + gumbel), axis=1)[:, :Q]
            at = 2 * P + 2 * gaps
            seq[rows, at] = q_keys
            length = np.full(n, T + 1)
        answer[rows, at] = True
        answers[rows, at] = q_values
        return seq, answer, answers, length


class Copy(SyntheticTask):
    """x1..xn SEP x1..xn: loss on the repeat; see the module doc."""

    name = "copy"
    OPTIONS: ClassVar[dict[str, Any]] = {"len": None, "vocab": 32}
    SEP = 1

    def _setup(self) -> None:
        self._int_option("vocab", 3)
        if self.options["len"] is None:
            self.options["len"] = self.seq_len // 2
        self._int_option("len", 1, self.seq_len // 2)

    def describe(self) -> str:
        n, v = self.options["len"], self.options["vocab"]
        return (f"copy: {n} random tokens ({v - 2} symbols), a separator, the same {n} again, seq_len "
                f"{self.seq_len}; loss on the {n} repeated tokens")

    def _sequences(self, rng, n, train):
        L, T = self.options["len"], self.seq_len
        x = rng.integers(2, self.options["vocab"], size=(n, L))
        seq = np.zeros((n, T + 1), np.int64)
        seq[:, :L], seq[:, L], seq[:, L + 1:2 * L + 1] = x, self.SEP, x
        answer = np.zeros((n, T), bool)
        answer[:, L:2 * L] = True
        return seq, answer, seq[:, 1:], np.full(n, 2 * L + 1)


class SelectiveCopy(SyntheticTask):
    """Content tokens among noise, MARK, the content in order: loss on the output; see the module doc."""

    name = "selective_copy"
    OPTIONS: ClassVar[dict[str, Any]] = {"content": 16, "vocab": 16, "noise": None}
    NOISE, MARK = 1, 2

    def _setup(self) -> None:
        self._int_option("vocab", 4)
        k = self._int_option("content", 1, self.seq_len // 2)
        if self.options["noise"] is None:
            self.options["noise"] = self.seq_len - k
        self._int_option("noise", k, self.seq_len - k)

    def describe(self) -> str:
        k, r, v = self.options["content"], self.options["noise"], self.options["vocab"]
        return (f"selective_copy: {k} content tokens ({v - 3} symbols) scattered in {r} noise positions, a marker, "
                f"the content in order, seq_len {self.seq_len}; loss on the {k} output tokens")

    def _sequences(self, rng, n, train):
        k, R, T = self.options["content"], self.options["noise"], self.seq_len
        content = rng.integers(3, self.options["vocab"], size=(n, k))
        where = np.sort(_uniform_subsets(rng, n, R, k), axis=1)
        seq = np.zeros((n, T + 1), np.int64)
        seq[:, :R] = self.NOISE
        seq[np.arange(n)[:, None], where] = content
        seq[:, R], seq[:, R + 1:R + 1 + k] = self.MARK, content
        answer = np.zeros((n, T), bool)
        answer[:, R:R + k] = True
        return seq, answer, seq[:, 1:], np.full(n, R + 1 + k)


TASKS: dict[str, type[SyntheticTask]] = {"mqar": MQAR, "copy": Copy, "selective_copy": SelectiveCopy}


# ---------------------------------------------------------------------------------------------------------
# Specs


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """"name:key=value,key=value" -> (name, options); integer-looking values become ints."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a synthetic task spec must be a non-empty string like 'mqar:pairs=16', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; tasks are {', '.join(TASKS)}")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"{name}: bad option {item!r} in {spec!r}; expected key=value")
        if key not in TASKS[name].OPTIONS:
            raise ValueError(f"{name}: unknown option {key!r}; options are {', '.join(TASKS[name].OPTIONS)}")
        if key in options:
            raise ValueError(f"{name}: option {key!r} given twice in {spec!r}")
        try:
            options[key] = int(value)
        except ValueError:
            options[key] = value
    return name, options


def make_task(spec: str, seq_len: int, **kwargs: Any) -> SyntheticTask:
    """The task of a spec like "mqar:pairs=16,vocab=128", "copy" or "selective_copy:content=16,vocab=32", for rows
    of seq_len tokens (kwargs: eval_seed, n_eval_batches). ValueError for unknown tasks or options, or bad values."""
    name, options = parse_spec(spec)
    return TASKS[name](seq_len, **kwargs, **options)


__all__ = ["KEYS", "MQAR", "PAD", "TASKS", "Copy", "SelectiveCopy", "SyntheticTask", "alphabet", "make_task",
           "parse_spec"]
