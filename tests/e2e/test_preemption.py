"""Real `llm train` processes stopped by SIGTERM / SIGINT and killed by SIGKILL (between steps and in the
middle of an asynchronous checkpoint write) resume to parameters bit-identical to an unbroken run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import cpu_devices_env, make_corpus

from llm.errors import ExitCode
from llm.runs import load_run
from llm.runs.checkpoints import TMP_MARKER

pytestmark = pytest.mark.slow  # real `llm` processes: minutes on 2 cores (-m 'not slow' skips them)

EXIT_PREEMPTED = ExitCode.PREEMPTED
FAULTS = Path(__file__).parents[1] / "faults.py"  # `llm` with injected faults (tests/faults.py)

STEPS = 40


def flags(tmp: Path, workdir: Path) -> list[str]:
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        make_corpus(corpus)
    return ["train", f"--workdir={workdir}", f"--config.data.corpus={corpus}",
            f"--config.data.cache_dir={tmp / 'cache'}", "--config.model.n_layers=1", "--config.model.d_model=32",
            "--config.model.max_len=32", f"--config.train.steps={STEPS}", "--config.train.eval_every=20",
            "--config.train.eval_batches=1", "--config.train.batch_size=4", "--config.train.checkpoint_every=5",
            "--config.train.log_every=1", "--config.train.progress=False", "--config.model.dropout=0.1",
            "--config.sample.num_samples=0"]


def launch(args, faults: str = "") -> subprocess.Popen:
    """A real `llm` process; with `faults`, through tests/faults.py (the production command reads no faults)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [str(FAULTS), faults] if faults else ["-m", "llm.cli"]
    return subprocess.Popen([sys.executable, *command, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def logged_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}") and '"loss"' in x]


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = load_run(a).params, load_run(b).params
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unbroken")
    code, out = finish(launch(flags(tmp, tmp / "run")))
    assert code == 0, out
    return tmp / "run"


def stop_with(sig: int, workdir: Path, args: list[str]) -> tuple[int, str]:
    """Start a slowed-down run, send `sig` once it has logged a few steps, and wait for it."""
    start = max(logged_steps(workdir), default=0)
    proc = launch(args, faults="sleep_ms=40")
    deadline = time.time() + 240
    while max(logged_steps(workdir), default=0) < start + 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)
    proc.send_signal(sig)
    return finish(proc)


def test_sigterm_and_sigint_stop_with_a_checkpoint_and_resume_exactly(tmp_path, unbroken):
    run = tmp_path / "run"
    args = flags(tmp_path, run)
    code, out = stop_with(signal.SIGTERM, run, args)
    assert code == EXIT_PREEMPTED, out
    assert "received SIGTERM" in out and "run the same command to resume" in out and "Traceback" not in out
    first = max(logged_steps(run))
    assert f"checkpoint at step {first}" in out  # the step it stopped at, saved even off the checkpoint interval
    code, out = stop_with(signal.SIGINT, run, args)
    assert code == EXIT_PREEMPTED, out
    assert "received SIGINT" in out and f"at step {first}" in out  # resumed where it stopped
    code, out = finish(launch(args))
    assert code == 0, out
    assert_same_params(run, unbroken)
    steps = logged_steps(run)
    assert steps == list(range(1, STEPS + 1))  # every step logged once: no gap, no repeat


def test_sigkill_between_steps_and_during_a_save_resumes_exactly(tmp_path, unbroken):
    run = tmp_path / "run"
    args = flags(tmp_path, run)
    code, out = finish(launch(args, faults="kill_after_step=7"))
    assert code == -signal.SIGKILL, out
    code, out = finish(launch(args, faults="kill_in_save=20"))
    assert code == -signal.SIGKILL, out
    assert "at step 5" in out  # resumed from the checkpoint before the kill
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if TMP_MARKER in p.name]
    assert leftovers and all(p.startswith("20.") for p in leftovers), leftovers  # killed mid-write
    assert not (run / "checkpoints" / "20").exists()
    code, out = finish(launch(args))
    assert code == 0, out
    assert "removing 1 partial checkpoint write(s)" in out and "at step 15" in out
    assert not [p for p in (run / "checkpoints").iterdir() if TMP_MARKER in p.name]
    assert_same_params(run, unbroken)
    assert logged_steps(run) == list(range(1, STEPS + 1))


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
    """Multi-process: JAX's preemption service spreads one process's SIGTERM, so both save the same step."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    args = [*flags(tmp_path, run), "--config.train.steps=400", "--config.train.checkpoint_every=1000",
            "--config.distributed.enabled=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2"]
    env = cpu_devices_env(1)
    # Process 1 looks at the workdir late, after process 0 could have begun writing the run into it: it must
    # still judge the run new (a barrier holds the first write back until every process has looked).
    faults = ["sleep_ms=30", "sleep_ms=30;start_delay_ms=1500"]
    procs = [subprocess.Popen([sys.executable, str(FAULTS), faults[i], *args, f"--config.distributed.process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    deadline = time.time() + 240
    while len(logged_steps(run)) < 3:
        if not all(p.poll() is None for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            outs = [f"--- process {i} (exit {p.wait()}):\n{p.stdout.read()}" for i, p in enumerate(procs)]
            pytest.fail("a process ended (or none logged 3 steps in 240 s) before the SIGTERM:\n" + "\n".join(outs))
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [EXIT_PREEMPTED] * 2, results
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 400
    assert f"stopped by preemption notice at step {saved[0]}" in results[0][1]
    assert load_run(run).step == saved[0]
