"""Tokenizers: text <-> int32 token ids, behind one small interface.

Three kinds, all saved as one JSON file (never pickle) and reloaded with `load_tokenizer`:

  byte  UTF-8 bytes as ids 0..255 plus an end-of-text id 256 (vocab 257). Needs no training and
        covers every string.
  char  one id per distinct character of the training text, ids in `sorted(set(text))` order, so on
        tiny Shakespeare it is exactly nanoGPT's 65-character vocabulary. Characters outside it are
        an error unless the tokenizer was built with `unk=True` (see `CharTokenizer`).
  bpe   byte-level BPE trained with Hugging Face `tokenizers` (GPT-2 style pre-tokenisation, all 256
        bytes in the initial alphabet, `<|endoftext|>` as end-of-text), so every string round-trips.
        `from_hf_file` wraps an existing HF `tokenizer.json` (e.g. from a checkpoint) the same way.

    tok = train_tokenizer("char", text)
    ids = tok.encode("To be")            # np.ndarray, int32
    assert tok.decode(ids) == "To be"
    tok.save("runs/x/tokenizer.json"); tok = load_tokenizer("runs/x/tokenizer.json")

`encode` never adds special tokens; callers append `eos_id` where a document ends. `decode` accepts
any ids in [0, vocab_size) - including sampled ones - and raises ValueError for ids outside it.
Python strings holding lone surrogates (not valid Unicode text) cannot be encoded by any kind.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

KINDS = ("byte", "char", "bpe")
EOS_TEXT = "<|endoftext|>"
DEFAULT_BPE_VOCAB_SIZE = 4096

# Special-token spellings tried, in order, when an HF tokenizer.json does not say which token ends text.
_HF_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


class Tokenizer(abc.ABC):
    """Maps text to int32 ids in [0, vocab_size) and back.

    Subclasses implement `_encode`, `_decode`, `vocab_size`, `eos_id` and `to_json`; the public
    `encode`/`decode` add the dtype and range checks once for all of them.
    """

    kind: ClassVar[str]
    # True when encode(a + b) == concat(encode(a), encode(b)) for all strings a, b. Then long texts can be
    # tokenised in pieces (llm.data.batches does); for BPE the merges can cross any cut, so it is False.
    chunkable: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids: every id this tokenizer produces or accepts lies in [0, vocab_size)."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-text id, or None when this tokenizer has none."""

    @abc.abstractmethod
    def _encode(self, text: str) -> np.ndarray: ...

    @abc.abstractmethod
    def _decode(self, ids: np.ndarray) -> str: ...

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict with a "kind" field, from which `load_tokenizer` rebuilds this."""

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as a 1-D int32 array (no special tokens added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return np.asarray(self._encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of `ids` (a 1-D sequence of ints in [0, vocab_size))."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"decode expects integer ids, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"ids out of range for a {self.kind} tokenizer with vocab_size {self.vocab_size}: "
                f"{sorted(set(bad.tolist()))[:10]}"
            )
        return self._decode(ids.astype(np.int64))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal fingerprints mean identical tokenization."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_json()` to `path` (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, ensure_ascii=False, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking objects compared by content

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255 are the byte values, 256 is end-of-text (vocab 257).

    `decode` turns byte runs that are not valid UTF-8 (typical of sampled ids, which may stop mid
    character) into U+FFFD with errors='replace' instead of raising; the end-of-text id decodes to
    "<|endoftext|>". For ids produced by `encode`, decode(encode(s)) == s exactly.
    """

    kind = "byte"
    chunkable = True  # cutting text between characters cuts its UTF-8 bytes at the same place
    EOS = 256

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eos_id(self) -> int:
        return self.EOS

    def _encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def _decode(self, ids: np.ndarray) -> str:
        # Split at end-of-text ids so that each run of bytes is decoded on its own.
        parts, start = [], 0
        for cut in [*np.flatnonzero(ids == self.EOS).tolist(), len(ids)]:
            parts.append(ids[start:cut].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
            start = cut + 1
        return EOS_TEXT.join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet, ids in sorted (code point) order.

    Built by `train_tokenizer("char", text)`, the alphabet is `sorted(set(text))`, as in nanoGPT's
    shakespeare_char, and there are no special tokens (eos_id is None).

    Characters outside the alphabet: by default `encode` raises ValueError naming them, since this
    tokenizer covers only its training text's characters (the byte and BPE tokenizers cover every
    string). With `unk=True` they map instead to one extra id, `unk_id == len(chars)`, which decodes
    to U+FFFD (so decoded text keeps one character per id).
    """

    kind = "char"
    chunkable = True
    UNK_TEXT = "\ufffd"

    def __init__(self, chars: str | Sequence[str], *, unk: bool = False):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: chars must be single characters")
        if chars != sorted(set(chars)):
            raise ValueError("CharTokenizer: chars must be distinct and in sorted order")
        if not chars:
            raise ValueError("CharTokenizer: the alphabet is empty (was the training text empty?)")
        self.chars = "".join(chars)
        self.unk = unk
        # Sorted code points: searchsorted finds a character's id without a Python-level loop.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (1 if self.unk else 0)

    @property
    def eos_id(self) -> None:
        return None

    @property
    def unk_id(self) -> int | None:
        """The id of characters outside the alphabet when built with unk=True, else None."""
        return len(self.chars) if self.unk else None

    def _encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        known = self._codes[np.minimum(ids, len(self._codes) - 1)] == codes
        if not known.all():
            if not self.unk:
                unknown = sorted(set(chr(c) for c in codes[~known].tolist()))
                shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                raise ValueError(
                    f"{len(unknown)} character(s) not in this char tokenizer's vocabulary: {shown}. "
                    "It covers only the characters of its training text; use the byte or BPE tokenizer "
                    "for arbitrary text, or a char tokenizer built with unk=True"
                )
            ids = np.where(known, ids, self.unk_id)
        return ids

    def _decode(self, ids: np.ndarray) -> str:
        table = self.chars + (self.UNK_TEXT if self.unk else "")
        return "".join([table[i] for i in ids.tolist()])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars, "unk": self.unk}


class BPETokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`, with our interface.

    Made by `train_tokenizer("bpe", text, vocab_size=...)` (byte-level BPE: decode(encode(s)) == s
    for every string) or by `from_hf_file` (whatever that file defines). The HF tokenizer.json is
    embedded, as a JSON object, in our JSON under "hf_tokenizer", so one file holds everything.

    `encode` uses add_special_tokens=False (no BOS/EOS templates); special-token text such as
    "<|endoftext|>" in the input does map to its id, and `decode` keeps special tokens, so it
    round-trips. eos_id is the id of `eos_token` (None when that is None).
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any, *, eos_token: str | None = EOS_TEXT):
        self.hf = hf_tokenizer
        self.eos_token = eos_token
        self._eos_id = None
        if eos_token is not None:
            self._eos_id = hf_tokenizer.token_to_id(eos_token)
            if self._eos_id is None:
                raise ValueError(f"eos_token {eos_token!r} is not in the HF tokenizer's vocabulary")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        return self.hf.decode(ids.tolist(), skip_special_tokens=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "eos_token": self.eos_token, "hf_tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> BPETokenizer:
        """Byte-level BPE with at most `vocab_size` ids (fewer if the text runs out of merges)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size must be at least 257 (256 bytes + 1 special), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TEXT],
            # All 256 bytes, not only those seen in training: every string stays encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator([text], trainer=trainer)
        return cls(hf, eos_token=EOS_TEXT)


def from_hf_file(path: str | os.PathLike, *, eos_token: str | None = None) -> BPETokenizer:
    """Wrap an existing Hugging Face tokenizer.json (e.g. from a checkpoint) as a BPETokenizer.

    eos_token: the end-of-text token's text; by default the first special token among common
    spellings (<|endoftext|>, </s>, <eos>, ...) that the file defines, else None.
    """
    from tokenizers import Tokenizer as HFTokenizer

    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # HF raises a bare Exception for missing or malformed files
        raise ValueError(f"{path}: cannot load as a Hugging Face tokenizer.json ({e})") from e
    if eos_token is None:
        specials = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        eos_token = next((t for t in _HF_EOS_CANDIDATES if t in specials), None)
    return BPETokenizer(hf, eos_token=eos_token)


def tokenizer_from_json(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_json()` output."""
    kind = data.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(data["chars"], unk=bool(data.get("unk", False)))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_str(json.dumps(data["hf_tokenizer"]))
        return BPETokenizer(hf, eos_token=data.get("eos_token"))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved with `Tokenizer.save`.

    A Hugging Face tokenizer.json (no "kind" field, but a "model") is accepted too, via `from_hf_file`.
    Every failure (missing, unreadable, damaged or foreign file) is a `llm.data.DataError` (a ValueError)
    whose one-line message names the file.
    """
    from llm.data.corpus import DataError  # lazy: llm.data imports this module

    what = "it should be the tokenizer.json `llm train` wrote (Tokenizer.save) or a Hugging Face tokenizer.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        raise DataError(f"{path}: cannot read tokenizer JSON ({reason}); {what}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: tokenizer JSON must be an object, got {type(data).__name__}; {what}")
    if "kind" not in data and "model" in data:
        try:
            return from_hf_file(path)
        except ValueError as e:  # its message names the file already
            raise DataError(f"{_one_line(e)}; {what}") from e
    try:
        return tokenizer_from_json(data)
    except Exception as e:  # KeyError, TypeError, ValueError, and HF's bare Exception for a bad "hf_tokenizer"
        reason = f"missing field {e}" if isinstance(e, KeyError) else _one_line(e)
        raise DataError(f"{path}: not a usable tokenizer ({reason}); {what}") from e


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def train_tokenizer(kind: str, text: str, *, vocab_size: int | None = None, unk: bool = False) -> Tokenizer:
    """Build a tokenizer of `kind` ("byte", "char" or "bpe") for `text`.

    vocab_size: only BPE takes a target (default 4096); for byte and char it is determined (257 and the
    number of distinct characters), and a given value must match it. unk: char only, see CharTokenizer.
    """
    if unk and kind != "char":
        raise ValueError(f"unk=True applies only to the char tokenizer ({kind} covers every string)")
    if kind == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif kind == "char":
        tok = CharTokenizer(sorted(set(text)), unk=unk)
    elif kind == "bpe":
        return BPETokenizer.train(text, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise ValueError(
            f"a {kind} tokenizer for this text has vocab_size {tok.vocab_size}, "
            f"not the requested {vocab_size}"
        )
    return tok
