"""The data pipeline: corpus text in, token batches out (no model inside).

    corpus = load_corpus("tinyshakespeare")                # or "builtin:python_docs", or a file path
    train_text, val_text = split_text(corpus.text, 0.1)
    tokens = tokenize_to_memmap(train_text, tokenizer, cache_dir() / "tokens")
    inputs, targets = sample_batch(tokens, seed=0, step=0, batch_size=12, seq_len=256)

corpus.py: named and file corpora, checksums, the train/val split.
batches.py: cached token arrays and stateless, resumable batch sampling.
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

__all__ = [
    "BUILTIN_CORPORA",
    "DEFAULT_CORPUS",
    "KNOWN_CORPORA",
    "Batch",
    "Corpus",
    "DataError",
    "TokenDataset",
    "cache_dir",
    "default_data_dirs",
    "eval_batches",
    "load_corpus",
    "load_text_file",
    "sample_batch",
    "sequential_batch_count",
    "sequential_batches",
    "split_text",
    "token_dtype",
    "tokenize_to_memmap",
]
