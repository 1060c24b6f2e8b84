"""The training job: config -> data -> model -> jitted steps -> metrics, checkpoints, samples.

Everything a step depends on is a function of (config, step): batches come from `sample_batch(seed, step)`,
dropout keys from `fold_in(seed, step)`. Restoring the state at step k therefore continues bit for bit as if
the run had never stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from llm import finetune
from llm import run as run_lib
from llm.checkpoint import DAMAGED_DIR, Checkpointer, CheckpointError, DamagedCheckpoint
from llm.config import validate_config
from llm.data import eval_batches, sample_batch
from llm.data.synthetic import SyntheticTask
from llm.faults import NO_FAULTS, Faults, kill_now, kill_when_save_starts
from llm.hardware import peak_flops
from llm.health import LossMonitor, TrainingDiverged
from llm.host_memory import keep_freed_host_memory
from llm.inference import encode_prompts, sample_texts
from llm.model import Transformer
from llm.model.config import ConfigError
from llm.model.params import count_params, train_flops_per_token
from llm.ops import cross_entropy
from llm.optim import make_optimizer
from llm.parallel import (
    MESH_AXES,
    Shardings,
    format_memory_report,
    global_batch,
    initialize_distributed,
    logical_rules,
    make_mesh,
    make_shardings,
    memory_report,
    sync_processes,
)
from llm.preemption import StopSignals
from llm.train_state import TrainState, abstract_train_state, boxed_abstract_train_state, create_train_state

EXTRA_KEYS = ("weights", "segment_ids", "positions")  # of SFT batches, besides inputs and targets


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


def make_train_step(model: Transformer, tx: optax.GradientTransformation, lr_schedule, grad_accum: int,
                    dropout_root: jax.Array, shardings: Shardings | None = None, dropout_rng: str = "threefry"):
    """(state, inputs, targets) -> (state, metrics); one optimizer update per call, the state donated.

    The dropout key of step s is fold_in(dropout_root, s), derived inside the compiled step; with dropout_rng
    'rbg' the keys the dropout layers draw from it are XLA RngBitGenerator keys instead of threefry ones (with
    model.dropout_mask='bernoulli', 0.3-0.4 s instead of 0.6-0.9 s of a 6.8 s shakespeare_char:small step on
    CPU; 'hash' masks take two words from the key; perf_before_after.md). With
    `shardings`, the step is jitted with the state's and batches' shardings (the state stays where it is).

    With grad_accum > 1 the batch is split into micro-batches whose gradients are summed in a lax.scan, so
    memory holds one micro-batch of activations and the update equals that of the whole batch.

    A step whose loss or gradients are not finite changes nothing but the step counter (metrics["skipped"] is 1):
    the optimizer state, with its update count, stays as it was, so the learning-rate schedule counts applied
    updates and each skip delays it by a step (metrics["lr"] is the schedule at the step counter).
    The update is multiplied by state.lr_scale. extras: optional [B, T] arrays 'weights' (per target token),
    'segment_ids' and 'positions' (packed documents).
    """

    def loss_fn(params, inputs, targets, extras, key):
        """(sum of token losses, number of target tokens) of one (micro-)batch."""
        logits = model.apply({"params": params}, inputs, positions_BT=extras.get("positions"),
                             segment_ids_BT=extras.get("segment_ids"), train=True, rngs={"dropout": key})
        return cross_entropy(logits, targets, extras.get("weights"))

    def step(state: TrainState, inputs, targets, extras=None):
        extras = extras or {}
        key = jax.random.fold_in(dropout_root, state.step)
        if dropout_rng != "threefry":
            key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=dropout_rng)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum == 1:
            (loss_sum, count), grads = grad_fn(state.params, inputs, targets, extras, key)
        else:
            micro = lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

            def accumulate(carry, xs):
                sum_acc, count_acc, grads_acc = carry
                x, y, e, i = xs
                (loss_sum, count), grads = grad_fn(state.params, x, y, e, jax.random.fold_in(key, i))
                return (sum_acc + loss_sum, count_acc + count, jax.tree_util.tree_map(jnp.add, grads_acc, grads)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (loss_sum, count, grads), _ = jax.lax.scan(
                accumulate, (jnp.zeros(()), jnp.zeros(()), zeros),
                (micro(inputs), micro(targets), jax.tree_util.tree_map(micro, extras), jnp.arange(grad_accum)))
        # The mean over the batch's target tokens (weighted: only the tokens that count, e.g. completions).
        count = jnp.maximum(count, 1.0)
        loss = loss_sum / count
        grads = jax.tree_util.tree_map(lambda g: g / count, grads)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda u: u * state.lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        # A non-finite step keeps the old parameters and optimizer state (NaN must not reach the moments).
        keep = lambda new, old: jnp.where(ok, new, old)
        params = jax.tree_util.tree_map(keep, params, state.params)
        opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state.step) * state.lr_scale,
                   "skipped": 1.0 - ok.astype(jnp.float32)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, donate_argnums=(0,),
                   in_shardings=(shardings.state, shardings.batch, shardings.batch, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated))


def make_eval_step(model: Transformer, shardings: Shardings | None = None):
    """(params, inputs, targets, extras=None) -> (sum of token losses, token count); extras as in the train step."""

    def f(params, x, y, extras=None):
        extras = extras or {}
        logits = model.apply({"params": params}, x, positions_BT=extras.get("positions"),
                             segment_ids_BT=extras.get("segment_ids"))
        return cross_entropy(logits, y, extras.get("weights"))

    if shardings is None:
        return jax.jit(f)
    return jax.jit(f, in_shardings=(shardings.state.params, shardings.batch, shardings.batch, shardings.batch),
                   out_shardings=shardings.replicated)


def make_accuracy_step(model: Transformer, shardings: Shardings | None = None):
    """(params, inputs, targets, extras) -> (weighted count of argmax == target, sum of weights)."""

    def f(params, x, y, extras):
        logits = model.apply({"params": params}, x, positions_BT=extras.get("positions"),
                             segment_ids_BT=extras.get("segment_ids"))
        w = extras["weights"].astype(jnp.float32)
        return jnp.sum((jnp.argmax(logits, -1) == y) * w), jnp.sum(w)

    if shardings is None:
        return jax.jit(f)
    return jax.jit(f, in_shardings=(shardings.state.params, shardings.batch, shardings.batch, shardings.batch),
                   out_shardings=shardings.replicated)


def evaluate(eval_step, params, batches, put=lambda x: x) -> float:
    """Mean token loss over batches of (inputs, targets) or (inputs, targets, extras: dict of arrays); `put`
    makes device arrays from host rows."""
    total, count = 0.0, 0.0
    for x, y, *rest in batches:
        extras = jax.tree_util.tree_map(put, rest[0]) if rest else None
        s, c = eval_step(params, put(x), put(y), extras)
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0)


class MetricsLog:
    """metrics.jsonl in the workdir, plus TensorBoard scalars.

    resume_step: the run continues from this checkpoint step, so records of later steps (written before a crash
      or preemption, and about to be made again) are dropped, as is a last line cut short by a kill.
    """

    def __init__(self, workdir: Path, enabled: bool = True, resume_step: int = 0):
        self.path = workdir / run_lib.METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step and self.path.exists():
            self._truncate(resume_step)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboardX is a dependency, but logging must never stop a run
            self.tb = None

    def _truncate(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        run_lib._atomic_write(self.path, "".join(x + "\n" for x in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config: ConfigDict, workdir: str | Path, *, log=print, stop_after: int | None = None,
          resume_anyway: bool = False, overwrite: bool = False, faults: Faults = NO_FAULTS) -> TrainResult:
    """Train (or resume) the experiment `config` in `workdir`; returns the final losses and samples.

    stop_after: end this invocation after that many steps (with a checkpoint), as if interrupted; running
      again resumes. Used by tests and by time-sliced schedulers.
    resume_anyway: continue a run whose saved config differs from `config` (the old config is kept as a .bak).
    overwrite: delete the run in `workdir` first.
    faults: injected faults, for tests of the recovery paths (llm/faults.py).

    SIGTERM / SIGINT stop the run after the current step with a checkpoint (result.stopped_by names the signal).
    """
    t_start = time.time()
    validate_config(config)
    keep_freed_host_memory()  # XLA:CPU's per-step buffers would page-fault anew at every step otherwise
    initialize_distributed(config.distributed)  # before any other JAX call
    primary = jax.process_index() == 0  # the one process that logs and writes the run's files
    if not primary:
        log = lambda *_: None
    t = config.train
    mesh = make_mesh({axis: config.mesh[axis] for axis in MESH_AXES})
    rules = logical_rules(config.mesh.rules)
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    if t.batch_size % rows or t.batch_size % jax.process_count():
        raise ConfigError(f"train.batch_size={t.batch_size} does not split over the mesh's {rows} data-parallel "
                          f"devices and {jax.process_count()} processes; make it a multiple of both")
    workdir = Path(workdir)
    # A fine-tuning run takes its source model's architecture (into config.model, so config.json tells it).
    source = finetune.resolve_init(config) if config.finetune.init_from else None
    # Every check that can refuse the run comes before the first write into the workdir.
    time.sleep(faults.start_delay_ms / 1000)
    mode = run_lib.check_workdir(config, workdir, resume_anyway=resume_anyway, overwrite=overwrite)
    data = run_lib.prepare_data(config, workdir if mode == "resume" else None,
                                base_tokenizer=None if source is None else source.tokenizer)
    if config.sample.num_samples and not (config.data.sft or config.data.synthetic):  # checked now, used at the end
        encode_prompts(data.tokenizer, [config.sample.prompt], data.model.max_len)
    if mode == "resume":
        _check_checkpoints_fit(config, workdir, data)
    # Every process has judged the workdir as it was; only now may the primary write into it (else another process
    # could see a half-made run, take it for one to resume, and disagree with the primary on what to do).
    sync_processes("llm.train: workdir checked")
    lock = None
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        lock = run_lib.WorkdirLock(workdir)
        if mode == "overwrite":
            log(f"--overwrite: deleting the run in {workdir}")
            run_lib.clear_run(workdir)
            lock = run_lib.WorkdirLock(workdir)  # the old lock file went with the run
        if not (workdir / run_lib.TOKENIZER_FILE).exists():
            data.tokenizer.save(workdir / run_lib.TOKENIZER_FILE)
        run_lib.save_config(config, workdir)
        if not (workdir / run_lib.MANIFEST_FILE).exists():
            run_lib.write_manifest(workdir, data, config)
    try:
        with StopSignals(log, sigterm=jax.process_count() == 1) as signals:
            return _train(config, workdir, data, mesh, rules, log=log, primary=primary, stop_after=stop_after,
                          faults=faults, signals=signals, t_start=t_start, source=source)
    finally:
        if lock is not None:
            lock.release()


def _check_checkpoints_fit(config: ConfigDict, workdir: Path, data: run_lib.RunData) -> None:
    """CheckpointError, before anything is written, when the run's latest checkpoint holds another model (say,
    after --resume_anyway with a changed architecture); damage is left to the restore, which falls back."""
    directory = workdir / run_lib.CHECKPOINT_DIR
    if not directory.is_dir():
        return
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = ckpt.all_steps()
        if steps:
            tx, _ = make_optimizer(config.optim, config.train.steps, config.finetune)
            abstract = abstract_train_state(Transformer(data.model), tx, config.train.seq_len or data.model.max_len)
            try:
                ckpt.check_structure(steps[-1], abstract)
            except DamagedCheckpoint:
                pass
    finally:
        ckpt.close()


def _train(config, workdir, data, mesh, rules, *, log, primary, stop_after, faults, signals, t_start, source):
    t = config.train
    cfg = data.model
    seq_len = t.seq_len or cfg.max_len
    model = Transformer(cfg)
    tx, lr_schedule = make_optimizer(config.optim, t.steps, config.finetune)
    ckpt = Checkpointer(workdir / run_lib.CHECKPOINT_DIR, keep=t.keep_checkpoints, log=log)

    # Everything traces under the mesh and the rules, which turn the model's logical names into shardings.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = make_shardings(boxed_abstract_train_state(model, tx, seq_len), mesh, rules)
        abstract = abstract_train_state(model, tx, seq_len)
        target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, shardings.state)
        root_key = jax.random.PRNGKey(config.seed)
        init = jax.jit(create_train_state, static_argnums=(0, 1, 3), out_shardings=shardings.state)

        def restore(at_most=None):
            """The newest good checkpoint's (state, meta), or a fresh state when there is none."""
            had = bool(ckpt.all_steps())
            found = ckpt.restore_latest_good(target, at_most=at_most)
            if found is None:
                if had and at_most is None:
                    raise CheckpointError(f"no usable checkpoint in {ckpt.directory}: every one failed its checks "
                                          f"and was moved to {workdir / DAMAGED_DIR}; run again to start from "
                                          "step 0")
                fresh = init(model, tx, root_key, seq_len)
                return (fresh if source is None or at_most is None else start_from(source, fresh)), {}
            state, meta, step = found
            log(f"resumed from {ckpt.directory} at step {step}")
            return state, meta

        def start_from(source, state):
            """The fresh state with the source model's weights (a new vocabulary's rows and LoRA adapters stay
            fresh) and a fresh optimizer state for them."""
            params = jax.device_put(finetune.overlay(state.params, source.params, source.name),
                                    shardings.state.params)
            return jax.jit(lambda s, p: s.replace(params=p, opt_state=tx.init(p)), out_shardings=shardings.state,
                           donate_argnums=(0,))(state, params)

        state, meta = restore()
        if source is not None and not ckpt.all_steps():
            state = start_from(source, state)
            log(f"fine-tuning from {source.name}; training {_trained_fraction(state.params, config):.1%} of the "
                "parameters")
        start = int(state.step)
        best_val = meta.get("best_val_loss")
        counters = {"skipped_steps": int(meta.get("skipped_steps", 0)), "rollbacks": int(meta.get("rollbacks", 0))}
        last_saved = start if ckpt.all_steps() else None

        n_params = count_params(state.params)
        flops_per_token = train_flops_per_token(cfg, seq_len)
        peak = peak_flops(matmul_dtype=cfg.matmul_dtype)
        log(f"model: {n_params:,} parameters, {cfg.n_layers} layers x {cfg.d_model} wide, context {cfg.max_len}; "
            f"{data.describe()} ({data.tokenizer.kind} tokenizer, vocab {data.tokenizer.vocab_size}); "
            f"{jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es)")

        procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
        put = lambda rows_np: global_batch(rows_np, shardings.batch, t.batch_size)

        def batch(step):
            if data.sft_train is not None:
                b = data.sft_train.batch(config.seed, step, t.batch_size, **procs)
                return put(b["inputs"]), put(b["targets"]), {k: put(b[k]) for k in EXTRA_KEYS}
            x, y = sample_batch(data.train_tokens, seed=config.seed, step=step, batch_size=t.batch_size,
                                seq_len=seq_len, **procs)
            return put(x), put(y), {}

        step_fn = make_train_step(model, tx, lr_schedule, t.grad_accum, jax.random.fold_in(root_key, 1), shardings,
                                  t.dropout_rng)
        # Compiled ahead of the loop, so its memory is known before the first step runs.
        train_step = step_fn.lower(state, *batch(start)).compile()
        # Injected faults (tests) stay outside the compiled step, so clean steps run the very same program: a
        # NaN step gets NaN loss weights (a second program), a spike is multiplied into the loss the host sees.
        fault_passes = faults.passes

        def poisoned(step):
            return fault_passes > 0 and step in faults.nan_steps
        log(format_memory_report(memory_report(abstract, shardings, train_step), mesh))
        eval_step = make_eval_step(model, shardings)
        accuracy_step = make_accuracy_step(model, shardings)
        metrics_log = MetricsLog(workdir, enabled=primary, resume_step=start)
        eval_kw = dict(seed=config.seed, n_batches=t.eval_batches, batch_size=t.batch_size, seq_len=seq_len,
                       **procs)

        def run_eval(params):
            if isinstance(data.sft_train, SyntheticTask):  # losses and accuracy at the answer positions
                task = data.sft_train
                as_tuple = lambda b: (b["inputs"], b["targets"], {k: b[k] for k in EXTRA_KEYS})
                val = [as_tuple(b) for b in task.eval_batches(t.batch_size, t.eval_batches, **procs)]
                seen = [as_tuple(task.batch(config.seed, i, t.batch_size, **procs)) for i in range(t.eval_batches)]
                correct = count = 0.0
                for x, y, e in val:
                    c, n = accuracy_step(params, put(x), put(y), jax.tree_util.tree_map(put, e))
                    correct, count = correct + float(c), count + float(n)
                return {"train_loss": evaluate(eval_step, params, seen, put),
                        "val_loss": evaluate(eval_step, params, val, put), "val_accuracy": correct / max(count, 1)}
            if data.sft_train is not None:  # the loss on completion tokens, over t.eval_batches batches
                batches = lambda ds: ((b["inputs"], b["targets"], {k: b[k] for k in EXTRA_KEYS}) for b in
                                      itertools.islice(ds.eval_batches(t.batch_size, **procs), t.eval_batches))
                return {"train_loss": evaluate(eval_step, params, batches(data.sft_train), put),
                        "val_loss": evaluate(eval_step, params, batches(data.sft_val), put)}
            return {split: evaluate(eval_step, params, eval_batches(tokens, **eval_kw), put)
                    for split, tokens in (("train_loss", data.train_tokens), ("val_loss", data.val_tokens))}

        if source is not None and start == 0:  # the starting point of a fine-tune: the source model's losses
            before = run_eval(state.params)
            metrics_log.write(0, before)
            log(f"step 0 ({source.name}): train loss {before['train_loss']:.4f}, val loss {before['val_loss']:.4f}")
        monitor = LossMonitor(t.max_bad_steps, t.spike_factor, t.spike_window)
        progress = _progress(t.progress and primary, start, t.steps)
        pending: list[dict[str, Any]] = []
        last_eval: dict[str, float] = {}
        t_log = time.perf_counter()
        end = t.steps if stop_after is None else min(t.steps, start + stop_after)
        multi = jax.process_count() > 1

        def flush(done: int) -> str | None:
            """Fetch the pending steps' metrics, log their means and check them; returns a rollback reason."""
            nonlocal pending, t_log
            if not pending:
                return None
            rows = jax.device_get(pending)
            first = done - len(rows) + 1
            reason = None
            for i, row in enumerate(rows):
                loss = float(row["loss"])
                if fault_passes > 0 and first + i - 1 in faults.spike_steps:
                    loss = row["loss"] = 1000 * loss
                reason = reason or monitor.observe(first + i, loss, bool(row["skipped"]))
            skipped = int(sum(r["skipped"] for r in rows))
            counters["skipped_steps"] += skipped
            finite = [r for r in rows if not r["skipped"]] or rows
            host = {k: float(np.mean([r[k] for r in finite])) for k in rows[0] if k != "skipped"}
            elapsed = time.perf_counter() - t_log
            tokens_per_s = len(rows) * t.batch_size * seq_len / elapsed
            host.update(skipped_steps=skipped, step_time_ms=1000 * elapsed / len(rows), tokens_per_s=tokens_per_s,
                        mfu=tokens_per_s * flops_per_token / peak)
            metrics_log.write(done, host)
            if skipped:
                _emit(progress, log, f"step {done}: skipped {skipped} update(s) with a non-finite loss or gradient")
            if progress is not None:
                progress.set_postfix(loss=f"{host['loss']:.3f}", ms=f"{host['step_time_ms']:.1f}")
            pending = []
            t_log = time.perf_counter()
            return reason

        def rollback(reason: str, done: int):
            nonlocal state, fault_passes
            counters["rollbacks"] += 1
            if counters["rollbacks"] > t.max_rollbacks:
                raise TrainingDiverged(f"training diverged at step {done}: {reason}, after {t.max_rollbacks} "
                                       "rollback(s); lower optim.lr, set train.rollback_lr_factor < 1, or raise "
                                       "train.max_rollbacks (checkpoints before the fault are kept)")
            ckpt.wait()
            state, _ = restore(at_most=done)
            state = state.replace(lr_scale=state.lr_scale * t.rollback_lr_factor)
            to = int(state.step)
            message = (f"step {done}: {reason}; rolled back to step {to} (rollback {counters['rollbacks']} of at most "
                       f"{t.max_rollbacks}), learning-rate scale {float(state.lr_scale):g}")
            _emit(progress, log, message)
            if primary:
                with metrics_log.path.open("a") as f:
                    f.write(json.dumps({"step": done, "event": "rollback", "to_step": to, "reason": reason}) + "\n")
            monitor.rolled_back()
            if faults.nan_steps or faults.spike_steps:
                fault_passes -= 1  # at 0: a transient fault, gone after the rollback
            if progress is not None:
                progress.reset(total=t.steps)
                progress.update(to)
            return to

        stopped_by = None
        step = start
        try:
            while step < end:
                if signals.requested or (multi and ckpt.manager.reached_preemption(step)):
                    stopped_by = signals.requested or "preemption notice"
                    break
                if poisoned(step):
                    x, y, _ = batch(step)
                    state, metrics = step_fn(state, x, y, {"weights": jnp.full(x.shape, jnp.nan)})
                else:
                    state, metrics = train_step(state, *batch(step))
                pending.append(metrics)
                step = done = step + 1
                if progress is not None:
                    progress.update(1)
                if faults.sleep_ms:
                    time.sleep(faults.sleep_ms / 1000)
                if faults.kill_after_step == done:
                    ckpt.wait()
                    kill_now()
                is_eval = done % t.eval_every == 0 or done == t.steps
                is_ckpt = done % t.checkpoint_every == 0 or done in (t.steps, end)
                if done % t.log_every == 0 or is_eval or is_ckpt:
                    reason = flush(done)
                    if reason:
                        step = rollback(reason, done)
                        continue
                val_now = None
                if is_eval:
                    last_eval = run_eval(state.params)
                    val_now = last_eval["val_loss"]
                    best_val = val_now if best_val is None else min(best_val, val_now)
                    metrics_log.write(done, last_eval)
                    accuracy = f", val accuracy {last_eval['val_accuracy']:.4f}" if "val_accuracy" in last_eval else ""
                    _emit(progress, log,
                          f"step {done}: train loss {last_eval['train_loss']:.4f}, val loss {val_now:.4f}{accuracy}")
                    t_log = time.perf_counter()  # evaluation time is not step time
                if is_ckpt:
                    if faults.kill_in_save == done:
                        kill_when_save_starts(ckpt.directory, done)
                    meta = {"step": done, "val_loss": val_now, "best_val_loss": best_val, "wall_time": time.time(),
                            **counters}
                    ckpt.save(done, state, meta=meta, val_loss=val_now)
                    last_saved = done
            if stopped_by is not None:
                reason = flush(step)
                if reason is None and step != last_saved:
                    meta = {"step": step, "val_loss": None, "best_val_loss": best_val, "wall_time": time.time(),
                            **counters}
                    ckpt.save(step, state, meta=meta)
                    last_saved = step
                _emit(progress, log, f"stopped by {stopped_by} at step {step}; checkpoint at step {last_saved} "
                                     f"in {ckpt.directory}; run the same command to resume")
        finally:
            if progress is not None:
                progress.close()
            ckpt.close()
            metrics_log.close()

    samples = []
    # Sampling gathers the tokens on one host: only in single-process runs (use `llm sample` afterwards).
    if (config.sample.num_samples and data.sft_train is None and stopped_by is None and step == t.steps
            and jax.process_count() == 1):
        sc = config.sample
        samples = sample_texts(model, state.params, data.tokenizer, [sc.prompt] * sc.num_samples,
                               max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_k=sc.top_k,
                               top_p=sc.top_p, seed=sc.seed)
        for i, text in enumerate(samples):
            log(f"--- sample {i + 1} ---\n{text}")
    if not last_eval and start >= t.steps:
        log(f"{workdir} already holds a finished run of {t.steps} steps")
    return TrainResult(workdir, int(state.step), last_eval.get("train_loss"), last_eval.get("val_loss"),
                       samples, time.time() - t_start, stopped_by, counters["skipped_steps"], counters["rollbacks"])


def _trained_fraction(params, config: ConfigDict) -> float:
    from llm.optim import param_groups

    f = config.finetune
    labels, _ = param_groups(f.freeze, f.train_only, f.lr_groups)
    sizes = [(x.size, lab != "frozen") for x, lab in zip(jax.tree_util.tree_leaves(params),
                                                         jax.tree_util.tree_leaves(labels(params)), strict=True)]
    return sum(n for n, trained in sizes if trained) / sum(n for n, _ in sizes)


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, leave=True)


def _emit(progress, log, message: str) -> None:
    if progress is not None:
        progress.write(message)
    else:
        log(message)
