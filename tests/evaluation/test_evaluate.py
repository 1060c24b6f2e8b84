"""`llm eval`: corpus loss / perplexity / bits per byte, and task metrics of an SFT run's generations."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from conftest import LM_RUN, numpy_cross_entropy, tiny_config

from llm.cli import main
from llm.evaluation import run_evaluation
from llm.runs import load_run
from llm.training import train

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run):
    """`lm`: conftest's LM_RUN (a plain language model); `sft`: an SFT run on the dates task."""
    tmp = tmp_path_factory.mktemp("eval")
    shutil.copytree(trained_run(**LM_RUN), tmp / "lm")  # a copy: evaluations write their results into the run
    config = tiny_config(tmp, **{"train.steps": 10, "model.max_len": 64, "sample.num_samples": 0})
    config.data.sft = "task:dates"
    config.data.sft_train_examples, config.data.sft_eval_examples = 100, 12
    config.eval.max_examples, config.eval.max_new_tokens = 6, 8
    train(config, tmp / "sft", **QUIET)
    return tmp


def test_corpus_loss_and_bits_per_byte(runs):
    results = run_evaluation(runs / "lm", batch_size=4, **QUIET)
    run = load_run(runs / "lm")
    # An independent count: the whole validation split in non-overlapping windows of the context.
    from llm.data import load_corpus, split_text

    text = split_text(load_corpus(run.config.data.corpus).text, run.config.data.val_fraction)[1]
    ids = np.asarray(run.tokenizer.encode(text), np.int32)
    t = run.model.cfg.max_len
    forward = jax.jit(lambda x: run.model.apply({"params": run.params}, x))
    total = 0.0
    for start in range(0, len(ids) - 1, t):
        x, y = ids[start:start + t][None], ids[start + 1:start + 1 + t][None]
        x = x[:, : y.shape[1]]
        total += numpy_cross_entropy(forward(x), y)[0]
    assert results["tokens"] == len(ids) - 1
    assert results["loss"] == pytest.approx(total / (len(ids) - 1), rel=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]))
    assert text.isascii()  # so one character = one byte = one token, and bits per byte = loss / ln 2
    assert results["bits_per_byte"] == pytest.approx(results["loss"] / math.log(2), rel=1e-6)
    saved = json.loads(open(results["path"]).read())
    assert saved["loss"] == results["loss"] and saved["step"] == LM_RUN["train.steps"]


def test_sft_run_metrics_and_cli(runs, capsys):
    assert main(["eval", "--workdir", str(runs / "sft"), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "exact_match" in out and "chrf" in out and "held-out examples" in out and "| loss" in out
    (path,) = (runs / "sft" / "eval").glob("*.json")
    results = json.loads(path.read_text())
    assert results["kind"] == "sft" and results["examples"] == 6 and len(results["samples"]) == 5
    assert set(results["metrics"]) == {"exact_match", "chrf", "rouge_l"}
    assert all(0 <= v <= 100 for v in results["metrics"].values())
    sample = results["samples"][0]
    assert sample["prompt"].startswith("date to") and sample["prompt"].endswith("\n")  # as trained: prompt, completion


def test_eval_on_another_corpus_and_bad_flags(runs, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("the cat sat on the mat " * 200)
    assert main(["eval", "--workdir", str(runs / "lm"), "--corpus", str(other), "--split", "all"]) == 0
    assert "bits per byte" in capsys.readouterr().out
    assert main(["eval", "--workdir", str(runs / "lm"), "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
    assert main(["eval", "--workdir", str(runs / "lm"), "--split", "test"]) == 2
    assert "invalid choice: 'test'" in capsys.readouterr().err


def test_unknown_task_metrics_are_refused_before_anything_is_measured(runs, tmp_path, capsys):
    experiment = tmp_path / "bad_metrics.py"
    experiment.write_text("from llm.config import get_base_config\n\n\ndef get_config():\n    c = get_base_config()\n"
                          "    c.eval.metrics = 'exact_match,bleurt'\n    return c\n")
    before = sorted((runs / "sft" / "eval").glob("*")) if (runs / "sft" / "eval").exists() else []
    assert main(["eval", "--workdir", str(runs / "sft"), "--config", str(experiment)]) == 2
    assert "eval.metrics: unknown bleurt; choose among exact_match, bleu, chrf, rouge_l" in capsys.readouterr().err
    assert (sorted((runs / "sft" / "eval").glob("*")) if (runs / "sft" / "eval").exists() else []) == before
