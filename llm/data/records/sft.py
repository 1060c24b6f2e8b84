"""Supervised fine-tuning (SFT) data: chat or prompt/completion records in, packed next-token rows out.

    template = ChatTemplate()
    records = load_records("train.jsonl")
    tokenizer = template.prepare_tokenizer(tokenizer, records)   # the markers as special tokens (eos "<|end|>")
    data = SFTDataset.from_records(records, tokenizer, seq_len=256, template=template)
    batch = data.batch(seed=0, step=step, batch_size=16)         # dict of numpy arrays, all [B, seq_len]
    logits = model.apply(variables, batch["inputs"], positions_BT=batch["positions"],
                         segment_ids_BT=batch["segment_ids"])
    loss_sum, n = cross_entropy(logits, batch["targets"], batch["weights"])   # mean loss = loss_sum / n

Records (a JSONL file: one JSON object per line, blank lines skipped; other keys of a record are ignored):

    {"prompt": "2+2=", "completion": "4"}
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

Template (`ChatTemplate`, markers are special tokens of the tokenizer, one id each):

    messages:           <|system|>S<|end|><|user|>U<|end|><|assistant|>A<|end|>...   (no other separators)
    prompt/completion:  PC<|end|>                 (prompt P, then completion C: the texts as they are, joined)

Loss mask: only assistant contents and the <|end|> closing each of them (the completion and its <|end|>)
are trained, so the model learns to answer and to stop. Every assistant turn of a conversation is trained.
Texts may not contain a marker (it would forge a turn): that is a DataError naming the record.

Rows: an example of n ids gives n - 1 next-token positions: inputs = ids[:-1], targets = ids[1:],
weights = mask[1:] (a target is trained when the token it predicts is trainable).

Packing (`pack`, the default): best-fit decreasing - examples, longest first, each go into the row with
the least room that still holds them (a new row if none does). Each example in a row has its own segment
id (1, 2, ... within the row) and positions restarting at 0; padding at the end of a row has segment id 0,
position 0, input and target `pad_id`, weight 0. The model's attention only lets a token see tokens with
the same segment id (llm.ops.attention), so no example attends to another or to padding, and the logits of
a packed example equal those of the example alone. Without packing (`pad`): one example per row, segment id
1, padding as above. Examples longer than the row (n - 1 > seq_len) are truncated to their first
seq_len + 1 tokens (overflow="truncate", the default: the start of the conversation is kept, its end lost)
or dropped (overflow="drop"); an example left with no trained target is dropped. `PackStats` counts both.

Batches are pure functions of (seed, step), like llm.data.corpora.batches.sample_batch: rows are drawn uniformly
with replacement by a numpy Generator seeded from (seed, step), so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.corpora.batches import TRAIN_STREAM, local_rows
from llm.data.jsonl import json_lines
from llm.errors import DataError
from llm.tokenizers import CharTokenizer, Tokenizer

ROLES = ("system", "user", "assistant")
OVERFLOW = ("truncate", "drop")
KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")  # the arrays of a batch, all [B, T]

Record = dict[str, Any]  # {"messages": [{"role", "content"}, ...]} or {"prompt", "completion"}
Segments = list[tuple[str, bool]]  # (text, trainable)
Example = tuple[np.ndarray, np.ndarray]  # (ids int32 [n], loss mask bool [n])


# ---------------------------------------------------------------------------------------------------------
# Records


def load_records(path: str | os.PathLike) -> list[Record]:
    """The records of a JSONL file, checked and normalised (see `parse_record`).

    Every problem is a one-line DataError naming the file and, for a bad record, its line.
    """
    return [record for record, _ in _load_located(Path(path).expanduser())]


def _load_located(path: Path) -> list[tuple[Record, str]]:
    """(record, "path:line") pairs of a JSONL file."""
    if not path.exists():
        raise DataError(f"{path}: no such file (expected a JSONL file of SFT records)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a JSONL file of SFT records")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); SFT files must be UTF-8 "
                        "JSONL") from e
    records = []
    for n, obj in json_lines(path, text.split("\n")):
        where = f"{path}:{n}"
        records.append((parse_record(obj, where), where))
    if not records:
        raise DataError(f"{path}: no records (the file is empty or blank); expected one JSON object per line, "
                        'e.g. {"prompt": "...", "completion": "..."} or {"messages": [...]}')
    return records


def parse_record(obj: Any, where: str = "record") -> Record:
    """A checked copy of one record: {"messages": [{"role", "content"}, ...]} or {"prompt", "completion"}.

    A conversation needs at least one assistant message (else nothing would be trained). DataError otherwise,
    its message starting with `where`.
    """
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {_type(obj)}")
    has_messages, has_pair = "messages" in obj, "prompt" in obj or "completion" in obj
    if has_messages and has_pair:
        raise DataError(f'{where}: has both "messages" and "prompt"/"completion"; give one form')
    if has_pair:
        for key in ("prompt", "completion"):
            if key not in obj:
                raise DataError(f'{where}: has no "{key}" key (a prompt/completion record needs both)')
            if not isinstance(obj[key], str):
                raise DataError(f'{where}: "{key}" must be a string, got {_type(obj[key])}')
        return {"prompt": obj["prompt"], "completion": obj["completion"]}
    if not has_messages:
        keys = ", ".join(repr(str(k)) for k in list(obj)[:8]) or "none"
        raise DataError(f'{where}: a record needs "messages" or "prompt" and "completion" keys (it has: {keys})')
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list, got {_type(messages)}')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(f"{where}: message {i} must be an object with role and content, got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                raise DataError(f'{where}: message {i} has no "{key}" key')
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {_short(m['role'])}; roles are "
                            f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {i} content must be a string, got {_type(m['content'])}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: has no assistant message, so nothing to train on")
    return {"messages": out}


def _type(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(x), type(x).__name__)


def _short(x: Any, limit: int = 40) -> str:
    text = " ".join(repr(x).split())
    return text[:limit] + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------------------------------------------------
# The chat template


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """The markers around each turn; each must be a special token of the tokenizer (`prepare_tokenizer`)."""

    system: str = "<|system|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"

    def __post_init__(self) -> None:
        tokens = self.special_tokens
        if any(not isinstance(t, str) or not t for t in tokens) or len(set(tokens)) != len(tokens):
            raise ValueError(f"ChatTemplate markers must be distinct non-empty strings, got {tokens}")

    @property
    def special_tokens(self) -> tuple[str, str, str, str]:
        return (self.system, self.user, self.assistant, self.end)

    def marker(self, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        return getattr(self, role)

    def render(self, example: Record | Sequence[Mapping[str, str]]) -> Segments:
        """[(text, trainable), ...] of a record or a list of messages; adjacent segments alike are merged.

        Messages: marker + content + end per message, the assistant's content and end trainable.
        Prompt/completion: the prompt (not trained), then completion + end (trained).
        ValueError if a text contains a marker.
        """
        if isinstance(example, Mapping) and "prompt" in example:
            self._check_text(example["prompt"], "the prompt")
            self._check_text(example["completion"], "the completion")
            return _merge([(example["prompt"], False), (example["completion"] + self.end, True)])
        messages = example["messages"] if isinstance(example, Mapping) else example
        segments = []
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            self._check_text(content, f"message {i}")
            if role == "assistant":
                segments += [(self.assistant, False), (content + self.end, True)]
            else:
                segments.append((self.marker(role) + content + self.end, False))
        return _merge(segments)

    def render_prompt(self, example: str | Record | Sequence[Mapping[str, str]]) -> str:
        """The text a model continues to answer: messages rendered, then the assistant marker; a prompt
        (a string, or a prompt/completion record) as it is. Generation should stop at `end` (the eos_id of a
        tokenizer from `prepare_tokenizer`)."""
        if isinstance(example, str):
            return example
        if isinstance(example, Mapping) and "prompt" in example:
            return example["prompt"]
        messages = example["messages"] if isinstance(example, Mapping) else example
        return "".join(text for text, _ in self.render(messages)) + self.assistant

    def prompt_and_reference(self, record: Record) -> tuple[str, str]:
        """For evaluation: (the prompt to generate from, the reference answer). A conversation is cut before
        its last assistant message, which is the reference; a prompt/completion record is its two texts."""
        if "prompt" in record:
            return record["prompt"], record["completion"]
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return self.render_prompt(messages[:last]), messages[last]["content"]

    def prepare_tokenizer(self, tokenizer: Tokenizer, records: Iterable[Record] = (), *, eos: bool = True
                          ) -> Tokenizer:
        """`tokenizer` with the markers as special tokens (appended ids; eos_id = the end marker unless
        eos=False) and, for a char tokenizer, the characters of `records` it lacks (`extend_chars`)."""
        tokenizer = tokenizer.with_special_tokens(self.special_tokens, eos=self.end if eos else None)
        if isinstance(tokenizer, CharTokenizer):
            texts = []
            for r in records:
                texts += [r["prompt"], r["completion"]] if "prompt" in r else [m["content"] for m in r["messages"]]
            tokenizer = tokenizer.extend_chars(tokenizer.missing_chars("".join(texts)))
        return tokenizer

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """ValueError unless every marker is a special token of `tokenizer` (one id each)."""
        missing = [t for t in self.special_tokens if t not in tokenizer.special_ids]
        if missing:
            raise ValueError(f"the tokenizer lacks the chat template's special tokens {missing}; use "
                             "ChatTemplate.prepare_tokenizer(tokenizer) (a model trained with it needs "
                             "vocab_size >= the new tokenizer.vocab_size)")

    def _check_text(self, text: str, what: str) -> None:
        found = sorted((text.find(t), t) for t in self.special_tokens if t in text)
        if found:
            raise ValueError(f"{what} contains the chat marker {found[0][1]!r}, which would forge a turn")


def _merge(segments: Segments) -> Segments:
    out: Segments = []
    for text, trainable in segments:
        if not text:
            continue
        if out and out[-1][1] == trainable:
            out[-1] = (out[-1][0] + text, trainable)
        else:
            out.append((text, trainable))
    return out


# ---------------------------------------------------------------------------------------------------------
# Tokenising and packing


def tokenize_example(tokenizer: Tokenizer, segments: Segments) -> Example:
    """(ids int32 [n], loss mask bool [n]): each segment encoded on its own, its tokens masked alike."""
    ids, mask = [], []
    for text, trainable in segments:
        piece = tokenizer.encode(text)
        ids.append(piece)
        mask.append(np.full(len(piece), bool(trainable)))
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, bool)
    return np.concatenate(ids).astype(np.int32), np.concatenate(mask)


def next_token_rows(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights) = (ids[:-1], ids[1:], mask[1:] as float32) of one example."""
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask)
    return ids[:-1], ids[1:], mask[1:].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PackStats:
    """What packing did: examples in, kept, truncated and dropped; rows out; tokens."""

    n_examples: int  # examples given
    n_kept: int  # examples in the rows
    n_truncated: int  # kept, but cut to seq_len + 1 tokens
    n_dropped_long: int  # longer than a row, with overflow="drop"
    n_dropped_untrained: int  # no trained target (after truncation, or fewer than 2 tokens)
    n_rows: int
    seq_len: int
    n_tokens: int  # real (non-padding) input positions
    n_trained: int  # positions with weight 1

    @property
    def fill(self) -> float:
        """Fraction of row positions holding real tokens."""
        return self.n_tokens / max(self.n_rows * self.seq_len, 1)

    def describe(self) -> str:
        dropped = self.n_dropped_long + self.n_dropped_untrained
        return (f"{self.n_kept} of {self.n_examples} examples in {self.n_rows} rows of {self.seq_len} "
                f"({self.fill:.0%} full), {self.n_trained} trained tokens; {self.n_truncated} truncated, "
                f"{dropped} dropped")


def pack(examples: Sequence[Example], seq_len: int, *, pad_id: int = 0, overflow: str = "truncate"
         ) -> tuple[dict[str, np.ndarray], PackStats]:
    """Several examples per row, best-fit decreasing (see the module docstring).

    Returns ({"inputs", "targets", "weights", "segment_ids", "positions"}: arrays [N, seq_len], stats).
    """
    return _layout(examples, seq_len, pad_id=pad_id, overflow=overflow, packed=True)


def pad(examples: Sequence[Example], seq_len: int, *, pad_id: int = 0, overflow: str = "truncate"
        ) -> tuple[dict[str, np.ndarray], PackStats]:
    """One example per row (in the given order), padded; same arrays and stats as `pack`."""
    return _layout(examples, seq_len, pad_id=pad_id, overflow=overflow, packed=False)


def _layout(examples, seq_len, *, pad_id, overflow, packed):
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    kept, truncated, dropped_long, dropped_untrained = [], 0, 0, 0
    for ids, mask in examples:
        ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
        if ids.shape != mask.shape or ids.ndim != 1:
            raise ValueError(f"an example's ids {ids.shape} and mask {mask.shape} must be 1-D of one length")
        cut = False
        if len(ids) - 1 > seq_len:
            if overflow == "drop":
                dropped_long += 1
                continue
            ids, mask, cut = ids[: seq_len + 1], mask[: seq_len + 1], True
        if len(ids) < 2 or not mask[1:].any():
            dropped_untrained += 1
            continue
        truncated += cut
        kept.append((ids, mask))

    lengths = [len(ids) - 1 for ids, _ in kept]
    if packed:
        rows = _best_fit_decreasing(lengths, seq_len)
    else:
        rows = [[i] for i in range(len(kept))]
    n = len(rows)
    out = {
        "inputs": np.full((n, seq_len), pad_id, np.int32),
        "targets": np.full((n, seq_len), pad_id, np.int32),
        "weights": np.zeros((n, seq_len), np.float32),
        "segment_ids": np.zeros((n, seq_len), np.int32),
        "positions": np.zeros((n, seq_len), np.int32),
    }
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members, start=1):
            ids, mask = kept[i]
            inputs, targets, weights = next_token_rows(ids, mask)
            end = start + len(inputs)
            out["inputs"][r, start:end] = inputs
            out["targets"][r, start:end] = targets
            out["weights"][r, start:end] = weights
            out["segment_ids"][r, start:end] = segment
            out["positions"][r, start:end] = np.arange(len(inputs))
            start = end
    stats = PackStats(n_examples=len(examples), n_kept=len(kept), n_truncated=truncated,
                      n_dropped_long=dropped_long, n_dropped_untrained=dropped_untrained, n_rows=n,
                      seq_len=seq_len, n_tokens=int(sum(lengths)), n_trained=int(out["weights"].sum()))
    return out, stats


def _best_fit_decreasing(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Rows of example indices: longest first, each into the fullest row that still has room for it."""
    rows: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(seq_len + 1)]  # room left -> rows with that room
    has_room = np.zeros(seq_len + 1, bool)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[i]
        fits = has_room[need:]
        if fits.any():
            room = need + int(np.argmax(fits))
            r = by_room[room].pop()
            has_room[room] = bool(by_room[room])
        else:
            room, r = seq_len, len(rows)
            rows.append([])
        rows[r].append(i)
        by_room[room - need].append(r)
        has_room[room - need] = True
    return rows


# ---------------------------------------------------------------------------------------------------------
# The dataset


@dataclasses.dataclass(frozen=True, eq=False)
class SFTDataset:
    """Packed (or padded) SFT rows, [N, seq_len] each, and batches of them.

    A batch is a dict of numpy arrays [B, seq_len]: inputs, targets (int32 ids), weights (float32, 1 where
    the loss counts), segment_ids (int32, 1.. per example within a row, 0 = padding) and positions (int32,
    restarting at 0 per example). Pass positions and segment_ids to the model, weights to the loss.
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    stats: PackStats
    pad_id: int = 0
    name: str = "sft"

    def __post_init__(self) -> None:
        shapes = {k: getattr(self, k).shape for k in KEYS}
        if len(set(shapes.values())) != 1 or self.inputs.ndim != 2:
            raise ValueError(f"SFTDataset arrays must all be [N, seq_len], got {shapes}")
        if len(self.inputs) == 0:
            s = self.stats
            raise DataError(f"{self.name}: no usable examples ({s.n_examples} given, {s.n_dropped_long} longer than "
                            f"seq_len {s.seq_len} and dropped, {s.n_dropped_untrained} with nothing to train)")

    # ---- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_examples(cls, examples: Sequence[Example], seq_len: int, *, pack: bool = True, pad_id: int = 0,
                      overflow: str = "truncate", name: str = "sft") -> SFTDataset:
        """From tokenised examples ((ids, mask) pairs, see `tokenize_example`)."""
        arrays, stats = _layout(examples, seq_len, pad_id=pad_id, overflow=overflow, packed=pack)
        return cls(**arrays, stats=stats, pad_id=pad_id, name=name)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], tokenizer: Tokenizer, seq_len: int,
                     template: ChatTemplate | None = None, pack: bool = True, *, pad_id: int | None = None,
                     overflow: str = "truncate", name: str = "records") -> SFTDataset:
        """From record dicts (prompt/completion or messages, checked like a file's lines; e.g. made by a
        program). The tokenizer must have the template's markers (`ChatTemplate.prepare_tokenizer`).
        pad_id: default the tokenizer's "<|pad|>" special token if it has one, else 0 (padding is never
        attended to nor trained, so its id does not matter)."""
        records = list(records)
        return cls._build([(r, f"{name}: record {i}") for i, r in enumerate(records)], tokenizer, seq_len,
                          template, pack, pad_id, overflow, name)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, tokenizer: Tokenizer, seq_len: int,
                   template: ChatTemplate | None = None, pack: bool = True, *, pad_id: int | None = None,
                   overflow: str = "truncate") -> SFTDataset:
        """From a JSONL file (`load_records`); errors name the file and line."""
        path = Path(path).expanduser()
        return cls._build(_load_located(path), tokenizer, seq_len, template, pack, pad_id, overflow, str(path))

    @classmethod
    def _build(cls, located, tokenizer, seq_len, template, pack, pad_id, overflow, name) -> SFTDataset:
        template = template or ChatTemplate()
        template.check_tokenizer(tokenizer)
        if pad_id is None:
            pad_id = tokenizer.special_ids.get("<|pad|>", 0)
        examples = []
        for record, where in located:
            record = parse_record(record, where)
            try:
                examples.append(tokenize_example(tokenizer, template.render(record)))
            except ValueError as e:  # a marker in a text, characters a char tokenizer lacks
                raise DataError(f"{where}: {' '.join(str(e).split())}") from None
        return cls.from_examples(examples, seq_len, pack=pack, pad_id=pad_id, overflow=overflow, name=name)

    # ---- sizes ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) input positions over all rows."""
        return self.stats.n_tokens

    @property
    def num_tokens_trained(self) -> int:
        """Positions with weight 1 over all rows: the tokens one pass over the data trains on."""
        return self.stats.n_trained

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in KEYS}

    # ---- batches --------------------------------------------------------------------------------------

    def batch(self, seed: int, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1
              ) -> dict[str, np.ndarray]:
        """Training batch `step`: batch_size rows drawn uniformly (with replacement) by a generator seeded from
        (seed, step) alone. Returns this process's block of the global batch (as in llm.data.corpora.batches)."""
        local = local_rows(batch_size, process_index, process_count)
        if seed < 0 or step < 0:
            raise ValueError(f"seed and step must be non-negative, got {seed} and {step}")
        rng = np.random.default_rng(np.random.SeedSequence([seed, TRAIN_STREAM, step]))
        rows = rng.integers(0, len(self), size=batch_size)[local]
        return {k: getattr(self, k)[rows] for k in KEYS}

    def eval_batch_count(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def eval_batches(self, batch_size: int, *, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[dict[str, np.ndarray]]:
        """Every row once, in order, batch_size rows a batch; the last batch is filled up with padding rows
        (weight 0, segment id 0), so sum(loss * weights) / sum(weights) over all batches is the exact mean."""
        local = local_rows(batch_size, process_index, process_count)
        arrays = self.arrays()
        fill = {"inputs": self.pad_id, "targets": self.pad_id}

        def batches() -> Iterator[dict[str, np.ndarray]]:
            for b in range(self.eval_batch_count(batch_size)):
                rows = (b * batch_size + np.arange(batch_size))[local]
                valid = rows < len(self)
                out = {}
                for k, a in arrays.items():
                    x = a[np.where(valid, rows, 0)]
                    x[~valid] = fill.get(k, 0)
                    out[k] = x
                yield out

        return batches()
