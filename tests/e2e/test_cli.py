"""The `llm` command: train and sample end to end, and one-line errors with exit code 2 for user mistakes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_run_flags

from llm.cli import main

REPO = Path(__file__).resolve().parents[2]


def tiny_flags(tmp: Path) -> list[str]:
    return [*tiny_run_flags(tmp), "--config.sample.num_samples=1", "--config.sample.max_new_tokens=5"]


def run_llm(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "llm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.mark.slow
def test_train_and_sample_subprocesses(tmp_path):
    """The real commands, as a user runs them: train prints samples; sample continues several prompts."""
    out = run_llm("train", "--workdir", str(tmp_path / "run"), *tiny_flags(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "--- sample 1 ---" in out.stdout and "done: step 6" in out.stdout
    out = run_llm("sample", "--workdir", str(tmp_path / "run"), "--prompt", "the cat", "--prompt", "a",
                  "--max-new-tokens", "7", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    assert "--- sample 2 (step 6) ---" in out.stdout and "the cat" in out.stdout


def test_sample_options_in_process(trained, capsys):
    assert main(["sample", "--workdir", str(trained / "run"), "--prompt", "sat", "--max-new-tokens", "4",
                 "--top-k", "3", "--top-p", "0.9", "--seed", "3", "--checkpoint", "best"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 1


def test_none_overrides_reach_nullable_fields():
    """--config.a.b=None sets a field whose default is None (ml_collections alone would parse int('None'))."""
    from llm.cli.train import parse_train

    config, _, _ = parse_train(["--config", "experiments/attention_ablation.py", "--config.model.n_kv_heads=2",
                                 "--config.model.window=None", "--config.model.n_kv_heads=None"])
    assert config.model.n_kv_heads is None and config.model.window is None
    config, _, _ = parse_train(["--config.model.window=None", "--config.model.window=8"])
    assert config.model.window == 8  # the last one wins


def test_help():
    assert main(["--help"]) == 0
    assert main([]) == 0


@pytest.mark.parametrize("args, message", [
    (["fly"], "unknown command 'fly'"),
    (["train", "--config.model.n_layers=abc"], "n_layers"),
    (["train", "--config.model.colour=blue"], "colour"),
    (["train", "--config", "/nonexistent/exp.py"], "/nonexistent/exp.py"),
    (["train", "--config.model.d_model=130"], "not divisible by model.n_heads"),
    (["train", "--config.optim.name=adam"], "adamw, sgd, lion, adafactor"),
    (["train", "--config.data.corpus=/no/such/file.txt"], "/no/such/file.txt"),
    (["sample", "--workdir", "/no/such/run"], "does not exist"),
    (["sample", "--workdir", "{run}", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["sample", "--workdir", "{run}", "--prompt", "the cat " * 5], "does not fit the model's context of 32"),
    (["sample", "--workdir", "{run}", "--prompt", "Zebra ☃"], "not in this char tokenizer's vocabulary: 'Z', '☃'"),
    (["sample", "--workdir", "{run}", "--checkpoint", "77"], "checkpoint '77' not found"),
    (["sample", "--workdir", "{run}", "--top-p", "1.5"], "--top-p must be in"),
])
def test_user_errors_are_one_line_exit_2(trained, tmp_path, capsys, args, message):
    args = [a.replace("{run}", str(trained / "run")) for a in args]
    if args[0] == "train":  # a tiny run, should a case wrongly pass validation
        args += ["--workdir", str(tmp_path / "run"), "--config.train.steps=1", "--config.train.progress=False"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
