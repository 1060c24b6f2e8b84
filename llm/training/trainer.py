"""The training loop, in named parts: build the state's shardings, restore or initialise the state, compile the
step, then step / log / evaluate / checkpoint until done, rolling back on numerical faults and stopping cleanly on
a signal.

Everything a step depends on is a function of (config, step): batches come from `dataset.batch(seed, step)`,
dropout keys from `fold_in(seed, step)`. Restoring the state at step k therefore continues bit for bit as if the
run had never stopped.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax

from llm.data.prefetch import Prefetcher
from llm.errors import CheckpointError, TrainingDiverged
from llm.inference import make_accuracy_step, make_eval_step, score
from llm.model import Transformer
from llm.model.params import count_params, train_flops_per_token
from llm.parallel import format_memory_report, global_batch, make_shardings, memory_report, unboxed
from llm.parallel.context.layout import ContextSettings, context_settings
from llm.runs import CHECKPOINT_DIR, DAMAGED_DIR, Checkpointer, MetricsLog
from llm.runtime import peak_flops
from llm.runtime.hardware import slow_matmul_note
from llm.state import boxed_abstract_train_state, create_train_state, make_optimizer
from llm.training.finetune import overlay, trained_fraction
from llm.training.health import LossMonitor
from llm.training.hooks import TrainHooks
from llm.training.preemption import StopSignals
from llm.training.progress import StepLog
from llm.training.setup import RunPlan
from llm.training.steps import make_train_step

SPLITS = ("train", "val")


class Trainer:
    """One invocation of a run's training: `run()` trains from the restored step to train.steps (or stop_after
    steps, or a stop signal)."""

    def __init__(self, plan: RunPlan, *, hooks: TrainHooks, signals: StopSignals):
        self.plan, self.hooks, self.signals = plan, hooks, signals
        self.config, self.t, self.log = plan.config, plan.config.train, plan.log
        self.dataset = plan.dataset
        self.model = Transformer(plan.model)
        self.tx, self.lr_schedule = make_optimizer(self.config.optim, self.t.steps, self.config.finetune)
        self.ckpt = Checkpointer(plan.workdir / CHECKPOINT_DIR, keep=self.t.keep_checkpoints, log=self.log)
        self.root_key = jax.random.PRNGKey(self.config.seed)
        self.procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
        self.counters = {"skipped_steps": 0, "rollbacks": 0}
        self.last_eval: dict[str, float] = {}
        self.stopped_by: str | None = None

    # ---- set-up -------------------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> None:
        """Train to train.steps, or for `stop_after` steps (then checkpoint, as if interrupted); everything traces
        under the mesh and the rules, which turn the model's logical axis names into shardings."""
        mesh = self.plan.run.mesh
        settings = ContextSettings(mesh.context_strategy, mesh.context_balance)
        with jax.set_mesh(self.plan.mesh), nn.logical_axis_rules(mesh.rules), context_settings(settings):
            self._build_state()
            self.state, meta = self.restore_or_init()
            self._start_counters(meta)
            self._compile()
            try:
                self._evaluate_source()
                self._loop(self.t.steps if stop_after is None else min(self.t.steps, self.start + stop_after))
            finally:
                self.batches.close()
                self.step_log.close()
                self.ckpt.close()
                self.metrics_log.close()

    def _build_state(self) -> None:
        """The state's shardings, its restore target and its (compiled) initialiser."""
        seq_len = self.plan.seq_len
        boxed = boxed_abstract_train_state(self.model, self.tx, seq_len)
        self.shardings = make_shardings(boxed, self.plan.mesh, self.plan.run.mesh.rules)
        self.abstract = unboxed(boxed)  # abstract_train_state's result, without tracing the initialiser again
        self.target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                             self.abstract, self.shardings.state)
        self.init = jax.jit(create_train_state, static_argnums=(0, 1, 3), out_shardings=self.shardings.state)

    def restore_or_init(self, at_most: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The newest good checkpoint's (state, meta) at or before `at_most`, or a fresh state (with the source
        model's weights for a fine-tune's first start) when there is none."""
        had = bool(self.ckpt.all_steps())
        found = self.ckpt.restore_latest_good(self.target, at_most=at_most)
        if found is not None:
            state, meta, step = found
            self.log(f"resumed from {self.ckpt.directory} at step {step}")
            return state, meta
        if had and at_most is None:
            raise CheckpointError(f"no usable checkpoint in {self.ckpt.directory}: every one failed its checks and was "
                                  f"moved to {self.plan.workdir / DAMAGED_DIR}; run again to start from step 0")
        state = self.init(self.model, self.tx, self.root_key, self.plan.seq_len)
        source = self.plan.source
        if source is not None:
            state = self._start_from_source(state)
            if at_most is None:
                self.log(f"fine-tuning from {source.name}; training "
                         f"{trained_fraction(state.params, self.config):.1%} of the parameters")
        return state, {}

    def _start_from_source(self, state):
        """The fresh state with the source model's weights (a new vocabulary's rows and LoRA adapters stay fresh)
        and a fresh optimizer state for them."""
        source = self.plan.source
        params = jax.device_put(overlay(state.params, source.params, source.name), self.shardings.state.params)
        return jax.jit(lambda s, p: s.replace(params=p, opt_state=self.tx.init(p)), out_shardings=self.shardings.state,
                       donate_argnums=(0,))(state, params)

    def _start_counters(self, meta: dict[str, Any]) -> None:
        self.start = int(self.state.step)
        self.best_val = meta.get("best_val_loss")
        self.counters = {k: int(meta.get(k, 0)) for k in self.counters}
        self.last_saved = self.start if self.ckpt.all_steps() else None

    def _compile(self) -> None:
        """The train step, compiled ahead of the loop so its memory is known before the first step runs; the
        evaluation steps, the logs and the fault monitor."""
        cfg, t = self.plan.model, self.t
        self.log(f"model: {count_params(self.state.params):,} parameters, {cfg.n_layers} layers x {cfg.d_model} wide, "
                 f"context {cfg.max_len}; {self.dataset.describe()} ({self.dataset.tokenizer.kind} tokenizer, vocab "
                 f"{self.dataset.tokenizer.vocab_size}); {jax.device_count()} x {jax.devices()[0].device_kind} in "
                 f"{jax.process_count()} process(es)")
        if note := slow_matmul_note(cfg.matmul_dtype, jax.default_backend()):
            self.log(note)
        self.step_fn = make_train_step(self.model, self.tx, self.lr_schedule, t.grad_accum,
                                       jax.random.fold_in(self.root_key, 1), self.shardings, t.dropout_rng)
        self.batches = Prefetcher(lambda step: self.dataset.batch(self.config.seed, step, t.batch_size, **self.procs))
        first = self.batches.get(self.start)
        self.batch_keys = set(first)
        self.train_step = self.step_fn.lower(self.state, *self._to_device(first)).compile()
        self.log(format_memory_report(memory_report(self.abstract, self.shardings, self.train_step), self.plan.mesh))
        self.eval_step = make_eval_step(self.model, self.shardings)
        self.accuracy_step = make_accuracy_step(self.model, self.shardings) if self.dataset.answer_accuracy else None
        self.metrics_log = MetricsLog(self.plan.workdir, enabled=self.plan.primary, resume_step=self.start)
        self.monitor = LossMonitor(t.max_bad_steps, t.spike_factor, t.spike_window)
        self.step_log = StepLog(self.metrics_log, self.log, tokens_per_step=t.batch_size * self.plan.seq_len,
                                flops_per_token=train_flops_per_token(cfg, self.plan.seq_len),
                                peak_flops=peak_flops(matmul_dtype=cfg.matmul_dtype),
                                bar=t.progress and self.plan.primary, start=self.start, total=t.steps)

    def _to_device(self, batch: dict[str, Any]):
        """(inputs, targets, extras) of a host batch as global device arrays."""
        put = self._put
        return put(batch["inputs"]), put(batch["targets"]), {k: put(v) for k, v in batch.items()
                                                            if k not in ("inputs", "targets")}

    def _put(self, rows):
        return global_batch(rows, self.shardings.batch, self.t.batch_size)

    # ---- the step loop ------------------------------------------------------------------------------------

    def _loop(self, end: int) -> None:
        step, multi = self.start, jax.process_count() > 1
        while step < end:
            if self.signals.requested or (multi and self.ckpt.manager.reached_preemption(step)):
                self.stopped_by = self.signals.requested or "preemption notice"
                break
            self._train_step(step)
            step = done = step + 1
            self.hooks.after_step(done, self.ckpt.wait)
            is_eval = done % self.t.eval_every == 0 or done == self.t.steps
            is_ckpt = done % self.t.checkpoint_every == 0 or done in (self.t.steps, end)
            if done % self.t.log_every == 0 or is_eval or is_ckpt:
                reason = self._flush(done)
                if reason:
                    step = self._rollback(reason, done)
                    continue
            val = self._evaluate(done) if is_eval else None
            if is_ckpt:
                self._save(done, val)
        self.step = step
        if self.stopped_by is not None:
            self._stop(step)

    def _train_step(self, step: int) -> None:
        batch = self.hooks.batch(step, self.batches.get(step))
        # A batch a hook changed the layout of gets its own program: clean steps all run the compiled one.
        fn = self.train_step if set(batch) == self.batch_keys else self.step_fn
        self.state, metrics = fn(self.state, *self._to_device(batch))
        self.step_log.add(metrics)

    def _flush(self, done: int) -> str | None:
        """Log the pending steps' metrics and watch their losses; returns why the run must roll back, or None."""
        if not self.step_log.pending:
            return None
        rows = self.step_log.fetch()
        first = done - len(rows)  # the step counter before the first pending update
        reason = None
        for i, row in enumerate(rows):
            row["loss"] = self.hooks.loss(first + i, row["loss"])
            reason = reason or self.monitor.observe(first + i + 1, float(row["loss"]), bool(row["skipped"]))
        self.counters["skipped_steps"] += self.step_log.write(done, rows)
        return reason

    # ---- evaluation, checkpoints ----------------------------------------------------------------------------

    def evaluate(self, params) -> dict[str, float]:
        """Train and val loss on the dataset's fixed evaluation batches (and val accuracy where the data has
        answers)."""
        out = {}
        for split in SPLITS:
            batches = self.dataset.eval_batches(split, seed=self.config.seed, n_batches=self.t.eval_batches,
                                                batch_size=self.t.batch_size, **self.procs)
            scores = score(self.eval_step, params, batches, put=self._put,
                           accuracy_step=self.accuracy_step if split == "val" else None)
            out.update({f"{split}_{name}": value for name, value in scores.items()})
        return out

    def _evaluate(self, done: int) -> float:
        self.last_eval = self.evaluate(self.state.params)
        val = self.last_eval["val_loss"]
        self.best_val = val if self.best_val is None else min(self.best_val, val)
        self.metrics_log.write(done, self.last_eval)
        accuracy = f", val accuracy {self.last_eval['val_accuracy']:.4f}" if "val_accuracy" in self.last_eval else ""
        self.step_log.say(f"step {done}: train loss {self.last_eval['train_loss']:.4f}, val loss {val:.4f}{accuracy}")
        self.step_log.restart_clock()  # evaluation time is not step time
        return val

    def _evaluate_source(self) -> None:
        """The starting point of a fine-tune: the source model's losses, at step 0."""
        if self.plan.source is not None and self.start == 0:
            before = self.evaluate(self.state.params)
            self.metrics_log.write(0, before)
            self.log(f"step 0 ({self.plan.source.name}): train loss {before['train_loss']:.4f}, val loss "
                     f"{before['val_loss']:.4f}")

    def _save(self, step: int, val: float | None) -> None:
        self.hooks.before_save(step, self.ckpt.directory)
        meta = {"step": step, "val_loss": val, "best_val_loss": self.best_val, "wall_time": time.time(),
                **self.counters}
        self.ckpt.save(step, self.state, meta=meta, val_loss=val)
        self.last_saved = step

    # ---- rollback and stop ----------------------------------------------------------------------------------

    def _rollback(self, reason: str, done: int) -> int:
        """Back to the last good checkpoint at or before `done`, the learning rate scaled; returns its step."""
        self.counters["rollbacks"] += 1
        limit = self.t.max_rollbacks
        if self.counters["rollbacks"] > limit:
            raise TrainingDiverged(f"training diverged at step {done}: {reason}, after {limit} rollback(s); lower "
                                   "optim.lr, set train.rollback_lr_factor < 1, or raise train.max_rollbacks "
                                   "(checkpoints before the fault are kept)")
        self.ckpt.wait()
        state, _ = self.restore_or_init(at_most=done)
        self.state = state.replace(lr_scale=state.lr_scale * self.t.rollback_lr_factor)
        to = int(self.state.step)
        self.step_log.say(f"step {done}: {reason}; rolled back to step {to} (rollback {self.counters['rollbacks']} "
                          f"of at most {limit}), learning-rate scale {float(self.state.lr_scale):g}")
        self.metrics_log.event(done, "rollback", to_step=to, reason=reason)
        self.monitor.rolled_back()
        self.hooks.after_rollback()
        self.step_log.rewind(to, self.t.steps)
        return to

    def _stop(self, step: int) -> None:
        """A signal asked to stop: log what is pending and checkpoint this step, so the same command resumes."""
        reason = self._flush(step)
        if reason is None and step != self.last_saved:
            meta = {"step": step, "val_loss": None, "best_val_loss": self.best_val, "wall_time": time.time(),
                    **self.counters}
            self.ckpt.save(step, self.state, meta=meta)
            self.last_saved = step
        self.step_log.say(f"stopped by {self.stopped_by} at step {step}; checkpoint at step {self.last_saved} in "
                          f"{self.ckpt.directory}; run the same command to resume")
