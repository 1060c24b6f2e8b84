"""Evaluation runs (`llm eval`): a trained run's loss and perplexity on a dataset, bits per byte where the targets
are text, the answers' accuracy for synthetic tasks, and task metrics of greedy generations for supervised records.

What is measured is the `eval` section of a config: the run's own, or that of another experiment file given
with --config (so one file can declare the evaluators for many runs):

    eval.corpus       '' = the run's own data (a mixture: each component, and all of them as one); else a corpus
                      spec (path, tinyshakespeare, ...) or task:NAME
    eval.split        val | train | all (corpora; records and tasks always use their held-out examples)
    eval.max_tokens   evaluate at most this many tokens of the split (0: all of it)
    eval.metrics      task metrics ('exact_match,chrf,bleu,rouge_l'; see llm/evaluation/metrics.py)
    eval.max_examples, eval.max_new_tokens   how many held-out examples are generated, and how long

Results go to <workdir>/eval/<name>-step<N>.json and are printed as a table.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from llm.config.sampling import SamplingParams
from llm.data import build_eval_dataset, eval_data_spec
from llm.data.dataset import Dataset
from llm.data.mixture import MixtureDataset
from llm.evaluation import metrics as metrics_lib
from llm.files import write_json
from llm.inference import generate, make_accuracy_step, make_eval_step, score
from llm.runs import EVAL_DIR, LoadedRun, load_run


def run_evaluation(workdir: str | Path, eval_config: ConfigDict | None = None, *, checkpoint: str = "latest",
                   batch_size: int = 16, log=print) -> dict[str, Any]:
    """Evaluate the run in `workdir` as `eval_config` (default: the run's own eval section) says; returns the
    results (also written as JSON under workdir/eval/)."""
    run = load_run(workdir, checkpoint)
    e = eval_config if eval_config is not None else run.config.eval
    metrics_lib.metric_names(e.metrics)  # before anything is measured
    own = run.run.data
    spec = own if not e.corpus or e.corpus == own.source else eval_data_spec(e.corpus)
    dataset = build_eval_dataset(run.run, spec, e.split, run.tokenizer, max_tokens=e.max_tokens)
    results: dict[str, Any] = {
        "workdir": str(Path(workdir).absolute()), "step": run.step, "checkpoint": checkpoint, "data": spec.source,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "kind": dataset.kind,
        **(measure_mixture if spec.kind == "mixture" else measure)(run, dataset, e, batch_size)}
    out_dir = Path(workdir) / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.source.split("/")[-1])[:60]
    path = out_dir / f"{name}-step{run.step}.json"
    write_json(path, results, indent=2)
    results["path"] = str(path)
    log(format_table(results))
    return results


def measure(run: LoadedRun, dataset: Dataset, e: ConfigDict, batch_size: int) -> dict[str, Any]:
    """The numbers: loss and perplexity over every target of the split, and what the dataset supports on top."""
    split = e.split if e.split in dataset.full_splits else "val"  # records and tasks: their held-out examples
    accuracy = make_accuracy_step(run.model) if dataset.answer_accuracy else None
    scores = score(make_eval_step(run.model), run.params, dataset.full_batches(split, batch_size),
                   accuracy_step=accuracy)
    out: dict[str, Any] = {"split": split, "loss": scores["loss"], "perplexity": metrics_lib.perplexity(scores["loss"])}
    tokens, n_bytes = target_sizes(dataset, split, batch_size)
    out["tokens"] = tokens
    if dataset.text_targets:
        out.update(bytes=n_bytes, bits_per_byte=metrics_lib.bits_per_byte(scores["loss"], tokens, n_bytes))
    metrics = {"accuracy": scores["accuracy"]} if "accuracy" in scores else {}
    examples = dataset.generation_examples()[: e.max_examples]
    if examples:
        names = metrics_lib.metric_names(e.metrics)
        predictions = greedy_answers(run, [p for p, _ in examples], e.max_new_tokens, batch_size)
        references = [r.strip() for _, r in examples]
        metrics.update(metrics_lib.compute(names, predictions, references))
        out["examples"] = len(examples)
        out["samples"] = [{"prompt": p, "prediction": q, "reference": r}
                          for (p, r), q in list(zip(examples, predictions, strict=True))[:5]]
    if metrics:
        out["metrics"] = metrics
    return out


def measure_mixture(run: LoadedRun, dataset: MixtureDataset, e: ConfigDict, batch_size: int) -> dict[str, Any]:
    """Each component's numbers, and the loss over all their targets as one (each target once, so components
    weigh by their tokens, not by the mixture's sampling weights)."""
    parts = {c.corpus.name: measure(run, c, e, batch_size) for c in dataset.components}
    tokens = sum(p["tokens"] for p in parts.values())
    loss = sum(p["loss"] * p["tokens"] for p in parts.values()) / tokens
    n_bytes = sum(p["bytes"] for p in parts.values())
    split = next(iter(parts.values()))["split"]
    return {"split": split, "loss": loss, "perplexity": metrics_lib.perplexity(loss), "tokens": tokens,
            "bytes": n_bytes, "bits_per_byte": metrics_lib.bits_per_byte(loss, tokens, n_bytes), "components": parts}


def target_sizes(dataset: Dataset, split: str, batch_size: int) -> tuple[int, int]:
    """(targets that count, their UTF-8 bytes when decoded) over the split: the denominators of the mean loss and of
    bits per byte (which compares across tokenizers)."""
    tokens = n_bytes = 0
    for batch in dataset.full_batches(split, batch_size):
        counted = batch["weights"] > 0 if "weights" in batch else batch["targets"] >= 0
        tokens += int(counted.sum())
        if dataset.text_targets:
            n_bytes += len(dataset.tokenizer.decode(batch["targets"][counted]).encode("utf-8"))
    return tokens, n_bytes


def greedy_answers(run: LoadedRun, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """The greedy continuation of each prompt, up to the end-of-text token, stripped."""
    tok = run.tokenizer
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    answers = []
    for i in range(0, len(prompts), batch_size):
        chunk = [tok.encode(p) for p in prompts[i:i + batch_size]]
        for out in generate(run.model, run.params, chunk, sampling, eos_id=tok.eos_id):
            answers.append(tok.decode(out[out != tok.eos_id]).strip())
    return answers


def format_table(results: dict[str, Any]) -> str:
    """The results as a two-column markdown table: whatever was measured."""
    rows = [("run", results["workdir"]), ("step", str(results["step"])), ("data", results["data"])]
    for key, label, fmt in (("split", "split", "{}"), ("examples", "held-out examples", "{}"),
                            ("tokens", "tokens", "{:,}"), ("loss", "loss", "{:.4f}"),
                            ("perplexity", "perplexity", "{:.3f}"), ("bits_per_byte", "bits per byte", "{:.4f}")):
        if key in results:
            rows.append((label, fmt.format(results[key])))
    rows += [(k, f"{v:.4f}" if not math.isnan(v) else "nan") for k, v in results.get("metrics", {}).items()]
    rows += [(f"loss of {name}", f"{part['loss']:.4f} ({part['tokens']:,} tokens)")
             for name, part in results.get("components", {}).items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    if results.get("path"):
        lines.append(f"written to {results['path']}")
    return "\n".join(lines)
