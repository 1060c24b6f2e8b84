"""A resolved run's data in, a `Dataset` out.

    dataset = build_dataset(run, tokenizer=None)            # training: the tokenizer is trained if not given
    dataset = build_eval_dataset(run, spec, "val", tokenizer)   # `llm eval`: a DataSpec and a split

`run` is a resolved run (llm.config.resolve): `run.data` (llm/data/spec.py) says what the data is, `run.seq_len`
how long a row is; the plain settings come from its config's `data` section, seed and train.eval_batches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.data.corpora.corpus import Corpus, cache_dir, load_corpus, split_text
from llm.data.corpora.prepare import PrepareSettings, prepare, prepare_corpus
from llm.data.corpora.prepared import MANIFEST, PreparedData, ShardedTokens, is_prepared
from llm.data.dataset import SPLITS, CorpusDataset, Dataset, PreparedDataset, RecordsDataset, TaskDataset
from llm.data.mixture import MixtureDataset
from llm.data.records import tasks as tasks_lib
from llm.data.records.sft import ChatTemplate, SFTDataset, load_records
from llm.data.spec import DataSpec
from llm.data.synthetic import make_task
from llm.errors import ConfigError, DataError
from llm.tokenizers import CharTokenizer, Tokenizer, train_tokenizer


def build_dataset(run, *, tokenizer: Tokenizer | None = None, base_tokenizer: Tokenizer | None = None) -> Dataset:
    """The run's training data. `tokenizer`: the run's own (a resumed run's tokenizer.json), used as it is;
    else `base_tokenizer` (a fine-tune's source model's), grown by the characters the new text needs (char
    tokenizers) and the chat markers (records); else one trained on the data (deterministically: every process
    of a multi-process run trains the same one)."""
    spec = run.data
    if spec.kind == "synthetic":
        return _task_dataset(run, spec.source, n_eval_batches=run.config.train.eval_batches)
    if spec.kind == "sft":
        return _records_dataset(run, tokenizer, base_tokenizer)
    if spec.kind == "mixture":
        return _mixture_dataset(run, spec, tokenizer)
    if spec.kind == "prepared":
        return _prepared_dataset(run, spec.source, tokenizer, SPLITS)
    if spec.kind == "large":
        tokenizer = tokenizer or base_tokenizer
        return _prepared_dataset(run, _prepared_large_file(run, Path(spec.source), tokenizer), tokenizer, SPLITS)
    d = run.config.data
    corpus = load_corpus(spec.source, data_dir=d.data_dir)
    # The character vocabulary comes from the whole text (as nanoGPT does), so the validation split never holds
    # an unknown character; BPE merges are learned from the training split only.
    if tokenizer is None:
        train_text = split_text(corpus.text, d.val_fraction)[0]
        tokenizer = _grown_or_trained(run, base_tokenizer, corpus.text,
                                      corpus.text if d.tokenizer == "char" else train_text)
    splits = prepared_corpus_splits(run, corpus, tokenizer)
    for split, name in (("train", "training"), ("val", "validation")):
        if len(splits[split]) < run.seq_len + 1:
            raise DataError(f"the {name} split of {corpus.name} has {len(splits[split])} tokens, fewer than the "
                            f"context of {run.seq_len} + 1; use a shorter train.seq_len / model.max_len or a bigger "
                            "corpus")
    return CorpusDataset(corpus, tokenizer, run.seq_len, splits, order=d.order)


def _prepared_large_file(run, path: Path, tokenizer: Tokenizer | None) -> str:
    """Where a text file too large to read whole is prepared, on first use, into the cache as `llm prepare FILE`
    would prepare it: streamed; its last data.val_fraction of characters held out; a tokenizer of data.tokenizer's
    kind trained on a bounded sample, or the run's own `tokenizer`."""
    d = run.config.data
    root = _prepared_root(run)
    stat = path.resolve().stat()

    def cache_key(which: str) -> str:
        text = f"{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}\n{which}\n{d.val_fraction!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    key, kind = cache_key(f"{d.tokenizer} {d.vocab_size}"), d.tokenizer
    if tokenizer is not None and not _prepared_with(root / key, tokenizer):
        # A resumed run or a fine-tune whose tokenizer is not the one trained here: its own, as a file.
        key = cache_key(tokenizer.fingerprint())
        kind = str(root / f"{key}.tokenizer.json")
        tokenizer.save(kind)
    settings = PrepareSettings(sources=[str(path)], out=str(root / key), tokenizer=kind, vocab_size=d.vocab_size,
                               val_fraction=d.val_fraction)
    print(f"{path}: {stat.st_size >> 20} MB, too large to read whole: preparing it (once) into {root / key}")
    try:
        prepare(settings)
    except OSError as e:
        raise _unwritable(root, e) from None
    return str(root / key)


def _prepared_root(run) -> Path:
    """Where texts are prepared on first use: data.cache_dir, else $LLM_CACHE_DIR/prepared."""
    d = run.config.data
    return Path(d.cache_dir) if d.cache_dir else cache_dir() / "prepared"


def _unwritable(root: Path, e: OSError) -> DataError:
    """A file in the way, no permission, a full disk."""
    return DataError(f"{root}: cannot write prepared tokens there ({e.strerror or e}); set data.cache_dir (or "
                     "LLM_CACHE_DIR) to a writable directory")


def _prepared_with(path: Path, tokenizer: Tokenizer) -> bool:
    return is_prepared(path) and PreparedData.open(path).tokenizer.fingerprint() == tokenizer.fingerprint()


def prepared_corpus_splits(run, corpus: Corpus, tokenizer: Tokenizer) -> dict[str, ShardedTokens | np.ndarray]:
    """A plain text's train and val tokens, prepared on first use (`prepare_corpus`) into the cache: a directory
    per (text, tokenizer, data.val_fraction) under data.cache_dir, else $LLM_CACHE_DIR/prepared."""
    d = run.config.data
    root = _prepared_root(run)
    key = hashlib.sha256(f"{corpus.sha256}\n{tokenizer.fingerprint()}\n{d.val_fraction!r}".encode()).hexdigest()
    try:
        manifest = prepare_corpus(corpus, tokenizer, root / key[:32], d.val_fraction)
    except OSError as e:
        raise _unwritable(root, e) from None
    data = PreparedData(root / key[:32], manifest, tokenizer)
    return {split: data.tokens(split) if manifest["splits"][split]["tokens"] else np.zeros(0, np.uint16)
            for split in SPLITS}


def build_eval_dataset(run, spec: DataSpec, split: str, tokenizer: Tokenizer, *, max_tokens: int = 0) -> Dataset:
    """What `llm eval` measures a run (resolved, with its tokenizer) on: `spec` is the run's own data or another
    corpus / task:NAME; `split` (val, train or all) picks a corpus's part (tasks and records use their held-out
    examples); max_tokens > 0 cuts a corpus split to that many targets."""
    if spec.kind == "synthetic":
        return _task_dataset(run, spec.source, n_eval_batches=max(run.config.train.eval_batches, 1))
    if spec.kind == "sft":
        _, held_out, corpus = sft_records(run, spec.source)
        template = ChatTemplate()
        template.check_tokenizer(tokenizer)
        rows = SFTDataset.from_records(held_out, tokenizer, run.seq_len, template, pack=False, name=spec.source)
        return RecordsDataset(corpus, tokenizer, {"val": rows}, held_out, template)
    if spec.kind != "text" and split not in SPLITS:
        raise ConfigError(f"eval.split={split!r}: {spec.source} is a prepared dataset, with the splits "
                          f"{', '.join(SPLITS)} only")
    if spec.kind == "mixture":
        return _mixture_dataset(run, spec, tokenizer, (split,), max_tokens=max_tokens)
    if spec.kind in ("prepared", "large"):
        path = spec.source if spec.kind == "prepared" else _prepared_large_file(run, Path(spec.source), tokenizer)
        return _prepared_dataset(run, path, tokenizer, (split,), max_tokens=max_tokens)
    corpus = load_corpus(spec.source, data_dir=run.config.data.data_dir)
    try:
        splits = prepared_corpus_splits(run, corpus, tokenizer)
    except ValueError as err:  # characters a char tokenizer has never seen
        raise ConfigError(f"eval.corpus={spec.source!r}: the run's tokenizer cannot encode it ({err})") from None
    tokens = splits[split] if split != "all" else ShardedTokens(
        [t for s in SPLITS if len(splits[s]) for t in _shards(splits[s])])
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ConfigError(f"eval.corpus={spec.source!r}, split {split}: fewer than 2 tokens")
    return CorpusDataset(corpus, tokenizer, run.seq_len, {split: tokens})


def sft_records(run, spec: str | None = None) -> tuple[list[dict], list[dict], Corpus]:
    """The records of `spec` (default data.sft), (train, held out): a JSONL file (its last data.val_fraction held
    out) or a built-in task ('task:num2words', 'task:dates', 'task:fields'; generated from the seed, disjoint
    splits); and the records as a corpus (JSON lines), for the manifest's checksum."""
    d, seed = run.config.data, run.config.seed
    spec = spec or d.sft
    if spec.startswith("task:"):
        name = spec[len("task:"):]
        if name not in tasks_lib.TASKS:
            raise ConfigError(f"data.sft={spec!r}: unknown task; choose one of "
                              f"{', '.join('task:' + t for t in tasks_lib.TASKS)} or a JSONL file")
        train = tasks_lib.generate(name, d.sft_train_examples, seed, split="train")
        val = tasks_lib.generate(name, d.sft_eval_examples, seed, split="test")
        provenance = f"generated by llm.data.records.tasks ({name}, seed {seed})"
    else:
        records = load_records(spec)
        n_val = max(1, int(len(records) * d.val_fraction))
        if len(records) < 2:
            raise DataError(f"{spec}: {len(records)} record(s); need at least 2 (training and held out)")
        train, val = records[:-n_val], records[-n_val:]
        provenance = f"{Path(spec).absolute()}"
    text = "\n".join(json.dumps(r, sort_keys=True) for r in train + val)
    return train, val, Corpus.from_text(spec, text, provenance)


def _records_dataset(run, tokenizer: Tokenizer | None, base_tokenizer: Tokenizer | None) -> RecordsDataset:
    d = run.config.data
    train, held_out, corpus = sft_records(run)
    template = ChatTemplate()
    if tokenizer is None:
        train_text = _records_text(train)
        full_text = train_text + "\n" + _records_text(held_out)
        tokenizer = _grown_or_trained(run, base_tokenizer, full_text,
                                      full_text if d.tokenizer == "char" else train_text)
        tokenizer = template.prepare_tokenizer(tokenizer, train + held_out)
    rows = {split: SFTDataset.from_records(records, tokenizer, run.seq_len, template, pack=d.sft_pack,
                                           name=f"{d.sft} ({name})")
            for split, records, name in (("train", train, "train"), ("val", held_out, "held out"))}
    return RecordsDataset(corpus, tokenizer, rows, held_out, template)


def _prepared_dataset(run, path: str, tokenizer: Tokenizer | None, splits: tuple[str, ...], *,
                      max_tokens: int = 0) -> PreparedDataset:
    """A prepared directory's splits. Its own tokenizer encoded them: a run's tokenizer (resuming, evaluating)
    must be the same one."""
    data = PreparedData.open(path)
    if tokenizer is not None and tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise DataError(f"{path}: prepared with another tokenizer than this run's ({data.tokenizer.kind}, vocabulary "
                        f"{data.tokenizer.vocab_size}); use the dataset the run was trained on")
    tokens = {split: data.tokens(split) for split in splits}
    if max_tokens:
        tokens = {split: t[: max_tokens + 1] for split, t in tokens.items()}
    for split, t in tokens.items():
        if len(t) < run.seq_len + 1:
            raise DataError(f"{path}: the {split} split has {len(t)} tokens, fewer than the context of {run.seq_len} "
                            "+ 1; use a shorter train.seq_len / model.max_len or prepare more documents")
    manifest_text = (Path(path) / MANIFEST).read_text()
    corpus = Corpus(str(path), "", hashlib.sha256(manifest_text.encode()).hexdigest(),
                    f"prepared by llm prepare ({path}/{MANIFEST})")
    d = run.config.data
    return PreparedDataset(corpus, data.tokenizer, run.seq_len, tokens, order=d.order,
                           source=json.loads(manifest_text), pack_documents=d.pack_documents)


def _mixture_dataset(run, spec: DataSpec, tokenizer: Tokenizer | None, splits: tuple[str, ...] = SPLITS, *,
                     max_tokens: int = 0) -> MixtureDataset:
    for path, _ in spec.parts:
        if not is_prepared(path):
            raise DataError(f"data.mixture: {path} is not a prepared dataset; make it with `llm prepare`")
    components = [_prepared_dataset(run, path, tokenizer, splits, max_tokens=max_tokens) for path, _ in spec.parts]
    first = components[0].tokenizer.fingerprint()
    for (path, _), c in zip(spec.parts, components, strict=True):
        if c.tokenizer.fingerprint() != first:
            raise DataError(f"data.mixture: {path} was prepared with another tokenizer than {spec.parts[0][0]}; "
                            "prepare every component with the same --tokenizer FILE")
    return MixtureDataset(components, [w for _, w in spec.parts], pack_documents=run.config.data.pack_documents)


def _task_dataset(run, spec: str, *, n_eval_batches: int) -> TaskDataset:
    """A synthetic task: its batches come from (seed, step); its tokenizer maps each id to one character."""
    try:
        task = make_task(spec, run.seq_len, n_eval_batches=n_eval_batches)
    except ValueError as e:
        raise ConfigError(f"data.synthetic={spec!r}: {e}") from None
    corpus = Corpus.from_text(spec, task.spec, "generated on the fly by llm.data.synthetic")
    return TaskDataset(corpus, task.tokenizer(), task)


def _grown_or_trained(run, base: Tokenizer | None, full_text: str, source: str) -> Tokenizer:
    """`base` grown by the characters of `full_text` it lacks (char tokenizers), or a tokenizer of data.tokenizer's
    kind trained on `source`."""
    d = run.config.data
    if base is not None:
        return base.extend_chars(base.missing_chars(full_text)) if isinstance(base, CharTokenizer) else base
    try:
        return train_tokenizer(d.tokenizer, source, vocab_size=d.vocab_size if d.tokenizer == "bpe" else None)
    except ValueError as e:  # e.g. a BPE vocabulary smaller than its 257 base tokens
        raise ConfigError(f"data.tokenizer={d.tokenizer!r}, data.vocab_size={d.vocab_size}: {e}") from None


def _shards(tokens: ShardedTokens | np.ndarray) -> list[np.ndarray]:
    return tokens.shards if isinstance(tokens, ShardedTokens) else [tokens]


def _records_text(records: list[dict[str, Any]]) -> str:
    parts = []
    for r in records:
        parts += [r["prompt"], r["completion"]] if "prompt" in r else [m["content"] for m in r["messages"]]
    return "\n".join(parts)
