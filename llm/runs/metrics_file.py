"""metrics.jsonl, a run's log of numbers: one JSON object per line, each with the "step" it belongs to (and, for
events such as a rollback, an "event" name). `read_metrics` is the one reader; `MetricsLog` the one writer (it also
writes the scalars to TensorBoard)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from llm.files import write_text
from llm.runs.layout import METRICS_FILE, TENSORBOARD_DIR


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (an absent file has none); lines that are not a JSON object with a "step"
    (a last line cut short by a kill) are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class MetricsLog:
    """Appends records to workdir/metrics.jsonl and their numbers to TensorBoard.

    resume_step: the run continues from this checkpoint step (0: it starts from the beginning), so records of
      later steps (written before a crash or preemption, and about to be made again) are dropped, as is a last
      line cut short by a kill: every step is in the log once.
    enabled: False in every process but the one that writes the run's files.
    """

    def __init__(self, workdir: Path, enabled: bool = True, resume_step: int = 0):
        self.path = Path(workdir) / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            # A run starting from step 0 makes every record again, step 0's (a fine-tune's source) included.
            kept = [r for r in read_metrics(self.path) if resume_step and r["step"] <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            summary_writer = import_summary_writer()
        except ImportError:  # tensorboardX is a dependency, but logging must never stop a run
            return
        self.tb = summary_writer(str(Path(workdir) / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else 0)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """One record of numbers at `step` (also to TensorBoard)."""
        self._append({"step": step, **metrics})
        if self.enabled and self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)

    def event(self, step: int, event: str, **details: Any) -> None:
        """A record of something that happened at `step` (e.g. a rollback), not plotted."""
        self._append({"step": step, "event": event, **details})

    def _append(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def import_summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch, where it is installed,
    only to recognise torch tensors (this log writes Python numbers), and that import takes seconds of every run's
    start. A process that has already imported torch keeps it."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects where it is absent
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter
