"""Orbax checkpoints of the train state: asynchronous saves, the latest N kept plus the best by validation loss,
checksummed arrays, and a restore that falls back past damaged checkpoints.

Each checkpoint step directory holds two items: `state` (the TrainState pytree, StandardSave) and `meta`
(JSON: step, validation loss, wall time, and a checksum of every array of the state). Orbax commits a step by
renaming its temporary directory, so a process killed mid-save leaves only a `*.orbax-checkpoint-tmp*`
directory, which the next start removes.

Orbax itself restores an array file whose bytes were changed in place without complaint, so `restore` recomputes
the checksums of what it read and compares them with the meta. A checkpoint that fails (checksum mismatch, or
files Orbax cannot read) is moved out of the way to `<workdir>/damaged-checkpoints/` (never deleted) and the
previous one is tried. A checkpoint made for another model shape is not damage: it raises CheckpointError.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from llm.errors import CheckpointError, one_line
from llm.parallel.distributed import sync_processes
from llm.runs.layout import DAMAGED_DIR

TMP_MARKER = ".orbax-checkpoint-tmp"

__all__ = ["TMP_MARKER", "CheckpointError", "Checkpointer", "DamagedCheckpoint", "checksums"]


class DamagedCheckpoint(Exception):
    """A checkpoint whose bytes are not what was saved."""


# ------------------------------------------------------------------------------------------------------------
# checksums


def _words(x: jax.Array) -> jax.Array:
    """The array's bytes as uint32 words (1- and 2-byte elements widened, 8-byte ones split)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _array_checksum(x: jax.Array) -> jax.Array:
    """Two 32-bit sums of the mixed words, plain and position-weighted (mod 2^32: exact in any order, so the
    result does not depend on how the array is sharded). A changed word changes the plain sum; a moved one the
    weighted sum."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(w.ndim)):  # flat position from iotas: no reshape of a sharded array
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride)
        stride *= w.shape[d]
    m = w * jnp.uint32(0x9E3779B1)  # odd: a bijection of uint32, then mix the high bits down
    m = m ^ (m >> 15)
    return jnp.stack([jnp.sum(m, dtype=jnp.uint32), jnp.sum(m * (index + 1), dtype=jnp.uint32)])


@jax.jit
def _tree_checksums(tree: Any) -> Any:
    return jax.tree_util.tree_map(_array_checksum, tree)


def checksums(tree: Any) -> dict[str, str]:
    """{leaf path: 16 hex digits} for every array of `tree`, computed where the arrays live."""
    sums = _tree_checksums(tree)
    out = {}
    for path, value in jax.tree_util.tree_leaves_with_path(sums):
        # Replicated result: any local shard holds the whole value (also in multi-process runs).
        host = np.asarray(value.addressable_data(0)) if isinstance(value, jax.Array) else np.asarray(value)
        out[jax.tree_util.keystr(path)] = f"{int(host[0]):08x}{int(host[1]):08x}"
    return out


# ------------------------------------------------------------------------------------------------------------


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with this project's retention policy and integrity checks."""

    def __init__(self, directory: str | Path, *, keep: int = 2, async_save: bool = True,
                 log: Callable[[str], None] = lambda _: None, read_only: bool = False):
        """read_only: only look (no directory made, no partial writes removed): for checks before a run starts."""
        self.directory = Path(directory).absolute()
        self.log = log
        self.removed_partial = [] if read_only else self._partial_writes()
        if self.removed_partial:
            log(f"removing {len(self.removed_partial)} partial checkpoint write(s) left by an interrupted save: "
                f"{', '.join(p.name for p in self.removed_partial)}")
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:  # Orbax warns that a read-only manager will not save: that is the point
            absl_logger.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(preservation_policy=preservation,
                                                   enable_async_checkpointing=async_save, create=not read_only,
                                                   cleanup_tmp_directories=not read_only, read_only=read_only)
            self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)
        finally:
            absl_logger.setLevel(level)

    def _partial_writes(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if TMP_MARKER in p.name)

    def save(self, step: int, state: Any, *, meta: dict[str, Any], val_loss: float | None = None) -> None:
        """Start an asynchronous save of `state` at `step`; `meta` gets the state's checksums added."""
        metrics = None if val_loss is None else {"val_loss": float(val_loss)}
        meta = {**meta, "checksums": checksums(state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the lowest validation loss (None when no checkpoint has one)."""
        best = None
        for step in self.all_steps():
            try:
                meta = self.restore_meta(step)
            except Exception:  # a damaged meta is found (and reported) when the state is restored
                continue
            if meta.get("val_loss") is not None and (best is None or meta["val_loss"] < best[1]):
                best = (step, meta["val_loss"])
        return None if best is None else best[0]

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state at `step`, laid out like `abstract_state` (shapes, dtypes, shardings), and its meta.

        Raises CheckpointError when the checkpoint holds another model's arrays, DamagedCheckpoint when its
        bytes fail the checksums or cannot be read.
        """
        self.check_structure(step, abstract_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax/TensorStore raise many types for unreadable files
            raise DamagedCheckpoint(f"step {step}: cannot be read ({one_line(e, 200)})") from e
        state, meta = restored.state, dict(restored.meta)
        saved = meta.get("checksums")
        if saved is None:
            raise DamagedCheckpoint(f"step {step}: its meta has no checksums")
        now = checksums(state)
        bad = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if bad:
            raise DamagedCheckpoint(f"step {step}: {len(bad)} array(s) differ from what was saved "
                                    f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        return state, meta

    def restore_latest_good(self, abstract_state: Any, *, at_most: int | None = None
                            ) -> tuple[Any, dict[str, Any], int] | None:
        """The newest checkpoint (at or before `at_most`) that passes its checks, as (state, meta, step).

        Damaged checkpoints on the way are moved to the workdir's damaged-checkpoints/ with a warning; returns
        None when there is no usable checkpoint (then every damaged one has been moved aside, none deleted).
        """
        self.wait()
        for step in reversed(self.all_steps()):
            if at_most is not None and step > at_most:
                continue
            try:
                state, meta = self.restore(step, abstract_state)
            except DamagedCheckpoint as e:
                moved = self.quarantine(step)
                self.log(f"WARNING: checkpoint {e}; moved it to {moved} and trying the previous one")
                continue
            return state, meta, step
        return None

    def quarantine(self, step: int) -> Path:
        """Move a step's directory out of the manager's view (kept for inspection, never deleted)."""
        self.wait()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.directory.parent / DAMAGED_DIR / f"{step}-{stamp}"
        if jax.process_index() == 0:  # every process found the same damage (the checksums are global)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), target)
        sync_processes(f"quarantine checkpoint {step}")
        self.manager.reload()
        return target

    def check_structure(self, step: int, abstract_state: Any) -> None:
        """Compare the saved arrays' paths and shapes with the target's (a different model is a user error)."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as e:
            raise DamagedCheckpoint(f"step {step}: its metadata cannot be read ({one_line(e, 200)})") from e
        if saved is None:
            raise DamagedCheckpoint(f"step {step}: its metadata cannot be read")
        want = {_path(p): tuple(a.shape) for p, a in jax.tree_util.tree_leaves_with_path(abstract_state)}
        have = {_path(p): tuple(getattr(a, "shape", ()) or ()) for p, a in jax.tree_util.tree_leaves_with_path(saved)}
        where = self.directory / str(step)
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            parts = ([f"missing {', '.join(missing[:2])}"] if missing else []) + (
                [f"unexpected {', '.join(extra[:2])}"] if extra else [])
            raise CheckpointError(f"checkpoint {where} was written by a different model ({'; '.join(parts)}); "
                                  "train it with the config it was made with, or use a new --workdir")
        for k in want:
            if want[k] != have[k]:
                raise CheckpointError(f"checkpoint {where} was written by a different model: {k} has shape "
                                      f"{have[k]} there but {want[k]} in this config; use the run's own config "
                                      "or a new --workdir")

    def restore_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _path(keys) -> str:
    """A leaf's path as 'params/blocks/attn/query/kernel', the same for dataclass and dict containers."""
    names = []
    for k in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                names.append(str(getattr(k, attr)))
                break
    return "/".join(names)
