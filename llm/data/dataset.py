"""One interface for everything a run trains or evaluates on: a text corpus, supervised records, a synthetic task.

    dataset.batch(seed, step, batch_size)                  # training batch `step`: a dict of numpy arrays [B, T]
    dataset.eval_batches("val", seed=0, n_batches=20, batch_size=16)   # the fixed batches of periodic evaluation
    dataset.full_batches("val", batch_size=16)             # every target of a split once (`llm eval`)
    dataset.generation_examples()                          # (prompt, reference) pairs for task metrics

A batch is {"inputs", "targets"} (int32 [B, T]) and, for records and tasks, "weights" (float32: where the loss
counts), "segment_ids" and "positions" (int32: packed documents); callers pass every key but inputs and targets
to the model and the loss as they are. Every batch is a pure function of its arguments (seed, step, split), so a
resumed run sees the batches an unbroken one would, and each process gets its own block of rows of the global
batch (`process_index`, `process_count`). Nothing outside this package branches on the kind of data: what
differs is said by the dataset (`answer_accuracy`, `text_targets`, `generation_examples`).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from llm.data.corpora.batches import document_segments, eval_batches, pass_batch, sample_batch, sequential_batches
from llm.data.corpora.corpus import Corpus
from llm.data.records.sft import ChatTemplate, SFTDataset
from llm.data.synthetic import SyntheticTask
from llm.tokenizers import Tokenizer

Batch = dict[str, np.ndarray]
SPLITS = ("train", "val")


class Dataset(abc.ABC):
    """Training and evaluation batches of one run's data, with its tokenizer and where it came from."""

    kind: ClassVar[str]  # "corpus", "sft" or "synthetic": recorded in manifests and evaluation results
    answer_accuracy: ClassVar[bool] = False  # the weighted targets are answers: argmax accuracy is a metric
    text_targets: ClassVar[bool] = False  # the targets are text: bits per UTF-8 byte is a metric
    continues_text: ClassVar[bool] = False  # running text: a sample continuing a prompt shows what was learned

    corpus: Corpus  # the text behind the data (a task's spec, the records as JSON lines) and its checksum
    tokenizer: Tokenizer
    seq_len: int

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the run's log."""

    @abc.abstractmethod
    def token_counts(self) -> dict[str, Any]:
        """The sizes recorded in the run's manifest."""

    @abc.abstractmethod
    def batch(self, seed: int, step: int, batch_size: int, *, process_index: int = 0, process_count: int = 1
              ) -> Batch:
        """Training batch `step` (this process's rows)."""

    @abc.abstractmethod
    def eval_batches(self, split: str, *, seed: int, n_batches: int, batch_size: int, process_index: int = 0,
                     process_count: int = 1) -> Iterator[Batch]:
        """The fixed batches on which periodic evaluation measures `split` ("train" or "val")."""

    @abc.abstractmethod
    def full_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Every target of `split` once (padding weighted 0), for exact evaluation."""

    @property
    @abc.abstractmethod
    def full_splits(self) -> tuple[str, ...]:
        """The splits `full_batches` takes."""

    def generation_examples(self) -> list[tuple[str, str]]:
        """(prompt, reference) pairs whose greedy continuations task metrics score; none by default."""
        return []

    def manifest(self) -> dict[str, Any]:
        return {"corpus": {"name": self.corpus.name, "sha256": self.corpus.sha256,
                           "provenance": self.corpus.provenance, "characters": len(self.corpus.text)},
                "tokens": self.token_counts()}


@dataclasses.dataclass(eq=False)
class CorpusDataset(Dataset):
    """A text's token splits: random windows for training, fixed random windows for periodic evaluation, and
    non-overlapping windows for `llm eval` (see llm/data/corpora/batches.py)."""

    kind: ClassVar[str] = "corpus"
    text_targets: ClassVar[bool] = True
    continues_text: ClassVar[bool] = True

    corpus: Corpus
    tokenizer: Tokenizer
    seq_len: int
    splits: dict[str, np.ndarray]  # split -> token ids ("train" and "val"; `llm eval` may hold "all")
    order: str = "random"  # training windows: "random" offsets, or "passes" without replacement (data.order)

    def describe(self) -> str:
        return (f"corpus {self.corpus.name}: {len(self.splits['train']):,} train / {len(self.splits['val']):,} "
                "val tokens")

    def token_counts(self) -> dict[str, Any]:
        return {split: len(tokens) for split, tokens in self.splits.items()}

    def batch(self, seed, step, batch_size, *, process_index=0, process_count=1):
        draw = pass_batch if self.order == "passes" else sample_batch
        x, y = draw(self.splits["train"], seed=seed, step=step, batch_size=batch_size, seq_len=self.seq_len,
                    process_index=process_index, process_count=process_count)
        return {"inputs": x, "targets": y}

    def eval_batches(self, split, *, seed, n_batches, batch_size, process_index=0, process_count=1):
        windows = eval_batches(self.splits[split], seed=seed, n_batches=n_batches, batch_size=batch_size,
                               seq_len=self.seq_len, process_index=process_index, process_count=process_count)
        return ({"inputs": x, "targets": y} for x, y in windows)

    @property
    def full_splits(self):
        return tuple(self.splits)

    def full_batches(self, split, batch_size):
        tokens = self.splits[split]
        windows = sequential_batches(tokens, batch_size=batch_size, seq_len=min(self.seq_len, len(tokens) - 1))
        return ({"inputs": x, "targets": y, "weights": w} for x, y, w in windows)


@dataclasses.dataclass(eq=False)
class PreparedDataset(CorpusDataset):
    """A prepared dataset's token shards (`llm prepare`, llm/data/corpora/prepared.py), batched as a corpus's splits."""

    source: dict[str, Any] = dataclasses.field(default_factory=dict)  # the dataset's manifest.json
    pack_documents: bool = False  # segment ids and positions per document (llm/data/mixture.py)

    def _packed(self, batch: Batch) -> Batch:
        if self.pack_documents:
            batch.update(document_segments(batch["inputs"], self.tokenizer.eos_id))
        return batch

    def batch(self, seed, step, batch_size, *, process_index=0, process_count=1):
        return self._packed(super().batch(seed, step, batch_size, process_index=process_index,
                                          process_count=process_count))

    def eval_batches(self, split, **kw):
        return (self._packed(b) for b in super().eval_batches(split, **kw))

    def full_batches(self, split, batch_size):
        return (self._packed(b) for b in super().full_batches(split, batch_size))

    def describe(self) -> str:
        return f"prepared dataset {self.corpus.name}: " + " / ".join(
            f"{len(tokens):,} {split}" for split, tokens in self.splits.items()) + " tokens"

    def manifest(self) -> dict[str, Any]:
        return {"corpus": {"name": self.corpus.name, "sha256": self.corpus.sha256,
                           "provenance": self.corpus.provenance,
                           "sources": [s["path"] for s in self.source.get("sources", [])]},
                "tokens": self.token_counts()}


@dataclasses.dataclass(eq=False)
class RecordsDataset(Dataset):
    """Supervised records (llm/data/records/sft.py): packed or padded rows, the loss on completions only; the held-out
    records' prompts and reference answers for task metrics."""

    kind: ClassVar[str] = "sft"
    text_targets: ClassVar[bool] = True

    corpus: Corpus
    tokenizer: Tokenizer
    rows: dict[str, SFTDataset]  # "train" and "val" (the held-out records, one per row)
    held_out: list[dict]  # the held-out records
    template: ChatTemplate = dataclasses.field(default_factory=ChatTemplate)

    @property
    def seq_len(self) -> int:
        return self.rows["val"].seq_len

    def describe(self) -> str:
        train = self.rows["train"]
        return (f"SFT data {self.corpus.name}: {len(train)} train rows ({train.stats.describe()}), "
                f"{len(self.held_out)} held-out examples")

    def token_counts(self) -> dict[str, Any]:
        return {"train_rows": len(self.rows["train"]), "trained_tokens_per_pass": self.rows["train"].num_tokens_trained}

    def batch(self, seed, step, batch_size, *, process_index=0, process_count=1):
        return self.rows["train"].batch(seed, step, batch_size, process_index=process_index,
                                        process_count=process_count)

    def eval_batches(self, split, *, seed, n_batches, batch_size, process_index=0, process_count=1):
        # The first n_batches batches of every row in order: the same rows at every evaluation, whatever the seed.
        rows = self.rows[split].eval_batches(batch_size, process_index=process_index, process_count=process_count)
        return itertools.islice(rows, n_batches)

    @property
    def full_splits(self):
        return tuple(self.rows)

    def full_batches(self, split, batch_size):
        return self.rows[split].eval_batches(batch_size)

    def generation_examples(self) -> list[tuple[str, str]]:
        return [self.template.prompt_and_reference(r) for r in self.held_out]


@dataclasses.dataclass(eq=False)
class TaskDataset(Dataset):
    """A synthetic task generated on the fly (llm/data/synthetic.py); the loss and the accuracy count only the
    answer positions. Its held-out batches come from the task's own evaluation stream."""

    kind: ClassVar[str] = "synthetic"
    answer_accuracy: ClassVar[bool] = True

    corpus: Corpus
    tokenizer: Tokenizer
    task: SyntheticTask

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    def describe(self) -> str:
        return f"synthetic task {self.task.describe()}"

    def token_counts(self) -> dict[str, Any]:
        return {"synthetic": self.task.describe()}

    def batch(self, seed, step, batch_size, *, process_index=0, process_count=1):
        return self.task.batch(seed, step, batch_size, process_index=process_index, process_count=process_count)

    def eval_batches(self, split, *, seed, n_batches, batch_size, process_index=0, process_count=1):
        procs = dict(process_index=process_index, process_count=process_count)
        if split == "val":
            return self.task.eval_batches(batch_size, n_batches, **procs)
        # "train": the first training batches of the run's seed, as a measure of fit on what it trains on.
        return (self.task.batch(seed, i, batch_size, **procs) for i in range(n_batches))

    full_splits = ("val",)

    def full_batches(self, split, batch_size):
        return self.task.eval_batches(batch_size)
