"""llm sweep / llm report: the sweep helpers, and a tiny sweep end to end (subprocess runs, resume, Slurm script)."""

import csv
import json
import os
import shutil
import subprocess

import pytest

from llm.cli import main
from llm.config import apply_overrides, get_base_config
from llm.errors import ConfigError
from llm.sweep import runner, spec
from tests.conftest import make_corpus


def test_product_zip_chain():
    runs = spec.product(**{"model.position": ["rope", "alibi"], "seed": [0, 1]})
    assert runs == [{"model.position": "rope", "seed": 0}, {"model.position": "rope", "seed": 1},
                    {"model.position": "alibi", "seed": 0}, {"model.position": "alibi", "seed": 1}]
    assert spec.zip_(**{"optim.lr": [1e-3, 3e-4], "train.steps": [10, 20]}) == [
        {"optim.lr": 1e-3, "train.steps": 10}, {"optim.lr": 3e-4, "train.steps": 20}]
    with pytest.raises(ValueError, match="differ in length"):
        spec.zip_(a=[1, 2], b=[1])
    with pytest.raises(ValueError, match="list of values"):
        spec.product(seed=3)
    assert spec.chain(spec.product(seed=[0]), [{"optim.lr": 0.1}]) == [{"seed": 0}, {"optim.lr": 0.1}]


def test_run_names():
    assert spec.run_name({"model.position": "rope", "seed": 0}) == "position=rope,seed=0"
    assert spec.run_name({"optim.lr": 0.0003}) == "lr=0.0003"
    assert spec.run_name({}) == "base"
    assert spec.run_name({"a.x": 1, "b.x": 2}) == "a.x=1,b.x=2"  # same last component: the full keys
    assert "/" not in spec.run_name({"data.corpus": "/some/dir/file.txt"})
    long = spec.run_name({"data.corpus": "x" * 300})
    assert len(long) <= spec.MAX_NAME_CHARS and long != spec.run_name({"data.corpus": "x" * 299})
    names = spec.run_names([{"model.position": "ro/pe"}, {"model.position": "ro pe"}, {"seed": 0}])
    assert names == ["position=ro-pe", "position=ro-pe-2", "seed=0"]
    assert spec.run_name({"model.position": "rope"}) == spec.run_name({"model.position": "rope"})  # stable


def test_apply_overrides():
    base = get_base_config()
    c = apply_overrides(base, {"model.position": "rope", "seed": 3, "optim.lr": 1, "train.seq_len": 16})
    assert (c.model.position, c.seed, c.optim.lr, c.train.seq_len) == ("rope", 3, 1.0, 16)
    assert base.model.position == "learned" and base.seed == 0  # the base is not changed
    for overrides, message in [({"model.nope": 1}, "unknown config key model.nope; keys in model: activation"),
                               ({"nope.x": 1}, "unknown config key nope.x; keys in the config"),
                               ({"seed.x": 1}, "not a section"),
                               ({"model": 1}, "is a section"),
                               ({"model.n_layers": 1.5}, "must be int, got float"),
                               ({"model.position": 3}, "must be str"),
                               ({"seed": True}, "must be int, got bool"),
                               ({"optim.lr": -1.0}, "optim.lr must be positive"),
                               ({"model.position": "xx"}, "is not one of")]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides(base, overrides)
    assert spec.override_flags({"model.position": "rope", "optim.lr": 0.001, "train.progress": False}) == [
        "--config.model.position=rope", "--config.optim.lr=0.001", "--config.train.progress=false"]


EXPERIMENT = """
from llm import sweep
from llm.config import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.data.corpus = {corpus!r}
    c.data.cache_dir = {cache!r}
    c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.max_len = 1, 32, 4, 32
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.eval_every = 4
    c.train.eval_batches = 1
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.train.progress = False
    c.optim.warmup_steps = 1
    c.sample.num_samples = 0
    return c


def get_sweep(arg=None):
    if arg == "invalid":
        return [{{"optim.lr": -1.0}}]
    return sweep.chain(sweep.product(**{{"model.position": ["rope", "alibi"], "seed": [0]}}),
                       [{{"data.corpus": {missing!r}}}])
"""


@pytest.fixture
def experiment(tmp_path):
    corpus = make_corpus(tmp_path / "corpus.txt", n_chars=5000)
    path = tmp_path / "exp.py"
    path.write_text(EXPERIMENT.format(corpus=str(corpus), cache=str(tmp_path / "cache"),
                                      missing=str(tmp_path / "no-such-corpus.txt")))
    return path


def _records(sweep_dir):
    return {r["name"]: r for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]}


def test_invalid_override_is_recorded_without_running(experiment, tmp_path, capsys):
    sweep_dir = tmp_path / "bad"
    assert main(["sweep", f"{experiment}:invalid", "--workdir", str(sweep_dir)]) == 1
    (record,) = _records(sweep_dir).values()
    assert record["status"] == "failed" and record["exit_code"] == 2
    assert "optim.lr must be positive" in record["stderr_tail"]
    assert not (sweep_dir / record["name"]).exists()
    assert main(["sweep", str(experiment), "--workdir", str(sweep_dir), "--only", "nope"]) == 2
    assert "no such run" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_end_to_end(experiment, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    names = ["position=rope,seed=0", "position=alibi,seed=0"]

    assert main(["sweep", str(experiment), "--workdir", str(sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 run(s)" in out and all(n in out for n in names) and not sweep_dir.exists()

    assert main(["sweep", str(experiment), "--workdir", str(sweep_dir), "--parallel", "2"]) == 1
    records = _records(sweep_dir)
    assert [r["status"] for r in records.values()] == ["done", "done", "failed"]
    bad = list(records.values())[2]
    assert bad["exit_code"] == 2 and "no-such-corpus" in bad["stderr_tail"]
    for name in names:
        assert runner.finished_step(sweep_dir / name) == 4
        config = json.loads((sweep_dir / name / "config.json").read_text())
        assert config["model"]["position"] == name.split(",")[0].split("=")[1]

    # Again: the finished runs are skipped (not trained again), the failed one is tried again.
    capsys.readouterr()
    assert main(["sweep", str(experiment), "--workdir", str(sweep_dir), "--only", names[0]]) == 0
    assert "skipped" in capsys.readouterr().out
    assert _records(sweep_dir)[names[0]]["status"] == "skipped"

    assert main(["report", str(sweep_dir)]) == 0
    md = (sweep_dir / "report.md").read_text()
    assert "model.position" in md and "final_val_loss" in md and "data.corpus" in md
    with (sweep_dir / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [*names, list(records)[2]]
    assert rows[0]["model.position"] == "rope" and float(rows[0]["final_val_loss"]) > 0
    assert int(rows[0]["params"]) > 0 and float(rows[0]["tokens_per_s"]) > 0
    assert rows[2]["status"] == "failed" and rows[2]["final_val_loss"] == ""
    for png in ("curves.png", "variants.png"):
        assert (sweep_dir / png).read_bytes()[:4] == b"\x89PNG"

    # The Slurm job array script runs locally: task 0 trains run 0 again from scratch.
    assert main(["sweep", str(experiment), "--workdir", str(sweep_dir), "--emit", "slurm"]) == 0
    script = (sweep_dir / "sweep.slurm").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --requeue" in script and "TERM@120" in script
    shutil.rmtree(sweep_dir / names[0])
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.run(["bash", str(sweep_dir / "sweep.slurm")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert runner.finished_step(sweep_dir / names[0]) == 4
    assert _records(sweep_dir)[names[0]]["status"] == "done"


def test_named_runs_and_the_attention_ablation_sweep_is_valid():
    from pathlib import Path

    from llm.sweep.runner import load_sweep
    from llm.sweep.spec import run_name

    assert run_name({"_name": "mqar 256/gqa", "seed": 0}) == "mqar-256-gqa"
    spec = str(Path(__file__).resolve().parents[2] / "experiments" / "attention_ablation.py")
    _, runs = load_sweep(spec)
    assert len(runs) == 19 and len({r.name for r in runs}) == 19
    assert [r.error for r in runs if r.error] == []  # every override set passes the config validation
    assert all("_name" not in r.overrides for r in runs)
    assert {r.config.model.n_kv_heads for r in runs if r.name.startswith("mqar256-")} == {None, 2, 1}
    # The same overrides as the command-line flags a run gets give the same config (None values included).
    from llm.cli.train import parse_train
    from llm.sweep.spec import override_flags

    for r in runs:
        config, _, _ = parse_train(["--config", spec, *override_flags(r.overrides)])
        assert config.to_dict() == r.config.to_dict(), r.name


def test_report_variants_group_seeds_by_name_and_show_accuracy():
    from llm.sweep.report import variants

    def run(name, seed, loss, acc=None, **overrides):
        return {"name": name, "overrides": {"seed": seed, **overrides}, "config": {}, "final_val_loss": loss,
                "final_val_accuracy": acc}

    runs = [run("mqar-mha-s0", 0, 1.0, 0.5, x=1), run("mqar-mha-s1", 1, 3.0, 0.7, x=1),
            run("plain", 0, 2.0, x=2)]
    assert variants(runs) == [("mqar-mha", 2.0, 2 ** 0.5, 2), ("x=2", 2.0, 0.0, 1)]
    [(label, mean, std, n)] = variants(runs, "final_val_accuracy")  # "plain" logs no accuracy
    assert (label, n) == ("mqar-mha", 2) and mean == pytest.approx(0.6) and std == pytest.approx(0.02 ** 0.5)


def test_bad_parallel_is_refused_before_anything_is_written(tmp_path, capsys):
    from pathlib import Path

    from llm.cli import main

    spec = str(Path(__file__).resolve().parents[2] / "experiments" / "attention_ablation.py")
    assert main(["sweep", spec, "--workdir", str(tmp_path / "s"),
                 "--parallel", "0"]) == 2
    assert "--parallel must be >= 1" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_parallel_runs_share_an_accelerator_without_preallocating_it(monkeypatch):
    from llm.sweep.runner import run_env

    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert run_env(2)["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in run_env(1)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's choice stands
    assert run_env(2)["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def test_the_mixers_sweep_is_valid_and_the_report_plots_recall_against_state(tmp_path):
    """experiments/mixers_mqar.py: both stages' runs pass config validation with the flags a run gets; the
    report's state column is each model's decoding state and the state figure groups runs by mixer."""
    from pathlib import Path

    import experiments.mixers_mqar as mq
    from llm.model.config import ModelConfig
    from llm.model.mixers import decode_state_size, state_size
    from llm.sweep.report import RECALL_FIGURES, mixer_label, recall_points
    from llm.sweep.runner import load_sweep

    spec = str(Path(__file__).resolve().parents[2] / "experiments" / "mixers_mqar.py")
    _, runs = load_sweep(spec + ":lr")
    assert len(runs) == len(mq.MIXERS) * len(mq.LR_GRID) and not [r.error for r in runs if r.error]
    _, stage2 = load_sweep(spec)
    assert len(stage2) == len(mq.MIXERS) * len(mq.WIDTHS) * len(mq.SEEDS) and not [r.error for r in stage2 if r.error]
    assert {r.name for r in runs} >= {r.name for r in stage2 if "-d64-s0-" in r.name}  # stage 1 runs reused

    gla = ModelConfig(vocab_size=8, max_len=256, d_model=64, n_layers=2, n_heads=4, mixer="gla")
    assert decode_state_size(gla) == 2 * state_size(gla, "gla") == 2 * 4 * 16 * 16
    window = ModelConfig(vocab_size=8, max_len=256, d_model=64, n_layers=2, n_heads=4, window=64)
    assert decode_state_size(window) == 2 * 2 * 64 * 64  # keys and values of the window, per layer

    def run(mixer, state, acc, width, **config):
        return {"config": {"model.mixer": mixer, "model.d_model": width, **config}, "state": state,
                "final_val_accuracy": acc}

    runs = [run("gla", 10, 0.2, 64), run("gla", 10, 0.4, 64), run("gla", 40, 0.9, 128),
            run("attention", 100, 1.0, 64, **{"model.window": 64})]
    assert mixer_label(runs[-1]) == "window64"
    (_, by_state, *_), (_, by_width, *_) = RECALL_FIGURES
    points = recall_points(runs, by_state)
    assert points["gla"][0][:2] == (10, pytest.approx(0.3)) and points["gla"][1] == (40, 0.9, 0.0, 1)
    assert recall_points(runs, by_width)["window64"] == [(64, 1.0, 0.0, 1)]
    assert recall_points(runs[:2], by_state) == {}  # one state: no figure
