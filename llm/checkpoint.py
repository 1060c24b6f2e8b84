"""Orbax checkpoints of the train state: asynchronous saves, the latest N kept plus the best by validation loss.

Each checkpoint step directory holds two items: `state` (the TrainState pytree, StandardSave) and `meta`
(JSON: step, validation loss, wall time). The run's config, tokenizer and manifest live beside the
checkpoints in the workdir (see llm/run.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with this project's retention policy."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=preservation,
                                               enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    def save(self, step: int, state: Any, *, meta: dict[str, Any], val_loss: float | None = None) -> None:
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the lowest validation loss (None when no checkpoint has one)."""
        best = None
        for step in self.manager.all_steps():
            meta = self.restore_meta(step)
            if meta.get("val_loss") is not None and (best is None or meta["val_loss"] < best[1]):
                best = (step, meta["val_loss"])
        return None if best is None else best[0]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state at `step`, laid out like `abstract_state` (shapes, dtypes, shardings), and its meta."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def restore_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
