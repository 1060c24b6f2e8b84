"""The training job: config -> data -> model -> jitted steps -> metrics, checkpoints, samples.

Everything a step depends on is a function of (config, step): batches come from `sample_batch(seed, step)`,
dropout keys from `fold_in(seed, step)`. Restoring the state at step k therefore continues bit for bit as if
the run had never stopped.
"""

from __future__ import annotations

import dataclasses
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

from llm import run as run_lib
from llm.checkpoint import Checkpointer
from llm.config import validate_config
from llm.data import eval_batches, sample_batch
from llm.hardware import peak_flops
from llm.inference import sample_texts
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
)
from llm.train_state import TrainState, abstract_train_state, boxed_abstract_train_state, create_train_state


@dataclasses.dataclass
class TrainResult:
    workdir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    samples: list[str]
    wall_time: float


def make_train_step(model: Transformer, tx: optax.GradientTransformation, lr_schedule, grad_accum: int,
                    dropout_root: jax.Array, shardings: Shardings | None = None):
    """(state, inputs, targets) -> (state, metrics); one optimizer update per call, the state donated.

    The dropout key of step s is fold_in(dropout_root, s), derived inside the compiled step. With
    `shardings`, the step is jitted with the state's and batches' shardings (the state stays where it is).

    With grad_accum > 1 the batch is split into micro-batches whose gradients are summed in a lax.scan, so
    memory holds one micro-batch of activations and the update equals that of the whole batch.
    """

    def loss_fn(params, inputs, targets, key):
        logits = model.apply({"params": params}, inputs, train=True, rngs={"dropout": key})
        loss_sum, count = cross_entropy(logits, targets)
        return loss_sum / count

    def step(state: TrainState, inputs, targets):
        key = jax.random.fold_in(dropout_root, state.step)
        if grad_accum == 1:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, inputs, targets, key)
        else:
            micro = lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

            def accumulate(carry, xs):
                loss_acc, grads_acc = carry
                x, y, i = xs
                loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, jax.random.fold_in(key, i))
                return (loss_acc + loss, jax.tree_util.tree_map(jnp.add, grads_acc, grads)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros(()), zeros),
                                            (micro(inputs), micro(targets), jnp.arange(grad_accum)))
            loss = loss / grad_accum
            grads = jax.tree_util.tree_map(lambda g: g / grad_accum, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(step, donate_argnums=(0,), in_shardings=(shardings.state, shardings.batch, shardings.batch),
                   out_shardings=(shardings.state, shardings.replicated))


def make_eval_step(model: Transformer, shardings: Shardings | None = None):
    """(params, inputs, targets) -> (sum of token losses, token count)."""
    f = lambda params, x, y: cross_entropy(model.apply({"params": params}, x), y)
    if shardings is None:
        return jax.jit(f)
    return jax.jit(f, in_shardings=(shardings.state.params, shardings.batch, shardings.batch),
                   out_shardings=shardings.replicated)


def evaluate(eval_step, params, batches, put=lambda x: x) -> float:
    """Mean token loss over (inputs, targets) batches; `put` makes device arrays from host rows."""
    total, count = 0.0, 0.0
    for x, y in batches:
        s, c = eval_step(params, put(x), put(y))
        total, count = total + float(s), count + float(c)
    return total / count


class MetricsLog:
    """metrics.jsonl in the workdir, plus TensorBoard scalars."""

    def __init__(self, workdir: Path, enabled: bool = True):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # tensorboardX is a dependency, but logging must never stop a run
            self.tb = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config: ConfigDict, workdir: str | Path, *, log=print, stop_after: int | None = None) -> TrainResult:
    """Train (or resume) the experiment `config` in `workdir`; returns the final losses and samples.

    stop_after: end this invocation after that many steps (with a checkpoint), as if interrupted; running
      again resumes. Used by tests and by time-sliced schedulers.
    """
    t_start = time.time()
    validate_config(config)
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
    if (workdir / run_lib.CONFIG_FILE).exists():
        diff = run_lib.config_differences(config, workdir)
        if diff:
            raise ConfigError(f"{workdir} holds a run with a different config ({'; '.join(diff[:6])}"
                              f"{'; ...' if len(diff) > 6 else ''}); use another --workdir to start a new run")
    workdir.mkdir(parents=True, exist_ok=True)
    data = run_lib.prepare_data(config, workdir, write=primary)
    if primary:
        run_lib.save_config(config, workdir)
        run_lib.write_manifest(workdir, data, config)

    cfg = data.model
    seq_len = t.seq_len or cfg.max_len
    model = Transformer(cfg)
    tx, lr_schedule = make_optimizer(config.optim, t.steps)
    ckpt = Checkpointer(workdir / run_lib.CHECKPOINT_DIR, keep=t.keep_checkpoints)

    # Everything traces under the mesh and the rules, which turn the model's logical names into shardings.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = make_shardings(boxed_abstract_train_state(model, tx, seq_len), mesh, rules)
        abstract = abstract_train_state(model, tx, seq_len)
        root_key = jax.random.PRNGKey(config.seed)
        latest = ckpt.latest_step()
        if latest is None:
            state = jax.jit(create_train_state, static_argnums=(0, 1, 3), out_shardings=shardings.state)(
                model, tx, root_key, seq_len)
            best_val = None
        else:
            target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                            abstract, shardings.state)
            state, meta = ckpt.restore(latest, target)
            best_val = meta.get("best_val_loss")
            log(f"resumed from {workdir / run_lib.CHECKPOINT_DIR} at step {latest}")
        start = int(state.step)

        n_params = count_params(state.params)
        flops_per_token = train_flops_per_token(cfg, seq_len)
        peak = peak_flops()
        log(f"model: {n_params:,} parameters, {cfg.n_layers} layers x {cfg.d_model} wide, context {cfg.max_len}; "
            f"corpus {data.corpus.name}: {len(data.train_tokens):,} train / {len(data.val_tokens):,} val tokens "
            f"({data.tokenizer.kind} tokenizer, vocab {data.tokenizer.vocab_size}); "
            f"{jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es)")

        procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
        put = lambda rows_np: global_batch(rows_np, shardings.batch, t.batch_size)
        # Compiled once, ahead of the loop, so its memory is known before the first step runs.
        x0, y0 = sample_batch(data.train_tokens, seed=config.seed, step=start, batch_size=t.batch_size,
                              seq_len=seq_len, **procs)
        train_step = make_train_step(model, tx, lr_schedule, t.grad_accum, jax.random.fold_in(root_key, 1),
                                     shardings).lower(state, put(x0), put(y0)).compile()
        log(format_memory_report(memory_report(abstract, shardings, train_step), mesh))
        eval_step = make_eval_step(model, shardings)
        metrics_log = MetricsLog(workdir, enabled=primary)
        eval_kw = dict(seed=config.seed, n_batches=t.eval_batches, batch_size=t.batch_size, seq_len=seq_len,
                       **procs)

        def run_eval(params):
            return {split: evaluate(eval_step, params, eval_batches(tokens, **eval_kw), put)
                    for split, tokens in (("train_loss", data.train_tokens), ("val_loss", data.val_tokens))}

        progress = _progress(t.progress and primary, start, t.steps)
        pending: list[dict[str, Any]] = []
        last_eval: dict[str, float] = {}
        t_log, steps_since_log = time.perf_counter(), 0
        end = t.steps if stop_after is None else min(t.steps, start + stop_after)
        try:
            for step in range(start, end):
                x, y = sample_batch(data.train_tokens, seed=config.seed, step=step, batch_size=t.batch_size,
                                    seq_len=seq_len, **procs)
                state, metrics = train_step(state, put(x), put(y))
                pending.append(metrics)
                steps_since_log += 1
                done = step + 1
                if done % t.log_every == 0 or done in (t.steps, end):  # flush before stopping early
                    host = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
                    elapsed = time.perf_counter() - t_log
                    tokens_per_s = steps_since_log * t.batch_size * seq_len / elapsed
                    host.update(step_time_ms=1000 * elapsed / steps_since_log, tokens_per_s=tokens_per_s,
                                mfu=tokens_per_s * flops_per_token / peak)
                    metrics_log.write(done, host)
                    if progress is not None:
                        progress.set_postfix(loss=f"{host['loss']:.3f}", ms=f"{host['step_time_ms']:.1f}")
                    pending, steps_since_log = [], 0
                    t_log = time.perf_counter()
                val_now = None
                if done % t.eval_every == 0 or done == t.steps:
                    last_eval = run_eval(state.params)
                    val_now = last_eval["val_loss"]
                    best_val = val_now if best_val is None else min(best_val, val_now)
                    metrics_log.write(done, last_eval)
                    _emit(progress, log,
                          f"step {done}: train loss {last_eval['train_loss']:.4f}, val loss {val_now:.4f}")
                    t_log = time.perf_counter()  # evaluation time is not step time
                if done % t.checkpoint_every == 0 or done in (t.steps, end):
                    meta = {"step": done, "val_loss": val_now, "best_val_loss": best_val, "wall_time": time.time()}
                    ckpt.save(done, state, meta=meta, val_loss=val_now)
                if progress is not None:
                    progress.update(1)
        finally:
            if progress is not None:
                progress.close()
            ckpt.close()
            metrics_log.close()

    samples = []
    # Sampling gathers the tokens on one host: only in single-process runs (use `llm sample` afterwards).
    if config.sample.num_samples and end == t.steps and jax.process_count() == 1:
        sc = config.sample
        samples = sample_texts(model, state.params, data.tokenizer, [sc.prompt] * sc.num_samples,
                               max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_k=sc.top_k,
                               top_p=sc.top_p, seed=sc.seed)
        for i, text in enumerate(samples):
            log(f"--- sample {i + 1} ---\n{text}")
    if not last_eval and start >= t.steps:
        log(f"{workdir} already holds a finished run of {t.steps} steps")
    return TrainResult(workdir, int(state.step), last_eval.get("train_loss"), last_eval.get("val_loss"),
                       samples, time.time() - t_start)


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
