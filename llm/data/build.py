"""An experiment's `data` section in, a `Dataset` out: the one place that tells corpora, supervised records and
synthetic tasks apart.

    dataset = build_dataset(config, tokenizer=None)          # training: the tokenizer is trained if not given
    dataset = build_eval_dataset(config, spec, "val", tokenizer)   # `llm eval`: a spec (corpus or task) and split

`config` is an experiment ConfigDict (read, never changed): data.corpus / data.sft / data.synthetic say what to
train on, train.seq_len (or model.max_len) how long a row is, seed and train.eval_batches the rest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from llm.data import tasks as tasks_lib
from llm.data.corpus import Corpus, cache_dir, large_text_file, load_corpus, split_text
from llm.data.dataset import SPLITS, CorpusDataset, Dataset, PreparedDataset, RecordsDataset, TaskDataset
from llm.data.mixture import MixtureDataset, parse_mixture
from llm.data.prepare import PrepareSettings, prepare, prepare_corpus
from llm.data.prepared import MANIFEST, PreparedData, ShardedTokens, is_prepared
from llm.data.sft import ChatTemplate, SFTDataset, load_records
from llm.data.synthetic import make_task
from llm.errors import ConfigError, DataError
from llm.tokenizers import CharTokenizer, Tokenizer, train_tokenizer


def seq_len_of(config) -> int:
    """The length of a training row: train.seq_len, or the model's context."""
    return config.train.seq_len or config.model.max_len


def build_dataset(config, *, tokenizer: Tokenizer | None = None, base_tokenizer: Tokenizer | None = None
                  ) -> Dataset:
    """The run's training data. `tokenizer`: the run's own (a resumed run's tokenizer.json), used as it is;
    else `base_tokenizer` (a fine-tune's source model's), grown by the characters the new text needs (char
    tokenizers) and the chat markers (records); else one trained on the data (deterministically: every process
    of a multi-process run trains the same one)."""
    d = config.data
    if d.order != "random" and (d.synthetic or d.sft or d.mixture):
        raise ConfigError(f"data.order={d.order!r} applies to a corpus or a prepared dataset, not to "
                          f"data.{'synthetic' if d.synthetic else 'sft' if d.sft else 'mixture'}; leave it 'random'")
    if d.synthetic:
        return _task_dataset(config, d.synthetic, n_eval_batches=config.train.eval_batches)
    if d.sft:
        return _records_dataset(config, tokenizer, base_tokenizer)
    if d.mixture:
        return _mixture_dataset(config, tokenizer)
    if is_prepared(d.corpus):
        return _prepared_dataset(config, d.corpus, tokenizer, SPLITS)
    if large := large_text_file(d.corpus):
        tokenizer = tokenizer or base_tokenizer
        return _prepared_dataset(config, _prepared_large_file(config, large, tokenizer), tokenizer, SPLITS)
    if d.pack_documents:
        raise ConfigError("data.pack_documents needs a prepared dataset (data.corpus or data.mixture naming "
                          "`llm prepare` output): a plain text has no document boundaries")
    corpus = load_corpus(d.corpus, data_dir=d.data_dir)
    # The character vocabulary comes from the whole text (as nanoGPT does), so the validation split never holds
    # an unknown character; BPE merges are learned from the training split only.
    if tokenizer is None:
        train_text = split_text(corpus.text, d.val_fraction)[0]
        tokenizer = _grown_or_trained(config, base_tokenizer, corpus.text,
                                      corpus.text if d.tokenizer == "char" else train_text)
    check_vocab(config, tokenizer)
    splits = prepared_corpus_splits(config, corpus, tokenizer)
    seq_len = seq_len_of(config)
    for split, name in (("train", "training"), ("val", "validation")):
        if len(splits[split]) < seq_len + 1:
            raise DataError(f"the {name} split of {corpus.name} has {len(splits[split])} tokens, fewer than the "
                            f"context of {seq_len} + 1; use a shorter train.seq_len / model.max_len or a bigger corpus")
    return CorpusDataset(corpus, tokenizer, seq_len, splits, order=d.order)


def _prepared_large_file(config, path: Path, tokenizer: Tokenizer | None) -> str:
    """Where a text file too large to read whole is prepared, on first use, into the cache as `llm prepare FILE`
    would prepare it: streamed; every 1/data.val_fraction-th 64 K piece held out; a tokenizer of data.tokenizer's
    kind trained on a bounded sample, or the run's own `tokenizer`."""
    d = config.data
    root = _prepared_root(config)
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


def _prepared_root(config) -> Path:
    """Where texts are prepared on first use: data.cache_dir, else $LLM_CACHE_DIR/prepared."""
    return Path(config.data.cache_dir) if config.data.cache_dir else cache_dir() / "prepared"


def _unwritable(root: Path, e: OSError) -> DataError:
    """A file in the way, no permission, a full disk."""
    return DataError(f"{root}: cannot write prepared tokens there ({e.strerror or e}); set data.cache_dir (or "
                     "LLM_CACHE_DIR) to a writable directory")


def _prepared_with(path: Path, tokenizer: Tokenizer) -> bool:
    return is_prepared(path) and PreparedData.open(path).tokenizer.fingerprint() == tokenizer.fingerprint()


def prepared_corpus_splits(config, corpus: Corpus, tokenizer: Tokenizer) -> dict[str, ShardedTokens | np.ndarray]:
    """A plain text's train and val tokens, prepared on first use (`prepare_corpus`) into the cache: a directory
    per (text, tokenizer, data.val_fraction) under data.cache_dir, else $LLM_CACHE_DIR/prepared."""
    d = config.data
    root = _prepared_root(config)
    key = hashlib.sha256(f"{corpus.sha256}\n{tokenizer.fingerprint()}\n{d.val_fraction!r}".encode()).hexdigest()
    try:
        manifest = prepare_corpus(corpus, tokenizer, root / key[:32], d.val_fraction)
    except OSError as e:
        raise _unwritable(root, e) from None
    data = PreparedData(root / key[:32], manifest, tokenizer)
    return {split: data.tokens(split) if manifest["splits"][split]["tokens"] else np.zeros(0, np.uint16)
            for split in SPLITS}


def build_eval_dataset(config, spec: str, split: str, tokenizer: Tokenizer, *, max_tokens: int = 0) -> Dataset:
    """What `llm eval` measures a run (its config and tokenizer) on: `spec` is the run's own data spec or another
    corpus / task:NAME; `split` (val, train or all) picks a corpus's part (tasks and records use their held-out
    examples); max_tokens > 0 cuts a corpus split to that many targets."""
    d = config.data
    if spec == d.synthetic and spec:
        return _task_dataset(config, spec, n_eval_batches=max(config.train.eval_batches, 1))
    if spec.startswith("task:") or (spec == d.sft and spec):
        _, held_out, corpus = sft_records(config, spec)
        template = ChatTemplate()
        template.check_tokenizer(tokenizer)
        rows = SFTDataset.from_records(held_out, tokenizer, seq_len_of(config), template, pack=False, name=spec)
        return RecordsDataset(corpus, tokenizer, {"val": rows}, held_out, template)
    large = large_text_file(spec)
    if is_prepared(spec) or large:
        if split not in SPLITS:
            raise ConfigError(f"eval.corpus={spec!r}: a prepared dataset has the splits {', '.join(SPLITS)}, "
                              f"not {split!r}")
        if large:
            spec = _prepared_large_file(config, large, tokenizer)
        return _prepared_dataset(config, spec, tokenizer, (split,), max_tokens=max_tokens)
    corpus = load_corpus(spec, data_dir=d.data_dir)
    try:
        splits = prepared_corpus_splits(config, corpus, tokenizer)
    except ValueError as err:  # characters a char tokenizer has never seen
        raise ConfigError(f"eval.corpus={spec!r}: the run's tokenizer cannot encode it ({err})") from None
    tokens = splits[split] if split != "all" else ShardedTokens(
        [t for s in SPLITS if len(splits[s]) for t in _shards(splits[s])])
    if max_tokens:
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ConfigError(f"eval.corpus={spec!r}, split {split}: fewer than 2 tokens")
    return CorpusDataset(corpus, tokenizer, seq_len_of(config), {split: tokens})


def sft_records(config, spec: str | None = None) -> tuple[list[dict], list[dict], Corpus]:
    """The records of `spec` (default data.sft), (train, held out): a JSONL file (its last data.val_fraction held
    out) or a built-in task ('task:num2words', 'task:dates', 'task:fields'; generated from the seed, disjoint
    splits); and the records as a corpus (JSON lines), for the manifest's checksum."""
    d = config.data
    spec = spec or d.sft
    if spec.startswith("task:"):
        name = spec[len("task:"):]
        if name not in tasks_lib.TASKS:
            raise ConfigError(f"data.sft={spec!r}: unknown task; choose one of "
                              f"{', '.join('task:' + t for t in tasks_lib.TASKS)} or a JSONL file")
        train = tasks_lib.generate(name, d.sft_train_examples, config.seed, split="train")
        val = tasks_lib.generate(name, d.sft_eval_examples, config.seed, split="test")
        provenance = f"generated by llm.data.tasks ({name}, seed {config.seed})"
    else:
        records = load_records(spec)
        n_val = max(1, int(len(records) * d.val_fraction))
        if len(records) < 2:
            raise DataError(f"{spec}: {len(records)} record(s); need at least 2 (training and held out)")
        train, val = records[:-n_val], records[-n_val:]
        provenance = f"{Path(spec).absolute()}"
    text = "\n".join(json.dumps(r, sort_keys=True) for r in train + val)
    return train, val, Corpus.from_text(spec, text, provenance)


def check_vocab(config, tokenizer: Tokenizer) -> None:
    """ConfigError when model.vocab_size is set below the tokenizer's vocabulary."""
    vocab = config.model.vocab_size
    if vocab is not None and vocab < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's vocabulary "
                          f"({tokenizer.vocab_size}); leave it unset (None) to take the tokenizer's size")


def _records_dataset(config, tokenizer: Tokenizer | None, base_tokenizer: Tokenizer | None) -> RecordsDataset:
    d = config.data
    train, held_out, corpus = sft_records(config)
    template = ChatTemplate()
    if tokenizer is None:
        train_text = _records_text(train)
        full_text = train_text + "\n" + _records_text(held_out)
        tokenizer = _grown_or_trained(config, base_tokenizer, full_text,
                                      full_text if d.tokenizer == "char" else train_text)
        tokenizer = template.prepare_tokenizer(tokenizer, train + held_out)
    check_vocab(config, tokenizer)
    seq_len = seq_len_of(config)
    rows = {split: SFTDataset.from_records(records, tokenizer, seq_len, template, pack=d.sft_pack,
                                           name=f"{d.sft} ({name})")
            for split, records, name in (("train", train, "train"), ("val", held_out, "held out"))}
    return RecordsDataset(corpus, tokenizer, rows, held_out, template)


def _prepared_dataset(config, path: str, tokenizer: Tokenizer | None, splits: tuple[str, ...], *,
                      max_tokens: int = 0) -> PreparedDataset:
    """A prepared directory's splits. Its own tokenizer encoded them: a run's tokenizer (resuming, evaluating)
    must be the same one."""
    data = PreparedData.open(path)
    if tokenizer is not None and tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise DataError(f"{path}: prepared with another tokenizer than this run's ({data.tokenizer.kind}, vocabulary "
                        f"{data.tokenizer.vocab_size}); use the dataset the run was trained on")
    check_vocab(config, data.tokenizer)
    tokens = {split: data.tokens(split) for split in splits}
    if max_tokens:
        tokens = {split: t[: max_tokens + 1] for split, t in tokens.items()}
    seq_len = seq_len_of(config)
    for split, t in tokens.items():
        if len(t) < seq_len + 1:
            raise DataError(f"{path}: the {split} split has {len(t)} tokens, fewer than the context of {seq_len} "
                            "+ 1; use a shorter train.seq_len / model.max_len or prepare more documents")
    manifest_text = (Path(path) / MANIFEST).read_text()
    corpus = Corpus(str(path), "", hashlib.sha256(manifest_text.encode()).hexdigest(),
                    f"prepared by llm prepare ({path}/{MANIFEST})")
    return PreparedDataset(corpus, data.tokenizer, seq_len, tokens, order=config.data.order,
                           source=json.loads(manifest_text), pack_documents=config.data.pack_documents)


def _mixture_dataset(config, tokenizer: Tokenizer | None) -> MixtureDataset:
    parts = parse_mixture(config.data.mixture)
    for path, _ in parts:
        if not is_prepared(path):
            raise DataError(f"data.mixture: {path} is not a prepared dataset; make it with `llm prepare`")
    components = [_prepared_dataset(config, path, tokenizer, SPLITS) for path, _ in parts]
    first = components[0].tokenizer.fingerprint()
    for (path, _), c in zip(parts, components, strict=True):
        if c.tokenizer.fingerprint() != first:
            raise DataError(f"data.mixture: {path} was prepared with another tokenizer than {parts[0][0]}; prepare "
                            "every component with the same --tokenizer FILE")
    return MixtureDataset(components, [w for _, w in parts], pack_documents=config.data.pack_documents)


def _task_dataset(config, spec: str, *, n_eval_batches: int) -> TaskDataset:
    """A synthetic task: its batches come from (seed, step); its tokenizer maps each id to one character."""
    try:
        task = make_task(spec, seq_len_of(config), n_eval_batches=n_eval_batches)
    except ValueError as e:
        raise ConfigError(f"data.synthetic={spec!r}: {e}") from None
    corpus = Corpus.from_text(spec, task.spec, "generated on the fly by llm.data.synthetic")
    dataset = TaskDataset(corpus, task.tokenizer(), task)
    check_vocab(config, dataset.tokenizer)
    return dataset


def _grown_or_trained(config, base: Tokenizer | None, full_text: str, source: str) -> Tokenizer:
    """`base` grown by the characters of `full_text` it lacks (char tokenizers), or a tokenizer of data.tokenizer's
    kind trained on `source`."""
    d = config.data
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
