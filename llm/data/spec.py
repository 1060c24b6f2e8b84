"""What a run's data is, resolved once from an experiment's `data` section (or an `llm eval` data argument): the
one place that tells a plain text, a prepared directory, a text too large to read whole, a mixture, supervised
records and a synthetic task apart, and refuses the settings that do not apply to the kind found.

    spec = data_spec(config.data)            # DataSpec(kind='mixture', source='a:0.5,b:0.5', parts=(...))
    spec = eval_data_spec("task:num2words")  # what `llm eval --corpus` names

Nothing is read but the file system's metadata (is it a prepared directory, how large is the file); data that
is gone is an error of the job that reads it, not of the spec.
"""

from __future__ import annotations

import dataclasses

from llm.data.corpora.corpus import large_text_file
from llm.data.corpora.prepared import is_prepared
from llm.data.mixture import parse_mixture
from llm.errors import ConfigError

# kind      source                              trains on
# text      a corpus name, builtin:, or a file  its first 1 - data.val_fraction of characters (nanoGPT's split)
# large     a text file over 128 MB             its shards, prepared on first use into the cache (streamed)
# prepared  an `llm prepare` output directory   its train shards
# mixture   'DIR:W,DIR:W' (data.mixture)        rows drawn from prepared directories by weight
# sft       a JSONL file or task:NAME           supervised records (data.sft)
# synthetic a task spec (data.synthetic)        batches generated from (seed, step)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    kind: str
    source: str  # the string that names it (data.corpus, data.mixture, data.sft or data.synthetic)
    parts: tuple[tuple[str, float], ...] = ()  # a mixture's prepared directories and normalised weights


def data_spec(d) -> DataSpec:
    """The data a (validated) `data` section names; ConfigError / DataError (one line) for settings that do not
    apply to it or a mixture that cannot be read."""
    if d.synthetic:  # validate_config refuses data.sft beside it
        spec = DataSpec("synthetic", d.synthetic)
    elif d.sft:
        spec = DataSpec("sft", d.sft)
    elif d.mixture:
        # The option's check (validate_config) has parsed it already; whether each part is a prepared dataset is
        # checked when it is read, so a trained run samples and serves after its data is gone.
        spec = DataSpec("mixture", d.mixture, tuple(parse_mixture(d.mixture)))
    else:
        spec = corpus_spec(d.corpus)
    if d.order != "random" and spec.kind not in ("text", "large", "prepared"):
        raise ConfigError(f"data.order={d.order!r} applies to a corpus or a prepared dataset, not to "
                          f"data.{spec.kind}; leave it 'random'")
    if d.pack_documents and spec.kind == "text":
        raise ConfigError("data.pack_documents needs a prepared dataset (data.corpus or data.mixture naming "
                          "`llm prepare` output): a plain text has no document boundaries")
    return spec


def corpus_spec(source: str) -> DataSpec:
    """A corpus string: a prepared directory, a text too large to read whole, or a text."""
    if is_prepared(source):
        return DataSpec("prepared", source)
    if large_text_file(source):
        return DataSpec("large", source)
    return DataSpec("text", source)


def eval_data_spec(source: str) -> DataSpec:
    """What `eval.corpus` (`llm eval --corpus`) names: task:NAME records, or a corpus."""
    return DataSpec("sft", source) if source.startswith("task:") else corpus_spec(source)

