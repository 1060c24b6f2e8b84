"""The data pipeline: corpus text in, token batches out (no model inside).

    corpus = load_corpus("tinyshakespeare")                # or "builtin:python_docs", or a file path
    train_text, val_text = split_text(corpus.text, 0.1)
    tokens = tokenize_to_memmap(train_text, tokenizer, cache_dir() / "tokens")
    inputs, targets = sample_batch(tokens, seed=0, step=0, batch_size=12, seq_len=256)

corpus.py: named and file corpora, checksums, the train/val split.
batches.py: cached token arrays and stateless, resumable batch sampling.
sft.py: supervised fine-tuning records, the chat template and loss masks, packed rows and their batches.
tasks.py: procedurally generated fine-tuning tasks (num2words, dates, fields) and their JSONL files.
synthetic.py: synthetic attention tasks generated on the fly (MQAR, copy, selective copy) with their accuracy.
"""

from llm.data.batches import (
    Batch,
    TokenDataset,
    eval_batches,
    sample_batch,
    sequential_batch_count,
    sequential_batches,
    token_dtype,
    tokenize_to_memmap,
)
from llm.data.corpus import (
    BUILTIN_CORPORA,
    DEFAULT_CORPUS,
    KNOWN_CORPORA,
    Corpus,
    DataError,
    cache_dir,
    default_data_dirs,
    load_corpus,
    load_text_file,
    split_text,
)
from llm.data.sft import (
    ChatTemplate,
    PackStats,
    SFTDataset,
    load_records,
    pack,
    pad,
    parse_record,
    tokenize_example,
)
from llm.data.synthetic import TASKS as SYNTHETIC_TASKS
from llm.data.synthetic import SyntheticTask
from llm.data.synthetic import make_task as make_synthetic_task
from llm.data.tasks import TASKS, alphabet, generate, read_jsonl, write_jsonl

__all__ = [
    "BUILTIN_CORPORA",
    "DEFAULT_CORPUS",
    "KNOWN_CORPORA",
    "SYNTHETIC_TASKS",
    "TASKS",
    "Batch",
    "ChatTemplate",
    "Corpus",
    "DataError",
    "PackStats",
    "SFTDataset",
    "SyntheticTask",
    "TokenDataset",
    "alphabet",
    "cache_dir",
    "default_data_dirs",
    "eval_batches",
    "generate",
    "load_corpus",
    "load_records",
    "load_text_file",
    "make_synthetic_task",
    "pack",
    "pad",
    "parse_record",
    "read_jsonl",
    "sample_batch",
    "sequential_batch_count",
    "sequential_batches",
    "split_text",
    "token_dtype",
    "tokenize_example",
    "tokenize_to_memmap",
    "write_jsonl",
]
