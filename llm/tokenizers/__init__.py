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

import json
import os
from pathlib import Path
from typing import Any

from llm.errors import DataError, one_line
from llm.tokenizers.base import EOS_TEXT, Tokenizer
from llm.tokenizers.bpe import DEFAULT_BPE_VOCAB_SIZE, BPETokenizer, from_hf_file
from llm.tokenizers.simple import ByteTokenizer, CharTokenizer

KINDS = ("char", "byte", "bpe")

__all__ = ["DEFAULT_BPE_VOCAB_SIZE", "EOS_TEXT", "KINDS", "BPETokenizer", "ByteTokenizer", "CharTokenizer",
           "Tokenizer", "from_hf_file", "load_tokenizer", "tokenizer_from_json", "train_tokenizer"]


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
    Every failure (missing, unreadable, damaged or foreign file) is a `llm.errors.DataError`
    whose one-line message names the file.
    """
    what = "it should be the tokenizer.json `llm train` wrote (Tokenizer.save) or a Hugging Face tokenizer.json"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e, 200)
        raise DataError(f"{path}: cannot read tokenizer JSON ({reason}); {what}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: tokenizer JSON must be an object, got {type(data).__name__}; {what}")
    if "kind" not in data and "model" in data:
        try:
            return from_hf_file(path)
        except ValueError as e:  # its message names the file already
            raise DataError(f"{one_line(e, 200)}; {what}") from e
    try:
        return tokenizer_from_json(data)
    except Exception as e:  # KeyError, TypeError, ValueError, and HF's bare Exception for a bad "hf_tokenizer"
        reason = f"missing field {e}" if isinstance(e, KeyError) else one_line(e, 200)
        raise DataError(f"{path}: not a usable tokenizer ({reason}); {what}") from e


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
