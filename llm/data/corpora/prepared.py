"""A prepared dataset on disk: token shards with document starts, a tokenizer, and a manifest.

    DIR/manifest.json            written last: its presence means the dataset is complete (see MANIFEST_KEYS)
    DIR/tokenizer.json           the tokenizer every shard was encoded with
    DIR/train-00000.npy          token ids (uint16 if the vocabulary fits, else uint32), documents separated by
    DIR/train-00000.docs.npy     the end-of-text id; int64 positions where documents start in that shard
    DIR/val-00000.npy ...        the held-out documents, shard for shard
    DIR/units/00000.json         one record per finished unit of input, for resuming (`llm prepare`)

    data = PreparedData.open("data/owt")
    tokens = data.tokens("train")         # ShardedTokens: len(), and tokens[index_array] across shard boundaries

`.npy` files are loaded memory-mapped and never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.errors import DataError
from llm.tokenizers import Tokenizer, load_tokenizer

FORMAT = "llm-prepared-v1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a directory holding a complete prepared dataset."""
    return (Path(path) / MANIFEST).is_file()


def shard_name(split: str, unit: int) -> str:
    return f"{split}-{unit:05d}.npy"


def docs_name(split: str, unit: int) -> str:
    return f"{split}-{unit:05d}.docs.npy"


class ShardedTokens:
    """The token ids of one split, shard after shard, read as one 1-D array: `len`, and indexing by integer
    arrays (any shape) or slices, which reads only the shards the indices fall in."""

    ndim = 1

    def __init__(self, shards: list[np.ndarray]):
        if not shards:
            raise ValueError("a split needs at least one shard")
        self.shards = shards
        self.dtype = shards[0].dtype
        self.starts = np.cumsum([0] + [len(s) for s in shards])  # shard i holds [starts[i], starts[i+1])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self[np.arange(*index.indices(len(self)))]
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"token index out of range [0, {len(self)})")
        shard = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, self.dtype)
        for s in np.unique(shard):
            where = shard == s
            out[where] = self.shards[s][index[where] - self.starts[s]]
        return out


@dataclasses.dataclass
class PreparedData:
    path: Path
    manifest: dict[str, Any]
    tokenizer: Tokenizer

    @classmethod
    def open(cls, path: str | Path) -> PreparedData:
        path = Path(path)
        if not is_prepared(path):
            raise DataError(f"{path}: not a prepared dataset (no {MANIFEST}); make one with `llm prepare`, or finish "
                            "an interrupted one by running the same command again")
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path / MANIFEST}: unreadable ({e}); run `llm prepare` again") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"{path}: format {manifest.get('format')!r}, not {FORMAT!r}; prepare it again")
        return cls(path, manifest, load_tokenizer(path / "tokenizer.json"))

    def tokens(self, split: str) -> ShardedTokens:
        shards = self.manifest["splits"][split]["shards"]
        if not shards:
            raise DataError(f"{self.path}: the {split} split is empty; prepare it with more documents or a larger "
                            "--val_fraction")
        return ShardedTokens([self._load(s["file"], s["tokens"]) for s in shards])

    def _load(self, name: str, n_tokens: int) -> np.ndarray:
        try:
            tokens = np.load(self.path / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path / name}: unreadable shard ({e}); run `llm prepare` again") from None
        if tokens.ndim != 1 or len(tokens) != n_tokens:
            raise DataError(f"{self.path / name}: {tokens.shape} tokens, the manifest says {n_tokens}; the shard was "
                            "changed after preparation: prepare again")
        return tokens
