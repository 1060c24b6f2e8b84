"""The tokenizer interface: text <-> int32 ids, special tokens, JSON form and fingerprint (see the package
docstring for the kinds)."""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llm.files import atomic_file

EOS_TEXT = "<|endoftext|>"


class Tokenizer(abc.ABC):
    """Maps text to int32 ids in [0, vocab_size) and back.

    Subclasses implement `_encode`, `_decode`, `vocab_size`, `eos_id` and `to_json`; the public
    `encode`/`decode` add the dtype and range checks once for all of them.
    """

    kind: ClassVar[str]
    # Whether the base vocabulary's encoding is chunkable (see `chunkable`).
    _chunkable_text: ClassVar[bool] = False
    # Special tokens in the order added, their ids, and the one that is eos_id (None: the kind's default).
    special_tokens: tuple[str, ...] = ()
    _special_ids: Mapping[str, int] = {}
    _eos_special: str | None = None
    _special_re: re.Pattern[str] | None = None
    _special_text: Mapping[int, str] = {}

    @property
    def chunkable(self) -> bool:
        """True when encode(a + b) == concat(encode(a), encode(b)) for all strings a, b. Then long texts can be
        tokenised in pieces (llm.data.corpora.batches does); for BPE the merges can cross any cut, and special markers
        can be cut in two, so it is False for those."""
        return self._chunkable_text and not self.special_tokens

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

    # ---- special tokens ---------------------------------------------------------------------------------

    @property
    def special_ids(self) -> dict[str, int]:
        """{special token text: id} of the tokens added by `with_special_tokens`, in the order added."""
        return dict(self._special_ids)

    def token_id(self, text: str) -> int:
        """The id of special token `text`: one added by `with_special_tokens`, or a special token the base
        vocabulary has (the byte tokenizer's "<|endoftext|>", a BPE file's added tokens). ValueError if none."""
        if text in self._special_ids:
            return self._special_ids[text]
        found = self._base_token_id(text)
        if found is None:
            known = ", ".join(repr(t) for t in self.special_tokens) or "none"
            raise ValueError(f"{text!r} is not a special token of this {self.kind} tokenizer (special tokens: "
                             f"{known}); add it with with_special_tokens")
        return found

    def with_special_tokens(self, tokens: Iterable[str], *, eos: str | None = None) -> Tokenizer:
        """This tokenizer plus special `tokens` (new ids appended in order; existing ones are a no-op).

        eos: a special token (new or existing) to be eos_id from now on; None keeps the current eos_id.
        Returns `self` when nothing changes.
        """
        if isinstance(tokens, str):
            raise TypeError("with_special_tokens expects a list of token strings, not one string")
        new = [t for t in dict.fromkeys(tokens) if t not in self._special_ids]
        check_special_tokens(new)
        all_tokens = self.special_tokens + tuple(new)
        if eos is not None and eos not in all_tokens and self._base_token_id(eos) is None:
            raise ValueError(f"eos={eos!r} is neither among the special tokens nor a special token of the base "
                             "vocabulary; add it too")
        if not new and (eos is None or eos == self._current_eos_token()):
            return self
        return self._with_specials(all_tokens, self._current_eos_token() if eos is None else eos)

    def _base_token_id(self, text: str) -> int | None:
        """The id of `text` if the base vocabulary has it as one special token, else None."""
        return None

    def _current_eos_token(self) -> str | None:
        return self._eos_special

    @abc.abstractmethod
    def _with_specials(self, tokens: tuple[str, ...], eos_token: str | None) -> Tokenizer:
        """A copy of this tokenizer with special tokens `tokens` (a superset, same order) and eos token."""

    def _set_specials(self, ids: Mapping[str, int], eos_token: str | None) -> None:
        """Record special tokens {text: id} (in the order added) and the eos special; called by __init__."""
        self.special_tokens = tuple(ids)
        self._special_ids = dict(ids)
        self._special_text = {i: t for t, i in ids.items()}
        self._eos_special = eos_token
        if eos_token is not None and eos_token not in self._special_ids and self._base_token_id(eos_token) is None:
            raise ValueError(f"eos_token {eos_token!r} is not a special token of this tokenizer")
        self._special_re = None
        if ids:  # the longest marker first: at each position re takes the first alternative that matches
            self._special_re = re.compile("|".join(re.escape(t) for t in sorted(ids, key=lambda t: (-len(t), t))))

    def _specials_json(self) -> dict[str, Any]:
        """The JSON fields of special tokens and eos, present only when set (so older files keep their bytes)."""
        out: dict[str, Any] = {}
        if self.special_tokens:
            out["special_tokens"] = list(self.special_tokens)
        if self._eos_special is not None:
            out["eos_token"] = self._eos_special
        return out

    # ---- encode / decode ------------------------------------------------------------------------------

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """`[encode(t) for t in texts]`, which a tokenizer may compute faster in one call."""
        return [self.encode(t) for t in texts]

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` as a 1-D int32 array. No special tokens are added, but special-token markers in
        the text (see `with_special_tokens`) become their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if self._special_re is None:
            return np.asarray(self._encode(text), dtype=np.int32)
        pieces, start = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > start:
                pieces.append(np.asarray(self._encode(text[start : m.start()]), dtype=np.int32))
            pieces.append(np.array([self._special_ids[m.group()]], dtype=np.int32))
            start = m.end()
        if start < len(text) or not pieces:
            pieces.append(np.asarray(self._encode(text[start:]), dtype=np.int32))
        return np.concatenate(pieces)

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
        ids = ids.astype(np.int64)
        if not self._special_text:
            return self._decode(ids)
        # Special ids render as their text; the runs between them are decoded by the base vocabulary.
        parts, start = [], 0
        for cut in np.flatnonzero(np.isin(ids, list(self._special_text))).tolist():
            if cut > start:
                parts.append(self._decode(ids[start:cut]))
            parts.append(self._special_text[int(ids[cut])])
            start = cut + 1
        if start < len(ids):
            parts.append(self._decode(ids[start:]))
        return "".join(parts)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal fingerprints mean identical tokenization."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_json()` to `path` (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            json.dump(self.to_json(), f, ensure_ascii=False, indent=1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable-looking objects compared by content

    def __repr__(self) -> str:
        specials = f", special_tokens={list(self.special_tokens)}" if self.special_tokens else ""
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id}{specials})"


def check_special_tokens(tokens: Sequence[str]) -> None:
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise ValueError(f"special tokens must be non-empty strings, got {t!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"special tokens must be distinct, got {list(tokens)}")
