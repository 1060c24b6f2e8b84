"""Where `llm prepare` reads documents from, streamed so that no source is ever held whole.

    sources = expand_sources(["books/*.txt", "web.jsonl.gz", "shards/"])   # -> [Source], sorted, checked
    for text in iter_documents(source, text_field="text"): ...

A source is a file; directories and glob patterns expand to the files under them (sorted, hidden files skipped).
By suffix:

  .jsonl / .json (+ .gz / .zst)   one document per line, its `text_field` string
  .parquet                        one document per row of its `text_field` column, read row group by row group
  .arrow                          Arrow IPC streams, as in a Hugging Face `datasets` folder (save_to_disk):
                                  a directory holding state.json is read as its listed .arrow files
  hf:NAME[:CONFIG]                a Hub dataset's train split, streamed through `datasets` (needs a network
                                  and `pip install datasets`)
  anything else (+ .gz / .zst)    UTF-8 text, one document per file, yielded in pieces of about PIECE_CHARS (64 K)
                                  cut after a newline (or inside a line longer than that), so a large file never
                                  sits in memory whole

Pieces of one text file are parts of one document: `Document.continues` says which ones carry on the previous.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

from llm.data.jsonl import json_lines
from llm.errors import DataError

PIECE_CHARS = 1 << 16  # the tokenizer encodes pieces of this size faster than longer ones
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclasses.dataclass(frozen=True)
class Source:
    path: Path | None  # None for hf: sources
    kind: str  # "text", "jsonl", "parquet", "arrow" or "hf"
    compression: str | None  # None, "gz" or "zst"
    size: int  # bytes on disk (0 for hf:)
    name: str = ""  # the hf: spec

    def __str__(self) -> str:
        return self.name or str(self.path)


@dataclasses.dataclass(frozen=True)
class Document:
    """A document, or a piece of one: `continues` is True for every piece of a text file but its first."""

    text: str
    continues: bool = False


def expand_sources(specs: list[str]) -> list[Source]:
    """The files that `specs` (files, directories, glob patterns) name, in a fixed order; DataError if any names
    nothing."""
    if not specs:
        raise DataError("no sources given; name text, JSONL or Parquet files, directories or glob patterns")
    files: list[Path | Source] = []
    for spec in specs:
        if spec.startswith("hf:"):
            files.append(Source(None, "hf", None, 0, spec))
            continue
        found = _expand(spec)
        if not found:
            raise DataError(f"{spec}: no such file, directory or matching files; check the path")
        files.extend(found)
    seen, out = set(), []
    for f in files:
        key = f.name if isinstance(f, Source) else f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f if isinstance(f, Source) else _source(f))
    return out


def _expand(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir() and (p / "state.json").is_file():  # a `datasets` save_to_disk folder
        return _arrow_files(p)
    if p.is_dir():
        return sorted(f for f in p.rglob("*")
                      if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts))
    return sorted(Path(f) for f in glob.glob(os.path.expanduser(spec), recursive=True) if Path(f).is_file())


def _arrow_files(folder: Path) -> list[Path]:
    try:
        files = [folder / f["filename"] for f in json.loads((folder / "state.json").read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}/state.json: not a `datasets` folder's state ({e}); name its .arrow files") from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: state.json lists missing files: {', '.join(missing)}")
    return files


def _source(path: Path) -> Source:
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop()[1:] if suffixes and suffixes[-1] in (".gz", ".zst") else None
    last = suffixes[-1] if suffixes else ""
    kind = ("jsonl" if last in JSON_SUFFIXES else "parquet" if last == ".parquet" else "arrow" if last == ".arrow"
            else "text")
    if kind in ("parquet", "arrow") and compression:
        raise DataError(f"{path}: a compressed Parquet file; Parquet compresses its own columns, decompress it")
    return Source(path, kind, compression, path.stat().st_size)


def iter_documents(source: Source, text_field: str = "text") -> Iterator[Document]:
    """The documents of one source, in file order."""
    if source.kind in ("parquet", "arrow", "hf"):
        reader = {"parquet": _parquet_documents, "arrow": _arrow_documents, "hf": _hub_documents}[source.kind]
        yield from reader(source, text_field)
        return
    with _open_text(source) as f:
        if source.kind == "jsonl":
            yield from _jsonl_documents(source.path, f, text_field)
        else:
            yield from _text_pieces(source.path, f)


def _open_text(source: Source) -> io.TextIOBase:
    raw = open(source.path, "rb")
    if source.compression == "gz":
        raw = gzip.GzipFile(fileobj=raw)
    elif source.compression == "zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")


def _text_pieces(path: Path, f: io.TextIOBase) -> Iterator[Document]:
    buffer, first = [], True
    size = 0
    try:
        # readline's limit: a file without newlines (minified text) is still read a piece at a time.
        for line in iter(lambda: f.readline(PIECE_CHARS), ""):
            buffer.append(line)
            size += len(line)
            if size >= PIECE_CHARS:
                yield Document("".join(buffer), continues=not first)
                buffer, size, first = [], 0, False
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block); convert it to UTF-8"
                        ) from None
    if buffer or first:
        yield Document("".join(buffer), continues=not first)


def _jsonl_documents(path: Path, f: io.TextIOBase, field: str) -> Iterator[Document]:
    for number, record in json_lines(path, f):
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{number}: no string field {field!r}; name the text field with --text_field")
        yield Document(text)


def _column(path, names: list[str], field: str) -> None:
    if field not in names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(names)}); name the text column with "
                        "--text_field")


def _parquet_documents(source: Source, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    path = source.path
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for every kind of bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    _column(path, parquet.schema_arrow.names, field)
    for group in range(parquet.num_row_groups):
        for text in parquet.read_row_group(group, columns=[field]).column(0).to_pylist():
            if text is not None:
                yield Document(text)


def _arrow_documents(source: Source, field: str) -> Iterator[Document]:
    import pyarrow as pa

    with pa.memory_map(str(source.path)) as f:
        try:
            reader = pa.ipc.open_stream(f)
        except pa.ArrowInvalid as e:
            raise DataError(f"{source.path}: not an Arrow IPC stream ({e})") from None
        _column(source.path, reader.schema.names, field)
        for batch in reader:
            for text in batch.column(field).to_pylist():
                if text is not None:
                    yield Document(text)


def _hub_documents(source: Source, field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: reading Hub datasets needs `pip install datasets`") from None
    name, _, config = source.name[len("hf:"):].partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split="train", streaming=True)
    except Exception as e:  # no network, no such dataset: datasets raises many types
        raise DataError(f"{source}: cannot open it through `datasets` ({e})") from None
    for row in rows:
        if field not in row:
            raise DataError(f"{source}: no field {field!r} (fields: {', '.join(row)}); name it with --text_field")
        if row[field] is not None:
            yield Document(row[field])
