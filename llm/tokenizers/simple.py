"""The two tokenizers that need no learned merges: UTF-8 bytes, and the characters of a text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from llm.tokenizers.base import EOS_TEXT, Tokenizer, check_special_tokens


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: ids 0..255 are the byte values, 256 is end-of-text (vocab 257).

    `decode` turns byte runs that are not valid UTF-8 (typical of sampled ids, which may stop mid
    character) into U+FFFD with errors='replace' instead of raising; the end-of-text id decodes to
    "<|endoftext|>". For ids produced by `encode`, decode(encode(s)) == s exactly.
    """

    kind = "byte"
    _chunkable_text = True  # cutting text between characters cuts its UTF-8 bytes at the same place
    EOS = 256
    _vocab_size = 257  # (a class default too, for subclasses whose __init__ does not call ours)

    def __init__(self, *, special_tokens: Sequence[str] = (), eos_token: str | None = None):
        """special_tokens: get ids 257, 258, ... in order (except "<|endoftext|>", which is 256)."""
        special_tokens = list(special_tokens)
        check_special_tokens(special_tokens)
        ids, next_id = {}, 257
        for t in special_tokens:
            if t == EOS_TEXT:
                ids[t] = self.EOS
            else:
                ids[t], next_id = next_id, next_id + 1
        self._vocab_size = next_id
        self._set_specials(ids, eos_token)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self.EOS if self._eos_special is None else self.token_id(self._eos_special)

    def _base_token_id(self, text: str) -> int | None:
        return self.EOS if text == EOS_TEXT else None

    def _with_specials(self, tokens: tuple[str, ...], eos_token: str | None) -> ByteTokenizer:
        return ByteTokenizer(special_tokens=tokens, eos_token=eos_token)

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
        return {"kind": self.kind, **self._specials_json()}


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet, ids in sorted (code point) order.

    Built by `train_tokenizer("char", text)`, the alphabet is `sorted(set(text))`, as in nanoGPT's
    shakespeare_char, and there are no special tokens (eos_id is None).

    Characters outside the alphabet: by default `encode` raises ValueError naming them, since this
    tokenizer covers only its training text's characters (the byte and BPE tokenizers cover every
    string). With `unk=True` they map instead to one extra id, `unk_id == len(chars)`, which decodes
    to U+FFFD (so decoded text keeps one character per id).

    Growing the vocabulary: `extend_chars(text)` gives new characters ids after every existing id (the
    alphabet's sorted ids stay as they are), `with_special_tokens` appends special tokens likewise. Ids
    from len(chars) (+1 with unk) up are these appended tokens, in the order they were added; the JSON
    records each extra character's id ("extra_chars": [[char, id], ...]) and the special tokens take the
    remaining appended ids in order.
    """

    kind = "char"
    _chunkable_text = True
    UNK_TEXT = "\ufffd"

    def __init__(
        self,
        chars: str | Sequence[str],
        *,
        unk: bool = False,
        extra_chars: Mapping[str, int] | Sequence[Sequence[Any]] = (),
        special_tokens: Sequence[str] = (),
        eos_token: str | None = None,
    ):
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

        base = len(self.chars) + (1 if unk else 0)
        extra = dict(extra_chars.items() if isinstance(extra_chars, Mapping) else (tuple(p) for p in extra_chars))
        special_tokens = list(special_tokens)
        check_special_tokens(special_tokens)
        size = base + len(extra) + len(special_tokens)
        for c, i in extra.items():
            if not isinstance(c, str) or len(c) != 1 or c in self.chars:
                raise ValueError(f"CharTokenizer: extra char {c!r} must be one character outside the alphabet")
            if not isinstance(i, int) or isinstance(i, bool) or not base <= i < size:
                raise ValueError(f"CharTokenizer: extra char {c!r} has id {i!r}, not in [{base}, {size})")
        if len(set(extra.values())) != len(extra):
            raise ValueError("CharTokenizer: extra chars must have distinct ids")
        self.extra_chars: dict[str, int] = dict(sorted(extra.items(), key=lambda kv: kv[1]))  # in id order
        free = iter(sorted(set(range(base, size)) - set(extra.values())))
        self._set_specials({t: next(free) for t in special_tokens}, eos_token)
        self._vocab_size = size
        # Appended ordinary characters, sorted by code point, and their ids.
        order = sorted(self.extra_chars)
        self._extra_codes = np.array([ord(c) for c in order], dtype=np.uint32)
        self._extra_ids = np.array([self.extra_chars[c] for c in order], dtype=np.int64)
        # id -> text (special ids are rendered by Tokenizer.decode before this table is used).
        self._table = [*self.chars, *([self.UNK_TEXT] if unk else []), *[""] * (size - base)]
        for c, i in self.extra_chars.items():
            self._table[i] = c
        for t, i in self._special_ids.items():
            self._table[i] = t

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int | None:
        return None if self._eos_special is None else self.token_id(self._eos_special)

    @property
    def unk_id(self) -> int | None:
        """The id of characters outside the alphabet when built with unk=True, else None."""
        return len(self.chars) if self.unk else None

    def extend_chars(self, chars: str | Iterable[str]) -> CharTokenizer:
        """This tokenizer plus the characters of `chars` it lacks, as new ids appended in code-point order
        (existing ids unchanged). Returns `self` when there is nothing new."""
        new = sorted({c for c in chars if c not in self.chars and c not in self.extra_chars})
        if any(not isinstance(c, str) or len(c) != 1 for c in new):
            raise ValueError("extend_chars expects single characters")
        if not new:
            return self
        size = self.vocab_size
        extra = {**self.extra_chars, **{c: size + k for k, c in enumerate(new)}}
        # Specials keep their ids: pass them in id order with the new chars' ids after all of them.
        return CharTokenizer(self.chars, unk=self.unk, extra_chars=extra, special_tokens=self.special_tokens,
                             eos_token=self._eos_special)

    def missing_chars(self, text: str) -> str:
        """The distinct characters of `text` (outside special markers) this tokenizer has no id for, sorted."""
        if self._special_re is not None:
            text = self._special_re.sub("", text)
        return "".join(sorted(set(text) - set(self.chars) - set(self.extra_chars)))

    def _with_specials(self, tokens: tuple[str, ...], eos_token: str | None) -> CharTokenizer:
        return CharTokenizer(self.chars, unk=self.unk, extra_chars=self.extra_chars, special_tokens=tokens,
                             eos_token=eos_token)

    def _encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes).astype(np.int64)
        known = self._codes[np.minimum(ids, len(self._codes) - 1)] == codes
        if not known.all() and len(self._extra_codes):
            j = np.minimum(np.searchsorted(self._extra_codes, codes), len(self._extra_codes) - 1)
            hit = ~known & (self._extra_codes[j] == codes)
            ids = np.where(hit, self._extra_ids[j], ids)
            known |= hit
        if not known.all():
            if not self.unk:
                unknown = sorted(set(chr(c) for c in codes[~known].tolist()))
                shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                raise ValueError(
                    f"{len(unknown)} character(s) not in this char tokenizer's vocabulary: {shown}. "
                    "It covers only the characters of its training text; use the byte or BPE tokenizer "
                    "for arbitrary text, a char tokenizer built with unk=True, or add them with extend_chars"
                )
            ids = np.where(known, ids, self.unk_id)
        return ids

    def _decode(self, ids: np.ndarray) -> str:
        table = self._table
        return "".join([table[i] for i in ids.tolist()])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "chars": self.chars, "unk": self.unk}
        if self.extra_chars:
            out["extra_chars"] = [[c, i] for c, i in self.extra_chars.items()]
        return {**out, **self._specials_json()}
