"""`llm prepare`: sources in, a prepared dataset directory (llm/data/corpora/prepared.py) out, in bounded memory.

    prepare(PrepareSettings(sources=["web/*.jsonl.zst"], out="data/web", tokenizer="bpe", vocab_size=8192))

The documents of all sources, in order, are cut into units of about `unit_chars` characters. Each unit is
tokenized by `workers` processes and written as one train and one validation shard, then recorded in
units/NNNNN.json; the manifest is written when every unit is. Memory holds one unit, never a whole source.
Killed at any point and run again with the same settings, it checks the finished units' shards against their
records, skips them and goes on; a half-written shard is never used (files are renamed into place). The same
inputs and settings give byte-identical shards whatever the number of workers.

The split holds out whole documents: document i (a text file's pieces count as documents here) is validation
when floor((i+1) * val_fraction) > floor(i * val_fraction), an exact, evenly spread fraction. A lone text file
is split as `data.corpus` splits one (nanoGPT's tail: its last val_fraction of characters validate), however
small it is, counting its characters in a first pass so it is still read a piece at a time. In each split's
stream the end-of-text id follows every document, and every place where the stream jumps (a text file's pieces
that went to different splits), so no window silently joins unrelated text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.corpora.batches import token_dtype
from llm.data.corpora.corpus import Corpus, split_point, split_text
from llm.data.corpora.prepared import FORMAT, MANIFEST, SPLITS, docs_name, shard_name
from llm.data.corpora.sources import PIECE_CHARS, Document, Source, expand_sources, iter_documents
from llm.errors import DataError
from llm.files import atomic_file, write_json
from llm.tokenizers import EOS_TEXT, KINDS, Tokenizer, load_tokenizer, tokenizer_from_json, train_tokenizer

TASK_CHARS = 1 << 20  # characters per worker task: small enough to balance, big enough to amortise pickling


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    sources: list[str]
    out: str
    tokenizer: str = "bpe"  # a kind (byte, char, bpe: trained on a sample of the sources) or a tokenizer.json
    vocab_size: int = 8192  # bpe only
    text_field: str = "text"
    val_fraction: float = 0.0005
    unit_chars: int = 64 << 20
    sample_chars: int = 64 << 20  # characters the tokenizer trains on (bpe, char)
    workers: int = 0  # 0: one per core


@dataclasses.dataclass
class Piece:
    """A document (or piece of one) with its split and whether the end-of-text id follows it."""

    text: str
    split: str
    eot: bool


def prepare(s: PrepareSettings, *, log: Callable[[str], None] = print, progress: bool = True,
            on_unit: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Prepare (or finish preparing) `s.out`; returns the manifest. on_unit(u): called when unit u is on disk
    (the tests' seam for killing a preparation at a known point)."""
    check_settings(s)
    sources = expand_sources(s.sources)
    out = Path(s.out)
    if (out / MANIFEST).is_file() and _same_settings(out, s, sources):
        log(f"{out}: already prepared")
        return json.loads((out / MANIFEST).read_text())
    _check_out_dir(out, s, sources)
    for source in sources:  # a wrong field name or a binary file fails here, before anything is written
        next(iter_documents(source, s.text_field), None)
    tokenizer = _tokenizer(out, s, sources, log)
    (out / "units").mkdir(parents=True, exist_ok=True)
    write_json(out / "prepare.json", _settings_json(s, sources))
    tokenizer.save(out / "tokenizer.json")
    records = _write_units(out, units(sources, s), tokenizer, s.workers, progress=progress, on_unit=on_unit)
    manifest = _manifest(_source_records(sources), tokenizer, records, s.val_fraction, text_field=s.text_field,
                         unit_chars=s.unit_chars)
    write_json(out / MANIFEST, manifest)
    totals = {k: manifest["splits"][k]["tokens"] for k in SPLITS}
    log(f"{out}: {totals['train']:,} train / {totals['val']:,} val tokens in {len(records)} unit(s)")
    if s.val_fraction and not totals["val"]:
        log(f"{out}: no validation documents: {s.val_fraction} of the documents (and a text file's 64 K pieces) is "
            "less than one; run again into a new directory with a larger --val_fraction, or prepare each text file "
            "on its own (a lone text file's last val_fraction of characters validate)")
    return manifest


def prepare_corpus(corpus: Corpus, tokenizer: Tokenizer, out: Path, val_fraction: float) -> dict[str, Any]:
    """A plain text (one document: the built-in corpus, a named one, a text file) prepared into `out` with its
    tokenizer, split as nanoGPT splits one (`split_text`: the first 1 - val_fraction of its characters train, the
    rest validate). Returns the manifest. A prepared `out` is checked (its shards' checksums) and reused; a
    changed or damaged shard is written again.

    Each split is encoded whole, or in PIECE_CHARS pieces where the tokenizer is `chunkable` (characters, bytes),
    so its tokens are exactly `tokenizer.encode(split)`. No end-of-text id is written: a single document has no
    boundary inside a split, and a character vocabulary keeps no id for one."""
    (out / "units").mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer.json").is_file():
        tokenizer.save(out / "tokenizer.json")
    train, val = split_text(corpus.text, val_fraction)
    cut = PIECE_CHARS if tokenizer.chunkable else max(len(corpus.text), 1)
    unit = [Piece(text[i:i + cut], split, eot=False)
            for split, text in (("train", train), ("val", val)) for i in range(0, len(text), cut)]
    records = _write_units(out, [unit], tokenizer, workers=1, progress=False, on_unit=None)
    source = {"path": corpus.name, "characters": len(corpus.text), "sha256_text": corpus.sha256,
              "provenance": corpus.provenance}
    manifest = _manifest([source], tokenizer, records, val_fraction, split="characters")
    if not (out / MANIFEST).is_file() or json.loads((out / MANIFEST).read_text()) != manifest:
        write_json(out / MANIFEST, manifest)
    return manifest


def check_settings(s: PrepareSettings) -> None:
    if not 0 <= s.val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {s.val_fraction}")
    if s.tokenizer == "bpe" and s.vocab_size < 257:
        raise DataError(f"a BPE vocab_size must be at least 257, got {s.vocab_size}")
    if s.tokenizer not in KINDS and not Path(s.tokenizer).is_file():
        raise DataError(f"--tokenizer {s.tokenizer}: neither a kind ({', '.join(KINDS)}) nor a tokenizer.json file")
    if s.unit_chars < 1 or s.sample_chars < 1 or s.workers < 0:
        raise DataError("unit_chars and sample_chars must be positive and workers >= 0")


# ---------------------------------------------------------------------------------------------------------
# Settings of a dataset directory, for resuming


def _settings_json(s: PrepareSettings, sources: list[Source]) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    del d["workers"], d["out"]  # neither changes the output
    d["format"] = FORMAT
    d["files"] = [{"path": str(x.path.resolve()) if x.path else str(x), "bytes": x.size} for x in sources]
    return d


def _same_settings(out: Path, s: PrepareSettings, sources: list[Source]) -> bool:
    try:
        return json.loads((out / "prepare.json").read_text()) == json.loads(json.dumps(_settings_json(s, sources)))
    except (OSError, ValueError):
        return False


def _check_out_dir(out: Path, s: PrepareSettings, sources: list[Source]) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not _same_settings(out, s, sources):
        what = "a dataset prepared with other settings or sources" if (out / "prepare.json").exists() else "files"
        raise DataError(f"{out}: holds {what}; choose another output directory or delete it")


# ---------------------------------------------------------------------------------------------------------
# The tokenizer


def _tokenizer(out: Path, s: PrepareSettings, sources: list[Source], log) -> Tokenizer:
    if (out / "tokenizer.json").is_file():  # resuming: the units already written used this one
        return load_tokenizer(out / "tokenizer.json")
    if s.tokenizer not in KINDS:
        tok = load_tokenizer(s.tokenizer)
    elif s.tokenizer == "byte":
        tok = train_tokenizer("byte", "")
    else:
        log(f"training a {s.tokenizer} tokenizer on a sample of up to {s.sample_chars:,} characters")
        sample = sample_texts(sources, s.text_field, s.sample_chars)
        if s.tokenizer == "bpe":
            tok = train_tokenizer("bpe", sample, vocab_size=s.vocab_size)
        else:
            tok = train_tokenizer("char", "".join(sample), unk=True)
    if tok.eos_id is None:  # documents need a separator
        tok = tok.with_special_tokens([EOS_TEXT], eos=EOS_TEXT)
    return tok


def sample_texts(sources: list[Source], text_field: str, budget: int) -> Iterator[str]:
    """Up to `budget` characters: the first budget/64 characters of every k-th document, k from the sources' total
    size, so the sample spreads over all of them; the same sources always give the same sample."""
    total = sum(x.size * (4 if x.compression else 1) for x in sources) or budget  # compressed: rough; hf: unknown
    per_document = max(1, budget // 64)
    stride = max(1, math.ceil(total / budget))
    taken = 0
    for i, doc in enumerate(_documents(sources, text_field)):
        if i % stride == 0:
            text = doc.text[: min(per_document, budget - taken)]
            taken += len(text)
            yield text
            if taken >= budget:
                return


# ---------------------------------------------------------------------------------------------------------
# Documents to units


def _documents(sources: list[Source], text_field: str) -> Iterator[Document]:
    for source in sources:
        yield from iter_documents(source, text_field)


def is_val(index: int, fraction: float) -> bool:
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def pieces(sources: list[Source], s: PrepareSettings) -> Iterator[Piece]:
    """Every document with its split and end-of-text flag (a one-document lookahead decides the flag)."""
    split_pieces = _tail_split(sources[0]) if len(sources) == 1 and sources[0].kind == "text" else _whole_documents(
        sources, s)
    previous: Piece | None = None
    for doc, split in split_pieces(s.val_fraction):
        if previous is not None:
            previous.eot = not doc.continues or previous.split != split
            yield previous
        previous = Piece(doc.text, split, eot=True)
    if previous is not None:
        yield previous


def _whole_documents(sources: list[Source], s: PrepareSettings):
    """(document, split) for every document: the evenly spread fraction of whole documents."""
    def split(fraction: float) -> Iterator[tuple[Document, str]]:
        for i, doc in enumerate(_documents(sources, s.text_field)):
            yield doc, "val" if is_val(i, fraction) else "train"
    return split


def _tail_split(source: Source):
    """(piece, split) for a lone text file: its first `split_point` characters train, the rest validate; the piece
    that holds the cut is cut in two."""
    def split(fraction: float) -> Iterator[tuple[Document, str]]:
        cut = split_point(sum(len(doc.text) for doc in iter_documents(source)), fraction)
        start = 0
        for doc in iter_documents(source):
            end = start + len(doc.text)
            if start < cut < end:
                yield Document(doc.text[:cut - start], doc.continues), "train"
                yield Document(doc.text[cut - start:], True), "val"
            else:
                yield doc, "train" if end <= cut else "val"
            start = end
    return split


def units(sources: list[Source], s: PrepareSettings) -> Iterator[list[Piece]]:
    unit: list[Piece] = []
    chars = 0
    for piece in pieces(sources, s):
        unit.append(piece)
        chars += len(piece.text)
        if chars >= s.unit_chars:
            yield unit
            unit, chars = [], 0
    if unit:
        yield unit


# ---------------------------------------------------------------------------------------------------------
# Tokenizing and writing units


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_json: dict[str, Any]) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _WORKER_TOKENIZER = tokenizer_from_json(tokenizer_json)


def _encode_here(tokenizer: Tokenizer, tasks: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer
    return [encode_task(t) for t in tasks]


def encode_task(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The worker's job: the ids of `texts`, concatenated, and each text's length in ids."""
    ids = _WORKER_TOKENIZER.encode_many(texts)
    lengths = np.array([len(x) for x in ids], np.int64)
    return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), lengths


def _tasks(unit: list[Piece]) -> list[list[str]]:
    tasks, task, chars = [], [], 0
    for p in unit:
        task.append(p.text)
        chars += len(p.text)
        if chars >= TASK_CHARS:
            tasks.append(task)
            task, chars = [], 0
    return [*tasks, task] if task else tasks


def _write_units(out: Path, unit_list: Iterable[list[Piece]], tokenizer: Tokenizer, workers: int, *,
                 progress: bool, on_unit: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Tokenize and write every unit not already finished. While the workers encode unit u, this process reads
    unit u+1 and writes unit u-1, so the workers never wait for the reading."""
    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer.to_json(),))
    bar = tqdm(unit="B", unit_scale=True, disable=not progress, desc="prepare", mininterval=1.0)
    records: list[dict[str, Any]] = []

    def finish(u: int, unit: list[Piece], record, job) -> None:
        record = record or _write_unit(out, u, unit, tokenizer, job.get())
        records.append(record)
        bar.update(record["bytes"])
        bar.set_postfix(tokens=f"{sum(r['train']['tokens'] + r['val']['tokens'] for r in records):,}")
        if on_unit is not None:
            on_unit(u)

    try:
        pending = None
        for u, unit in enumerate(unit_list):
            record = _finished(out, u)
            job = None if record else _Encoding(pool, tokenizer, _tasks(unit))
            if pending is not None:
                finish(*pending)
            pending = (u, unit, record, job)
        if pending is not None:
            finish(*pending)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return records


class _Encoding:
    """A unit's encode tasks, running in the pool (or, without one, run when asked for)."""

    def __init__(self, pool, tokenizer: Tokenizer, tasks: list[list[str]]):
        self.tokenizer, self.tasks = tokenizer, tasks
        self.result = pool.map_async(encode_task, tasks) if pool else None

    def get(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.result.get() if self.result is not None else _encode_here(self.tokenizer, self.tasks)


def _write_unit(out: Path, u: int, unit: list[Piece], tokenizer: Tokenizer,
                results: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    ids = np.concatenate([r[0] for r in results]) if results else np.zeros(0, np.int32)
    lengths = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int64)
    dtype = token_dtype(tokenizer.vocab_size)
    ends = np.cumsum(lengths)
    record: dict[str, Any] = {"unit": u, "bytes": sum(len(p.text.encode("utf-8")) for p in unit)}
    for split in SPLITS:
        record[split] = _write_split(out, u, split, unit, ids, ends, lengths, dtype, tokenizer.eos_id)
    write_json(out / "units" / f"{u:05d}.json", record)
    return record


def _write_split(out: Path, u: int, split: str, unit: list[Piece], ids, ends, lengths, dtype, eos: int
                 ) -> dict[str, Any]:
    parts, starts, n, new_doc = [], [], 0, True
    for p, end, length in zip(unit, ends, lengths, strict=True):
        if p.split != split:
            continue
        if new_doc:
            starts.append(n)
        parts.append(ids[end - length:end].astype(dtype))
        if p.eot:
            parts.append(np.array([eos], dtype))
        n += int(length) + int(p.eot)
        new_doc = p.eot
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    info = {"tokens": len(tokens), "documents": len(starts),
            "utf8_bytes": sum(len(p.text.encode("utf-8")) for p in unit if p.split == split)}
    if len(tokens):
        info["sha256"] = _save(out / shard_name(split, u), tokens)
        _save(out / docs_name(split, u), np.asarray(starts, np.int64))
    return info


def _save(path: Path, array: np.ndarray) -> str:
    with atomic_file(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return _sha256(path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _finished(out: Path, u: int) -> dict[str, Any] | None:
    """Unit u's record if it and its shards are complete and unchanged (a resumed run skips the unit)."""
    try:
        record = json.loads((out / "units" / f"{u:05d}.json").read_text())
    except (OSError, ValueError):
        return None
    for split in SPLITS:
        if record[split]["tokens"] and _sha256_or_none(out / shard_name(split, u)) != record[split]["sha256"]:
            return None
    return record


def _sha256_or_none(path: Path) -> str | None:
    return _sha256(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------------
# The manifest


def _source_records(sources: list[Source]) -> list[dict[str, Any]]:
    return [{"path": str(x), "bytes": x.size, "sha256": _sha256(x.path) if x.path else None} for x in sources]


def _manifest(sources: list[dict[str, Any]], tokenizer: Tokenizer, records: list[dict[str, Any]],
              val_fraction: float, **settings: Any) -> dict[str, Any]:
    splits = {}
    for split in SPLITS:
        shards = [{"file": shard_name(split, r["unit"]), "documents_file": docs_name(split, r["unit"]),
                   **r[split]} for r in records if r[split]["tokens"]]
        splits[split] = {"tokens": sum(x["tokens"] for x in shards),
                         "documents": sum(x["documents"] for x in shards),
                         "utf8_bytes": sum(r[split]["utf8_bytes"] for r in records), "shards": shards}
    return {"format": FORMAT, "sources": sources,
            "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "fingerprint": tokenizer.fingerprint(), "eos_id": tokenizer.eos_id},
            "dtype": str(token_dtype(tokenizer.vocab_size)), "val_fraction": val_fraction, **settings,
            "splits": splits}
