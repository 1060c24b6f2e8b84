"""Mixtures of prepared datasets, each sampled by its weight.

    data.mixture = "data/web:0.7,data/books:0.3"       # prepared directories with weights (normalised)

Row i of training batch `step` comes from the component drawn for it from (seed, step) alone, and holds that
component's row i of its own batch `step` (its seed derived from the mixture's seed and its index), so a batch
is the same for any number of processes, each process reads only its own rows' windows, and a resumed run
continues the same stream.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar

import numpy as np

from llm.data.corpora.batches import EVAL_STREAM, TRAIN_STREAM, document_segments, local_rows, windows_at
from llm.data.dataset import Batch, Dataset, PreparedDataset

MIX_DRAW, MIX_COMPONENT = 2, 3  # the streams of the rows' component draws and of each component's windows


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """'PATH:W,PATH:W' -> [(path, weight / sum)]; ValueError saying what is wrong."""
    parts = []
    for item in spec.split(","):
        path, sep, weight = item.strip().rpartition(":")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if not sep or not path or not w > 0 or not np.isfinite(w):
            raise ValueError(f"{item.strip()!r} is not PATH:WEIGHT with a positive weight "
                             "(e.g. data/web:0.7,data/books:0.3)")
        parts.append((path, w))
    total = sum(w for _, w in parts)
    return [(p, w / total) for p, w in parts]


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@dataclasses.dataclass(eq=False)
class MixtureDataset(Dataset):
    kind: ClassVar[str] = "corpus"
    text_targets: ClassVar[bool] = True
    continues_text: ClassVar[bool] = True

    components: list[PreparedDataset]
    weights: list[float]
    pack_documents: bool = False

    def __post_init__(self):
        first = self.components[0]
        self.corpus, self.tokenizer, self.seq_len = first.corpus, first.tokenizer, first.seq_len

    def describe(self) -> str:
        return "mixture of " + ", ".join(f"{c.corpus.name} ({w:.2f}: {len(c.splits['train']):,} train tokens)"
                                         for c, w in zip(self.components, self.weights, strict=True))

    def token_counts(self) -> dict[str, Any]:
        return {c.corpus.name: c.token_counts() for c in self.components}

    def manifest(self) -> dict[str, Any]:
        return {"corpus": {"mixture": [{**c.manifest()["corpus"], "weight": w}
                                       for c, w in zip(self.components, self.weights, strict=True)]},
                "tokens": self.token_counts()}

    def _rows(self, split: str, stream: int, seed: int, index: int, batch_size: int, rows: slice) -> Batch:
        """This process's rows of global batch `index`: each row's component is drawn from (seed, index), and the
        row is that component's row of its own batch `index`; only this process's windows are read."""
        draw = np.random.default_rng(_seed(seed, MIX_DRAW, stream, index))
        choice = draw.choice(len(self.components), size=batch_size, p=self.weights)
        local = np.arange(batch_size)[rows]
        inputs = np.empty((len(local), self.seq_len), np.int32)
        targets = np.empty_like(inputs)
        for c, component in enumerate(self.components):
            mine = choice[local] == c
            if mine.any():
                inputs[mine], targets[mine] = windows_at(
                    component.splits[split], seed=_seed(seed, MIX_COMPONENT, c), stream=stream, index=index,
                    batch_size=batch_size, seq_len=self.seq_len, rows=local[mine])
        out = {"inputs": inputs, "targets": targets}
        if self.pack_documents:
            out.update(document_segments(inputs, self.tokenizer.eos_id))
        return out

    def batch(self, seed, step, batch_size, *, process_index=0, process_count=1):
        return self._rows("train", TRAIN_STREAM, seed, step, batch_size,
                          local_rows(batch_size, process_index, process_count))

    def eval_batches(self, split, *, seed, n_batches, batch_size, process_index=0, process_count=1):
        rows = local_rows(batch_size, process_index, process_count)
        return (self._rows(split, EVAL_STREAM, seed, i, batch_size, rows) for i in range(n_batches))

    @property
    def full_splits(self):
        return ("train", "val")

    def full_batches(self, split, batch_size):
        """Every component's split in turn (each target once)."""
        return itertools.chain.from_iterable(c.full_batches(split, batch_size) for c in self.components)
