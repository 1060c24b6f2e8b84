"""Byte-level BPE through Hugging Face `tokenizers`, trained here or read from a checkpoint's tokenizer.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from llm.tokenizers.base import EOS_TEXT, Tokenizer, check_special_tokens
from llm.tokenizers.fast_bpe import tiktoken_encoding

DEFAULT_BPE_VOCAB_SIZE = 4096
# Special-token spellings tried, in order, when an HF tokenizer.json does not say which token ends text.
HF_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")


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
        check_special_tokens(special_tokens)
        missing = [t for t in special_tokens if hf_tokenizer.token_to_id(t) is None]
        if missing:  # add them to a copy: the caller's HF tokenizer stays as it was
            from tokenizers import AddedToken
            from tokenizers import Tokenizer as HFTokenizer

            hf_tokenizer = HFTokenizer.from_str(hf_tokenizer.to_str())
            hf_tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.hf = hf_tokenizer
        self._tiktoken: Any = False  # built on first use by encode_many: an Encoding, or None where none fits
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

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Many texts at once (`llm prepare`): through tiktoken where it gives the same ids (fast_bpe.py)."""
        if self._special_re is not None:  # markers are split out first, one text at a time
            return super().encode_many(texts)
        if self._tiktoken is False:
            self._tiktoken = tiktoken_encoding(self.hf)
        if self._tiktoken is not None:
            return [np.asarray(self._tiktoken.encode(t, allowed_special="all"), np.int32) for t in texts]
        batch = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # _fast: no offsets (tokenizers>=0.21)
        return [np.asarray(e.ids, dtype=np.int32) for e in batch(texts, add_special_tokens=False)]

    def _decode(self, ids: np.ndarray) -> str:
        return self.hf.decode(ids.tolist(), skip_special_tokens=False)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "eos_token": self.eos_token, "hf_tokenizer": json.loads(self.hf.to_str())}
        if self.special_tokens:
            out["special_tokens"] = list(self.special_tokens)
        return out

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int = DEFAULT_BPE_VOCAB_SIZE) -> BPETokenizer:
        """Byte-level BPE with at most `vocab_size` ids (fewer if the text runs out of merges). `text`: one string,
        or an iterable of strings streamed to the trainer (which keeps word counts, not the text)."""
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
        hf.train_from_iterator([text] if isinstance(text, str) else text, trainer=trainer)
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
        eos_token = next((t for t in HF_EOS_CANDIDATES if t in specials), None)
    return BPETokenizer(hf, eos_token=eos_token)
