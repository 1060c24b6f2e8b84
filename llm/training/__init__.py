"""The training job: config -> checks -> workdir -> restored or fresh state -> compiled steps -> metrics,
checkpoints, samples.

    result = train(config, "runs/x")            # or `llm train --config experiments/X.py --workdir runs/x`

setup.py checks everything before the first write and starts the workdir; trainer.py is the loop in named parts;
steps.py the compiled step; health.py, preemption.py and hooks.py the fault monitor, the stop signals and the
tests' seam; finetune.py starting from another model; progress.py what a run reports as it goes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from llm.config.sampling import SamplingParams
from llm.inference import sample_texts
from llm.training.hooks import NO_HOOKS, TrainHooks
from llm.training.preemption import StopSignals
from llm.training.setup import open_workdir, plan_run
from llm.training.trainer import Trainer

__all__ = ["TrainHooks", "TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    workdir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    samples: list[str]
    wall_time: float
    stopped_by: str | None = None  # the signal that stopped the run early (it resumes when started again)
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient, over the whole run
    rollbacks: int = 0
    state: Any = dataclasses.field(default=None, repr=False)  # the final train state, laid out on the run's mesh


def train(config: ConfigDict, workdir: str | Path, *, log: Callable[[str], None] = print, stop_after: int | None = None,
          resume_anyway: bool = False, overwrite: bool = False, hooks: TrainHooks = NO_HOOKS) -> TrainResult:
    """Train (or resume) the experiment `config` in `workdir`; returns the final losses and samples.

    stop_after: end this invocation after that many steps (with a checkpoint), as if interrupted; running
      again resumes. Used by tests and by time-sliced schedulers.
    resume_anyway: continue a run whose saved config differs from `config` (the old config is kept as a .bak).
    overwrite: delete the run in `workdir` first.
    hooks: the tests' seam into the loop (llm/training/hooks.py); production runs leave it alone.

    SIGTERM / SIGINT stop the run after the current step with a checkpoint (result.stopped_by names the signal).
    """
    t_start = time.time()
    plan = plan_run(config, workdir, log=log, hooks=hooks, resume_anyway=resume_anyway, overwrite=overwrite)
    lock = open_workdir(plan)
    try:
        with StopSignals(plan.log, sigterm=jax.process_count() == 1) as signals:
            trainer = Trainer(plan, hooks=hooks, signals=signals)
            trainer.run(stop_after)
    finally:
        if lock is not None:
            lock.release()
    samples = _samples_after_training(plan, trainer)
    steps = config.train.steps
    if not trainer.last_eval and trainer.start >= steps:
        plan.log(f"{plan.workdir} already holds a finished run of {steps} steps")
    return TrainResult(plan.workdir, int(trainer.state.step), trainer.last_eval.get("train_loss"),
                       trainer.last_eval.get("val_loss"), samples, time.time() - t_start, trainer.stopped_by,
                       trainer.counters["skipped_steps"], trainer.counters["rollbacks"], trainer.state)


def _samples_after_training(plan, trainer: Trainer) -> list[str]:
    """config.sample's texts from the finished model, for runs on running text; sampling gathers the tokens on one
    host, so only in single-process runs (use `llm sample` afterwards)."""
    sc = plan.config.sample
    finished = trainer.stopped_by is None and trainer.step == plan.config.train.steps
    if not (sc.num_samples and plan.dataset.continues_text and finished and jax.process_count() == 1):
        return []
    sampling = SamplingParams(sc.temperature, sc.top_k, sc.top_p, sc.max_new_tokens, sc.seed)
    samples = sample_texts(trainer.model, trainer.state.params, plan.dataset.tokenizer, [sc.prompt] * sc.num_samples,
                           sampling)
    for i, text in enumerate(samples):
        plan.log(f"--- sample {i + 1} ---\n{text}")
    return samples
