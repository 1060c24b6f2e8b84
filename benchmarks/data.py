"""Preparing large corpora: time and peak resident memory of `llm prepare`, and of a run's first step on the result.

    python -m benchmarks.data                       # 250 MB and 1 GB generated corpora, 8k BPE, then a run on 200 MB
    python -m benchmarks.data --sizes-mb 50 --train-mb 0    # quick

Each size: a generated text file (words of a 30,000-word Zipf vocabulary in sentences and paragraphs, written in
16 MB blocks), then `llm prepare FILE --tokenizer bpe --vocab_size 8192 --val_fraction 0.001` in a fresh process
(a BPE trained on its default 64 MB sample, then every byte tokenized by one worker per core). Peak memory is the
peak of the summed resident memory of the process and all its children (the tokenizing workers), sampled from
/proc every 50 ms.
`--train-mb N`: `llm train` (5 steps, the default model with the BPE vocabulary) on the prepared N MB corpus,
and on the N MB text file itself (`data.corpus=FILE`: prepared on first use, then trained on), each timed until
its first logged step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import record

BLOCK = 16 << 20


def write_corpus(path: Path, n_bytes: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    lengths = rng.integers(2, 10, size=30_000)
    vocab = np.array(["".join(rng.choice(letters, size=n)) for n in lengths])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    written = 0
    with path.open("w") as f:
        while written < n_bytes:
            words = vocab[rng.choice(len(vocab), size=BLOCK // 6, p=p)]
            words[rng.random(len(words)) < 0.07] = "the end.\n"  # sentences and paragraph breaks
            block = " ".join(words)[: n_bytes - written]
            f.write(block)
            written += len(block)


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_measured(cmd: list[str], until=None) -> dict:
    """Run `cmd`: wall seconds (until `until()` first holds, then the process is stopped, if given) and the peak
    resident memory of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, reached = [0], [None]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            if until is not None and reached[0] is None and until():
                reached[0] = time.perf_counter() - start
                proc.terminate()
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    rc = proc.wait()
    sampler.join()
    ok = reached[0] is not None if until is not None else rc == 0
    seconds = reached[0] if until is not None and ok else time.perf_counter() - start
    return {"seconds": round(seconds, 1), "peak_rss_mb": peak[0] >> 20, "ok": ok,
            **({} if ok else {"error": output[-800:]})}


def first_step_logged(workdir: Path):
    def check() -> bool:
        metrics = workdir / "metrics.jsonl"
        return metrics.is_file() and '"step": 1' in metrics.read_text()
    return check


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", default="250,1024")
    p.add_argument("--train-mb", type=int, default=200)
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        tmp = Path(tmp)
        os.environ["LLM_CACHE_DIR"] = str(tmp / "cache")  # the runs' prepared text files go there, and go
        sizes = [int(s) for s in a.sizes_mb.split(",") if s] + ([a.train_mb] if a.train_mb else [])
        for mb in dict.fromkeys(sizes):
            corpus = tmp / f"corpus-{mb}mb.txt"
            t = time.perf_counter()
            write_corpus(corpus, mb << 20)
            print(f"{mb} MB corpus written in {time.perf_counter() - t:.0f} s", flush=True)
            row = run_measured([sys.executable, "-m", "llm.cli", "prepare", str(corpus), "--out",
                                str(tmp / f"prep-{mb}"), "--tokenizer", "bpe", "--vocab_size", "8192",
                                "--val_fraction", "0.001", "--no_progress"])
            rows.append({"case": f"prepare {mb} MB", "mb": mb, **row})
            print(rows[-1], flush=True)
            if mb == a.train_mb:
                row = run_measured([sys.executable, "-m", "llm.cli", "train", "--workdir", str(tmp / "run"),
                                    f"--config.data.corpus={tmp / f'prep-{mb}'}", "--config.train.steps=5",
                                    "--config.train.log_every=1", "--config.train.progress=False"],
                                   until=first_step_logged(tmp / "run"))
                rows.append({"case": f"train on {mb} MB prepared: to the first step", "mb": mb, **row})
                print(rows[-1], flush=True)
                # The case: the plain file as data.corpus, prepared on first use into the cache.
                row = run_measured([sys.executable, "-m", "llm.cli", "train", "--workdir", str(tmp / "run-file"),
                                    f"--config.data.corpus={corpus}", "--config.data.tokenizer=bpe",
                                    "--config.data.vocab_size=8192", "--config.train.steps=5",
                                    "--config.train.log_every=1", "--config.train.progress=False"],
                                   until=first_step_logged(tmp / "run-file"))
                rows.append({"case": f"train on the {mb} MB text file: to the first step", "mb": mb, **row})
                print(rows[-1], flush=True)
            corpus.unlink()
    write_results(rows, a, Path(a.out))


def write_results(rows: list[dict], a, out: Path) -> None:
    meta = record.machine(record.command_line("data", None), device=False)
    lines = ["# llm prepare on generated corpora", "", record.machine_line(meta), "",
             "| case | seconds | MB/s | peak RSS (MB) |", "| --- | --- | --- | --- |"]
    for r in rows:
        rate = f"{r['mb'] / r['seconds']:.1f}" if r["case"].startswith("prepare") and r["ok"] else "-"
        lines.append(f"| {r['case']} | {r['seconds'] if r['ok'] else 'failed'} | {rate} | {r['peak_rss_mb']} |")
    record.write_results(out / "data_cpu", {"meta": meta, "rows": rows}, "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
