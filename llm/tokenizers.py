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

Special tokens (chat markers such as "<|user|>", "<|end|>") and vocabulary extension, for every kind:

    tok = tok.with_special_tokens(["<|user|>", "<|assistant|>", "<|end|>"], eos="<|end|>")
    tok.encode("<|user|>hi")             # [tok.token_id("<|user|>"), *tok.encode("hi")]
    tok = tok.extend_chars("éü")         # char tokenizers only: new ordinary characters

Both return a new tokenizer whose existing ids are unchanged and whose new ids are appended (vocab_size
grows by the number of new tokens; a model's embedding grows at its end to match). A special token is one id,
which `encode` produces only where the text contains that exact marker (text is split on markers first,
longest marker first, and the pieces between are encoded as before) and which `decode` renders as its text.
Adding a token the tokenizer already has is a no-op; a marker that is already one token of the base
vocabulary keeps that id (the byte tokenizer's "<|endoftext|>" = 256, a BPE file's added tokens). The JSON
lists them under "special_tokens" in the order they were added (absent in files written before, which load
as having none, with unchanged fingerprints), char extensions under "extra_chars" as [char, id] pairs, so
any order of extensions keeps its ids; the fingerprint covers both. eos_id: unchanged (byte 256, char None,
BPE its eos_token) unless `eos=` names a special token, which then becomes eos_id (saved as "eos_token"),
e.g. "<|end|>" so that sampling stops at the end of an assistant turn. A tokenizer with special tokens is
not `chunkable` (a cut could split a marker).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
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
        tokenised in pieces (llm.data.batches does); for BPE the merges can cross any cut, and special markers
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
        _check_special_tokens(new)
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
        specials = f", special_tokens={list(self.special_tokens)}" if self.special_tokens else ""
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id}{specials})"


def _check_special_tokens(tokens: Sequence[str]) -> None:
    for t in tokens:
        if not isinstance(t, str) or not t:
            raise ValueError(f"special tokens must be non-empty strings, got {t!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"special tokens must be distinct, got {list(tokens)}")


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
        _check_special_tokens(special_tokens)
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
        _check_special_tokens(special_tokens)
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


class BPETokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`, with our interface.

    Made by `train_tokenizer("bpe", text, vocab_size=...)` (byte-level BPE: decode(encode(s)) == s
    for every string) or by `from_hf_file` (whatever that file defines). The HF tokenizer.json is
    embedded, as a JSON object, in our JSON under "hf_tokenizer", so one file holds everything.

    `encode` uses add_special_tokens=False (no BOS/EOS templates); special-token text such as
    "<|endoftext|>" in the input does map to its id, and `decode` keeps special tokens, so it
    round-trips. eos_id is the id of `eos_token` (None when that is None).

    `with_special_tokens` adds its tokens to the HF tokenizer itself (as special added tokens, which HF
    appends after its vocabulary), so the embedded tokenizer.json - and any Hugging Face export of it -
    knows them too; "special_tokens" in our JSON lists which tokens `special_ids` reports. A token the
    HF tokenizer already has (e.g. "<|endoftext|>", or a file's "<|im_end|>") keeps its id.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any, *, eos_token: str | None = EOS_TEXT, special_tokens: Sequence[str] = ()):
        special_tokens = list(special_tokens)
        _check_special_tokens(special_tokens)
        missing = [t for t in special_tokens if hf_tokenizer.token_to_id(t) is None]
        if missing:  # add them to a copy: the caller's HF tokenizer stays as it was
            from tokenizers import AddedToken
            from tokenizers import Tokenizer as HFTokenizer

            hf_tokenizer = HFTokenizer.from_str(hf_tokenizer.to_str())
            hf_tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.hf = hf_tokenizer
        self.eos_token = eos_token
        self._eos_id = None
        if eos_token is not None:
            self._eos_id = hf_tokenizer.token_to_id(eos_token)
            if self._eos_id is None:
                raise ValueError(f"eos_token {eos_token!r} is not in the HF tokenizer's vocabulary")
        self._set_specials({t: hf_tokenizer.token_to_id(t) for t in special_tokens}, None)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    def _base_token_id(self, text: str) -> int | None:
        for i, added in self.hf.get_added_tokens_decoder().items():
            if added.content == text:
                return i
        return None

    def _current_eos_token(self) -> str | None:
        return self.eos_token

    def _with_specials(self, tokens: tuple[str, ...], eos_token: str | None) -> BPETokenizer:
        return BPETokenizer(self.hf, eos_token=eos_token, special_tokens=tokens)

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def _decode(self, ids: np.ndarray) -> str:
        return self.hf.decode(ids.tolist(), skip_special_tokens=False)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "eos_token": self.eos_token, "hf_tokenizer": json.loads(self.hf.to_str())}
        if self.special_tokens:
            out["special_tokens"] = list(self.special_tokens)
        return out

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
    specials = data.get("special_tokens", [])  # absent in files written before special tokens existed
    if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
        raise ValueError(f"special_tokens must be a list of strings, got {specials!r}")
    if kind == "byte":
        return ByteTokenizer(special_tokens=specials, eos_token=data.get("eos_token"))
    if kind == "char":
        extra = data.get("extra_chars", [])
        if not isinstance(extra, list) or not all(isinstance(p, list) and len(p) == 2 for p in extra):
            raise ValueError(f"extra_chars must be a list of [char, id] pairs, got {extra!r}")
        return CharTokenizer(data["chars"], unk=bool(data.get("unk", False)), extra_chars=extra,
                             special_tokens=specials, eos_token=data.get("eos_token"))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_str(json.dumps(data["hf_tokenizer"]))
        return BPETokenizer(hf, eos_token=data.get("eos_token"), special_tokens=specials)
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
