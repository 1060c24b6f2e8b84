"""Evaluation runs (`llm eval`): a trained run's loss, perplexity and bits per byte on a corpus split, and for
supervised tasks the held-out examples' completion loss and task metrics of greedy generations.

What is measured is the `eval` section of a config: the run's own, or that of another experiment file given
with --config (so one file can declare the evaluators for many runs):

    eval.corpus       '' = the run's own data; else a corpus spec (path, tinyshakespeare, ...) or task:NAME
    eval.split        val | train | all (corpora; tasks always use their held-out split)
    eval.max_tokens   evaluate at most this many tokens of the split (0: all of it)
    eval.metrics      task metrics ('exact_match,chrf,bleu,rouge_l'; see llm/metrics.py)
    eval.max_examples, eval.max_new_tokens   how many held-out examples are generated, and how long

Results go to <workdir>/eval/<name>-step<N>.json and are printed as a table.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from llm import metrics as metrics_lib
from llm import run as run_lib
from llm.data import ChatTemplate, SFTDataset, load_corpus, sequential_batches, split_text
from llm.inference import LoadedRun, load_run
from llm.model.config import ConfigError
from llm.sampling import generate
from llm.train import EXTRA_KEYS, evaluate, make_eval_step


def run_evaluation(workdir: str | Path, eval_config: ConfigDict | None = None, *, checkpoint: str = "latest",
                   batch_size: int = 16, log=print) -> dict[str, Any]:
    """Evaluate the run in `workdir` as `eval_config` (default: the run's own eval section) says; returns the
    results (also written as JSON under workdir/eval/)."""
    run = load_run(workdir, checkpoint)
    e = eval_config if eval_config is not None else run.config.eval
    spec = e.corpus or (run.config.data.synthetic or run.config.data.sft or run.config.data.corpus)
    seq_len = run.config.train.seq_len or run.model.cfg.max_len
    results: dict[str, Any] = {"workdir": str(Path(workdir).absolute()), "step": run.step, "checkpoint": checkpoint,
                               "data": spec, "created": datetime.datetime.now(datetime.UTC).isoformat(
                                   timespec="seconds")}
    eval_step = make_eval_step(run.model)
    if spec == run.config.data.synthetic and spec:
        results.update(_synthetic_eval(run, spec, seq_len, batch_size, eval_step))
    elif spec.startswith("task:") or (spec == run.config.data.sft and spec):
        results.update(_sft_eval(run, e, spec, seq_len, batch_size, eval_step))
    else:
        results.update(_corpus_eval(run, e, spec, seq_len, batch_size, eval_step))
    out_dir = Path(workdir) / "eval"
    out_dir.mkdir(exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.split("/")[-1])[:60]
    path = out_dir / f"{name}-step{run.step}.json"
    run_lib._atomic_write(path, json.dumps(results, indent=2))
    results["path"] = str(path)
    log(format_table(results))
    return results


def _corpus_eval(run: LoadedRun, e: ConfigDict, spec: str, seq_len: int, batch_size: int, eval_step):
    """Mean next-token loss over non-overlapping windows covering the split; bits per byte over the UTF-8 bytes
    of the target tokens (so it compares across tokenizers)."""
    corpus = load_corpus(spec, data_dir=run.config.data.data_dir)
    train_text, val_text = split_text(corpus.text, run.config.data.val_fraction)
    text = {"val": val_text, "train": train_text, "all": corpus.text}[e.split]
    try:
        tokens = run.tokenizer.encode(text)
    except ValueError as err:  # characters a char tokenizer has never seen
        raise ConfigError(f"eval.corpus={spec!r}: the run's tokenizer cannot encode it ({err})") from None
    if e.max_tokens:
        tokens = tokens[: e.max_tokens + 1]
    if len(tokens) < 2:
        raise ConfigError(f"eval.corpus={spec!r}, split {e.split}: fewer than 2 tokens")
    total, count, n_bytes = 0.0, 0.0, 0
    for x, y, w in sequential_batches(np.asarray(tokens, np.int32), batch_size=batch_size,
                                      seq_len=min(seq_len, len(tokens) - 1)):
        s, c = eval_step(run.params, x, y, {"weights": w})
        total, count = total + float(s), count + float(c)
        n_bytes += len(run.tokenizer.decode(y[w > 0]).encode("utf-8"))
    loss = total / count
    return {"kind": "corpus", "split": e.split, "tokens": int(count), "bytes": n_bytes, "loss": loss,
            "perplexity": metrics_lib.perplexity(loss),
            "bits_per_byte": metrics_lib.bits_per_byte(loss, int(count), n_bytes)}


def _synthetic_eval(run: LoadedRun, spec: str, seq_len: int, batch_size: int, eval_step):
    """The task's held-out batches: loss and accuracy at the answer positions."""
    from llm.data import make_synthetic_task
    from llm.train import make_accuracy_step

    task = make_synthetic_task(spec, seq_len, n_eval_batches=max(run.config.train.eval_batches, 1))
    batches = [(b["inputs"], b["targets"], {k: b[k] for k in EXTRA_KEYS}) for b in task.eval_batches(batch_size)]
    accuracy_step = make_accuracy_step(run.model)
    correct = count = 0.0
    for x, y, extras in batches:
        c, n = accuracy_step(run.params, x, y, extras)
        correct, count = correct + float(c), count + float(n)
    loss = evaluate(eval_step, run.params, batches)
    return {"kind": "synthetic", "answers": int(count), "loss": loss, "perplexity": metrics_lib.perplexity(loss),
            "metrics": {"accuracy": correct / max(count, 1.0)}}


def _sft_eval(run: LoadedRun, e: ConfigDict, spec: str, seq_len: int, batch_size: int, eval_step):
    """The held-out records' completion loss, then greedy generations scored by the task metrics."""
    config = run.config.copy_and_resolve_references()
    config.data.sft = spec
    _, records, _ = run_lib.sft_records(config)
    template = ChatTemplate()
    template.check_tokenizer(run.tokenizer)
    dataset = SFTDataset.from_records(records, run.tokenizer, seq_len, template, pack=False, name=spec)
    batches = ((b["inputs"], b["targets"], {k: b[k] for k in EXTRA_KEYS}) for b in dataset.eval_batches(batch_size))
    loss = evaluate(eval_step, run.params, batches)
    records = records[: e.max_examples]
    prompts, refs = zip(*(template.prompt_and_reference(r) for r in records), strict=True)
    preds = []
    for i in range(0, len(prompts), batch_size):
        chunk = [run.tokenizer.encode(p) for p in prompts[i:i + batch_size]]
        outs = generate(run.model, run.params, chunk, max_new_tokens=e.max_new_tokens, temperature=0.0,
                        eos_id=run.tokenizer.eos_id)
        for out in outs:
            text = run.tokenizer.decode(out[out != run.tokenizer.eos_id])
            preds.append(text.strip())
    names = [m.strip() for m in e.metrics.split(",") if m.strip()]
    scores = metrics_lib.compute(names, preds, [r.strip() for r in refs])
    return {"kind": "sft", "examples": len(records), "completion_tokens": dataset.num_tokens_trained,
            "loss": loss, "perplexity": metrics_lib.perplexity(loss), "metrics": scores,
            "samples": [{"prompt": p, "prediction": q, "reference": r}
                        for p, q, r in list(zip(prompts, preds, refs, strict=True))[:5]]}


def format_table(results: dict[str, Any]) -> str:
    rows = [("run", results["workdir"]), ("step", str(results["step"])), ("data", results["data"])]
    if results["kind"] == "corpus":
        rows += [("split", results["split"]), ("tokens", f"{results['tokens']:,}"),
                 ("loss", f"{results['loss']:.4f}"), ("perplexity", f"{results['perplexity']:.3f}"),
                 ("bits per byte", f"{results['bits_per_byte']:.4f}")]
    elif results["kind"] == "synthetic":
        rows += [("answer positions", f"{results['answers']:,}"), ("loss", f"{results['loss']:.4f}"),
                 ("accuracy", f"{results['metrics']['accuracy']:.4f}")]
    else:
        rows += [("held-out examples", str(results["examples"])), ("completion loss", f"{results['loss']:.4f}"),
                 ("perplexity", f"{results['perplexity']:.3f}")]
        rows += [(k, f"{v:.4f}" if not math.isnan(v) else "nan") for k, v in results["metrics"].items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    if results.get("path"):
        lines.append(f"written to {results['path']}")
    return "\n".join(lines)

