"""metrics.jsonl holds each step once, however often a run was stopped and started again; TensorBoard gets the
same numbers."""

import json
import struct
import subprocess
import sys
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


def test_tensorboard_gets_the_numbers_and_the_run_does_not_import_torch(tmp_path):
    """The scalars land in TensorBoard's event file (read back here record by record, without tensorboardX's
    writer), and tensorboardX does not pull in PyTorch (installed with the test extras): seconds of every start."""
    script = ("import sys; from pathlib import Path; from llm.runs.metrics_file import MetricsLog\n"
              "log = MetricsLog(Path(sys.argv[1])); log.write(3, {'loss': 2.5, 'lr': 0.125, 'note': 'text'})\n"
              "log.close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stderr[-2000:]
    from tensorboardX.proto.event_pb2 import Event

    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    data, scalars = events.read_bytes(), {}
    while data:  # TFRecord: u64 length, u32 crc, payload, u32 crc
        n = struct.unpack("<Q", data[:8])[0]
        event = Event.FromString(data[12:12 + n])
        scalars |= {(v.tag, event.step): v.simple_value for v in event.summary.value}
        data = data[12 + n + 4:]
    assert scalars == {("loss", 3): 2.5, ("lr", 3): 0.125}
