"""Corpora: a spec string in, verified text out.

    corpus = load_corpus("tinyshakespeare")
    train, val = split_text(corpus.text, 0.1)

Specs understood by `load_corpus`:

  builtin:python_docs   the default: the Python standard library's `pydoc_data.topics` (the text behind
                        `help("topics")`, ~465 KB), which ships with every CPython - no files, no network.
                        Its text, and so its sha256, depends on the Python version (see provenance).
  tinyshakespeare       named public-domain texts, looked up as files in a data directory and checked
  alice                 against a pinned sha256; tinyshakespeare is downloaded into a cache if it is
  pride_and_prejudice   nowhere to be found (see `load_corpus` for where it looks).
  anything else         a path to a UTF-8 text file (one over MAX_WHOLE_FILE_BYTES is not read whole: training
                        streams it through `llm prepare`'s code, see llm/data/build.py).

Every failure is a `DataError` whose one-line message names the file and says what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import platform
import urllib.request
from pathlib import Path

from llm.errors import DataError
from llm.files import write_bytes

DEFAULT_CORPUS = "builtin:python_docs"
# Between pydoc topics: a line no topic contains, so documents stay visibly apart.
TOPIC_SEPARATOR = "\n\n" + "#" * 72 + "\n\n"

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A text and where it came from. sha256 is of the text's UTF-8 bytes."""

    name: str
    text: str = dataclasses.field(repr=False)
    sha256: str
    provenance: str

    @classmethod
    def from_text(cls, name: str, text: str, provenance: str) -> Corpus:
        return cls(name, text, sha256_text(text), provenance)


@dataclasses.dataclass(frozen=True)
class KnownCorpus:
    """A named file: where it is published (if it may be downloaded) and its pinned checksum."""

    filename: str
    sha256: str
    url: str | None = None


# Checksums as recorded in the shared data folder's SOURCES.md.
KNOWN_CORPORA: dict[str, KnownCorpus] = {
    "tinyshakespeare": KnownCorpus(
        "tinyshakespeare.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    ),
    "alice": KnownCorpus("alice.txt", "70f0b8fb6039ea9255ce17f134272677239fa5e0f5b1c3636f437f723919b3af"),
    "pride_and_prejudice": KnownCorpus(
        "pride_and_prejudice.txt", "cb7c93d88660aa9ed79255080861376f3d62249870fcee4c040d244c9fc67469"
    ),
}
BUILTIN_CORPORA = ("builtin:python_docs",)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_data_dirs() -> list[Path]:
    """Where named corpora are looked for: $LLM_DATA_DIR, then ../shared/data from the current
    directory and from the repository root."""
    dirs = [Path(os.environ["LLM_DATA_DIR"])] if os.environ.get("LLM_DATA_DIR") else []
    dirs += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]
    return list(dict.fromkeys(d.resolve() for d in dirs))  # drop duplicates, keep order


def cache_dir() -> Path:
    """Downloads and token caches live here: $LLM_CACHE_DIR, else ~/.cache/llm."""
    return Path(os.environ.get("LLM_CACHE_DIR") or Path.home() / ".cache" / "llm").expanduser()


def load_corpus(spec: str = DEFAULT_CORPUS, *, data_dir: str | os.PathLike | None = None) -> Corpus:
    """Load the corpus named by `spec` (see the module docstring).

    A named corpus is read from the first of these holding its file: `data_dir` if given (then only it),
    else `default_data_dirs()`; then from the download cache (`cache_dir()`); then, if it has a URL,
    downloaded into that cache. A file whose sha256 differs from the pinned one is an error, not skipped.
    """
    if not spec or not spec.strip():
        known = ", ".join([*BUILTIN_CORPORA, *KNOWN_CORPORA])
        raise DataError(f"the corpus spec is empty; give a text file's path or one of: {known}")
    if spec.startswith("builtin:"):
        if spec != "builtin:python_docs":
            raise DataError(f"unknown builtin corpus {spec!r}; available: {', '.join(BUILTIN_CORPORA)}")
        return _python_docs()
    if spec in KNOWN_CORPORA:
        return _load_known(spec, data_dir)
    return load_text_file(spec)


def _python_docs() -> Corpus:
    from pydoc_data.topics import topics

    text = TOPIC_SEPARATOR.join(topics[key] for key in sorted(topics))
    provenance = f"pydoc_data.topics of Python {platform.python_version()} ({len(topics)} topics by key)"
    return Corpus.from_text("python_docs", text, provenance)


def _load_known(name: str, data_dir: str | os.PathLike | None) -> Corpus:
    known = KNOWN_CORPORA[name]
    dirs = [Path(data_dir)] if data_dir is not None else default_data_dirs()
    for d in [*dirs, cache_dir()]:
        path = d / known.filename
        if path.is_file():
            text = _read_utf8(path)
            _verify(name, known, sha256_text(text), path)
            return Corpus.from_text(name, text, f"{path} (sha256 verified)")
    where = ", ".join(str(d) for d in dirs)
    if known.url is None:
        raise DataError(
            f"{name}: {known.filename} not found in {where}; set LLM_DATA_DIR (or data_dir) to its folder "
            f"or pass the file's path as the corpus spec"
        )
    path = _download(name, known, known.url)
    return Corpus.from_text(name, _read_utf8(path), f"{known.url} (downloaded to {path}, sha256 verified)")


def _verify(name: str, known: KnownCorpus, digest: str, where: Path | str) -> None:
    if digest != known.sha256:
        raise DataError(
            f"{name}: {where} has sha256 {digest}, expected {known.sha256}; use the published file, or pass "
            f"a file's path as the corpus spec to use it unverified"
        )


def _download(name: str, known: KnownCorpus, url: str) -> Path:
    dest = cache_dir() / known.filename
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
        raise DataError(
            f"{name}: not found locally and download from {url} failed ({e}); put {known.filename} in "
            f"a folder named by LLM_DATA_DIR, or pass the file's path as the corpus spec"
        ) from e
    _verify(name, known, hashlib.sha256(data).hexdigest(), url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(dest, data)  # atomic: a concurrent reader sees no file or the whole file
    return dest


# A text file up to this size is read and tokenized in memory (several times its size); a larger one is streamed
# through `llm prepare`'s code (see `large_text_file`).
MAX_WHOLE_FILE_BYTES = 128 << 20


def large_text_file(spec: str) -> Path | None:
    """The file `spec` names if it is a text file too large to read whole (over MAX_WHOLE_FILE_BYTES), else None."""
    if spec.startswith("builtin:") or spec in KNOWN_CORPORA:
        return None
    path = Path(spec).expanduser()
    return path if path.is_file() and path.stat().st_size > MAX_WHOLE_FILE_BYTES else None


def load_text_file(path: str | os.PathLike) -> Corpus:
    """A corpus from a UTF-8 text file; name = the file's stem."""
    path = Path(path).expanduser()
    if not path.exists():
        known = ", ".join([*BUILTIN_CORPORA, *KNOWN_CORPORA])
        raise DataError(f"{path}: no such file (a corpus spec is a file path or one of: {known})")
    if path.is_file() and path.stat().st_size > MAX_WHOLE_FILE_BYTES:
        raise DataError(f"{path}: {path.stat().st_size >> 20} MB is too large to load whole; prepare it with `llm "
                        f"prepare {path} --out DIR` and train on --config.data.corpus=DIR")
    text = _read_utf8(path)
    return Corpus.from_text(path.stem, text, f"file {path.resolve()}")


def _read_utf8(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a UTF-8 text file")
    try:
        data = path.read_bytes()  # bytes, not text mode: no newline translation, so sha256s match the file
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from e
    if not data:
        raise DataError(f"{path}: file is empty; a corpus needs text to train on")
    if b"\x00" in data:
        raise DataError(f"{path}: looks binary (contains NUL bytes), expected a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); if it is text in another "
            f"encoding, convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e
    if not text.strip():
        raise DataError(f"{path}: holds only whitespace ({len(text)} characters); a corpus needs text to train on")
    return text


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """(train, val): the first int(n * (1 - val_fraction)) characters, and the rest.

    nanoGPT's rule (`data[:int(n*0.9)]` for val_fraction 0.1): tiny Shakespeare gives 1,003,854 train and
    111,540 val characters.
    """
    cut = split_point(len(text), val_fraction)
    return text[:cut], text[cut:]


def split_point(n_chars: int, val_fraction: float) -> int:
    """How many of a text's `n_chars` characters train (nanoGPT's tail rule); the rest validate."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return int(n_chars * (1.0 - val_fraction))
