"""Batches per second from a prepared dataset: llm's memory-mapped loader against Grain (MaxText's loader).

    python -m benchmarks.loader [DIR] [--batch 16] [--seq 1024] [--batches 300]

DIR is a prepared dataset (`llm prepare`); without one, a 64 MB generated corpus (benchmarks/data.py's) is
prepared with an 8k BPE into a temporary directory first. Rows are windows of seq+1 tokens; each loader makes
`--batches` batches of `--batch` rows, int32 [B, T] inputs and targets, timed after a 10-batch warm-up:

  llm          PreparedDataset.batch(seed, step): random windows from (seed, step), read from the memmapped shards
  llm+prefetch the same through llm.data.prefetch.Prefetcher (one background thread, 2 ahead), as `llm train` reads
  llm passes   data.order=passes: every window once per pass, in a Feistel-shuffled order
  grain        grain.MapDataset over the windows: shuffle(seed), batch, to_iter_dataset() with 2 prefetch threads
  grain-mp     grain.DataLoader over the same source with an IndexSampler and 2 worker processes

Needs `pip install grain` (not a dependency of llm).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import record


class Windows:
    """Grain's random-access source: window i of the train split, as (inputs, targets)."""

    def __init__(self, path: str, seq: int):
        from llm.data.corpora.prepared import PreparedData

        self.tokens, self.seq = PreparedData.open(path).tokens("train"), seq

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq

    def __getitem__(self, i: int):
        w = np.asarray(self.tokens[np.arange(i * self.seq, i * self.seq + self.seq + 1)], np.int32)
        return {"inputs": w[:-1], "targets": w[1:]}


def timed(batches, n: int) -> float:
    for _ in range(10):
        next(batches)
    t = time.perf_counter()
    for _ in range(n):
        b = next(batches)
        assert b["inputs"].dtype == np.int32
    return n / (time.perf_counter() - t)


def llm_batches(path, batch, seq, prefetch, order="random"):
    from llm.config import get_base_config, resolve
    from llm.data.build import build_dataset
    from llm.data.prefetch import Prefetcher

    c = get_base_config()
    c.data.corpus, c.model.max_len, c.data.order = path, seq, order
    dataset = build_dataset(resolve(c))
    if not prefetch:
        return (dataset.batch(0, s, batch) for s in range(10**9))
    p = Prefetcher(lambda s: dataset.batch(0, s, batch))
    return (p.get(s) for s in range(10**9))


def grain_batches(path, batch, seq, workers):
    import grain

    source = Windows(path, seq)
    if workers:
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags, which no main() parsed here
        sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=0, num_epochs=None,
                                              shard_options=grain.sharding.NoSharding())
        loader = grain.DataLoader(data_source=source, sampler=sampler, operations=[grain.transforms.Batch(batch)],
                                  worker_count=workers)
        return iter(loader)
    ds = grain.MapDataset.source(source).shuffle(seed=0).repeat().batch(batch)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", help="a prepared dataset (default: a generated 64 MB one)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if a.dataset is None:
            a.dataset = generated_dataset(Path(tmp))
        rows = measure(a)
    write_results(rows, Path(a.out))


def generated_dataset(tmp: Path) -> str:
    from benchmarks.data import write_corpus
    from llm.data.corpora.prepare import PrepareSettings, prepare

    write_corpus(tmp / "corpus.txt", 64 << 20)
    prepare(PrepareSettings(sources=[str(tmp / "corpus.txt")], out=str(tmp / "prepared"), vocab_size=8192,
                            val_fraction=0.01), progress=False)
    return str(tmp / "prepared")


def measure(a) -> list[dict]:
    makers = {"llm": lambda: llm_batches(a.dataset, a.batch, a.seq, False),
              "llm+prefetch": lambda: llm_batches(a.dataset, a.batch, a.seq, True),
              "llm passes": lambda: llm_batches(a.dataset, a.batch, a.seq, False, "passes"),
              "grain": lambda: grain_batches(a.dataset, a.batch, a.seq, 0),
              "grain-mp": lambda: grain_batches(a.dataset, a.batch, a.seq, 2)}
    rows = []
    for name, make in makers.items():
        rate = timed(make(), a.batches)
        rows.append({"loader": name, "batches_per_s": round(rate, 1),
                     "tokens_per_s": round(rate * a.batch * a.seq)})
        print(rows[-1], flush=True)
    return rows


def write_results(rows: list[dict], out: Path) -> None:
    meta = record.machine(record.command_line("loader", None), device=False)
    lines = ["# Loaders on a prepared dataset", "", record.machine_line(meta), "",
             "| loader | batches/s | tokens/s |", "| --- | --- | --- |"]
    lines += [f"| {r['loader']} | {r['batches_per_s']} | {r['tokens_per_s']:,} |" for r in rows]
    record.write_results(out / "loader_cpu", {"meta": meta, "rows": rows}, "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
