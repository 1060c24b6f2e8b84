"""The data pipeline: sources in, token batches out (no model inside).

    dataset = build_dataset(run)                           # a resolved run's corpus, records or synthetic task
    batch = dataset.batch(seed=0, step=step, batch_size=12)

corpora/: running text. corpus.py: named and file corpora, checksums, the train/val split; sources.py,
  prepare.py, prepared.py: `llm prepare` (sources of any size -> token shards) and reading its output; batches.py:
  stateless, resumable batches of a token split (random windows, or passes via shuffle.py).
records/: supervised records. sft.py: fine-tuning records, the chat template and loss masks, packed rows and their
  batches; tasks.py: procedurally generated fine-tuning tasks (num2words, dates, fields) and their JSONL files.
synthetic.py: synthetic attention tasks generated on the fly (MQAR, copy, selective copy) with their accuracy.
mixture.py, prefetch.py: weighted mixtures of prepared datasets; batches made ahead on a thread.
dataset.py: the one interface the training loop, evaluation and the explorer use, for all three.
spec.py: what an experiment's data section names (DataSpec: text, prepared, mixture, sft, synthetic ...).
build.py: a resolved run's data -> a Dataset.
"""

from llm.data.build import build_dataset, build_eval_dataset, sft_records
from llm.data.corpora.batches import (
    eval_batches,
    pass_batch,
    sample_batch,
    sequential_batch_count,
    sequential_batches,
    token_dtype,
)
from llm.data.corpora.corpus import (
    BUILTIN_CORPORA,
    DEFAULT_CORPUS,
    KNOWN_CORPORA,
    Corpus,
    cache_dir,
    load_corpus,
    split_text,
)
from llm.data.dataset import Batch, CorpusDataset, Dataset, RecordsDataset, TaskDataset
from llm.data.records.sft import ChatTemplate, SFTDataset, load_records
from llm.data.spec import DataSpec, data_spec, eval_data_spec
from llm.data.synthetic import SyntheticTask, make_task

__all__ = [
    "BUILTIN_CORPORA",
    "DEFAULT_CORPUS",
    "KNOWN_CORPORA",
    "Batch",
    "ChatTemplate",
    "Corpus",
    "CorpusDataset",
    "DataSpec",
    "Dataset",
    "RecordsDataset",
    "SFTDataset",
    "SyntheticTask",
    "TaskDataset",
    "build_dataset",
    "build_eval_dataset",
    "cache_dir",
    "data_spec",
    "eval_batches",
    "eval_data_spec",
    "load_corpus",
    "load_records",
    "make_task",
    "pass_batch",
    "sample_batch",
    "sequential_batch_count",
    "sequential_batches",
    "sft_records",
    "split_text",
    "token_dtype",
]
