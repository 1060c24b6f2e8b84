"""metrics.jsonl holds each step once, however often a run was stopped and started again."""

import json
from collections import Counter

import pytest

from llm.training import TrainHooks, train


class Crash(Exception):
    pass


class CrashAfter(TrainHooks):
    """Ends the process's work abruptly (as a SIGKILL would: no checkpoint, no flush) after `step` steps."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, done, wait_for_saves):
        if done == self.step:
            raise Crash


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("crash_at", [7, 13], ids=["before-first-checkpoint", "after-it"])
def test_a_restarted_run_logs_each_step_once(tiny, tmp_path, crash_at):
    # log_every 5, eval and checkpoint every 10, 20 steps: the crash at 7 leaves step 5's row and no checkpoint
    # (the run starts over); the one at 13 leaves rows up to 10 and the checkpoint of step 10 (it resumes there).
    with pytest.raises(Crash):
        train(tiny, tmp_path / "run", log=lambda *_: None, hooks=CrashAfter(crash_at))
    assert any(r["step"] < crash_at for r in rows(tmp_path / "run"))  # the crashed attempt did log
    result = train(tiny, tmp_path / "run", log=lambda *_: None)
    assert result.step == 20
    logged = rows(tmp_path / "run")
    kinds = Counter((r["step"], "loss" in r, "val_loss" in r) for r in logged)
    assert kinds == Counter({(5, True, False): 1, (10, True, False): 1, (15, True, False): 1, (20, True, False): 1,
                             (10, False, True): 1, (20, False, True): 1}), logged
