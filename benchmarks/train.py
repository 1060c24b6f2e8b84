"""Training-throughput benchmark: ms/step, tokens/s, MFU, compile time and memory of the real train step.

Each configuration is an experiment preset (experiments/*.py) plus config overrides. For each one the benchmark
builds the model, optimizer (the experiment's AdamW) and train state exactly as `llm train` does, times
`llm.training.steps.make_train_step`'s jitted, donating step on synthetic random token batches of the configured shape
(no data loading), and reports:

  ms/step     median wall time of the timed steps (after `--warmup` untimed steps, the first of which is also
              reported alone), each blocked with `jax.block_until_ready` on the step's metrics
  tokens/s    batch * seq_len / (ms/step)
  TFLOP/s     tokens/s * FLOPs/token, and MFU = that / the device's peak (`llm.runtime.hardware.peak_flops`: data
              sheet dense bf16 on GPU/TPU, a measured float32 matmul peak on CPU)
  compile s   `jit(step).lower(...)` + `.compile()` wall time (tracing and XLA compilation, before any run)
  1st step s  the first execution of the compiled step, alone
  XLA mem     the compiled program's memory analysis: arguments + outputs + temporaries - donated aliases
  peak GiB    on GPU, the device allocator's peak_bytes_in_use (skipped on CPU)

FLOP convention: PaLM (Chowdhery et al. 2022, appendix B), `llm.model.params.train_flops_per_token`:
6N + 12*L*H*Q*T per token, N = the matmul weights (the output projection included, embedding lookups
excluded), attention counted over the full T^2 (no causal halving, although causal kernels skip about half).

Presets:
  cpu        shakespeare_char baby (4x4x128, ctx 64, batch 12) and small (6x6x384, ctx 256, batch 64; ~8 s/step
             here, so only a couple of steps), both again with bfloat16 matmul operands (model.matmul_dtype;
             float32 sums and activations), then a compile-only comparison of 48 vs 4 layers (tiny width),
             scanned (scan_layers=True: the ratio should stay near 1) and unrolled for contrast
  cpu-quick  baby only, a few steps (the test's preset; well under a minute)
  gpu        Llama-style (RoPE, RMSNorm, SwiGLU, GQA) ~1B and ~350M, vocab 32000, bf16 compute, float32 params,
             length 2048, scan_layers: attention (cudnn, flash, xla) x remat (none, dots, full) x batch, most
             promising first, each in its own process, within --budget-s (default 240 s)

  python -m benchmarks.train --preset cpu
  python3 -m benchmarks.train --preset gpu --budget-s 240          # PYTHONPATH must contain the repo
  python -m benchmarks.train --preset gpu --only llama350m-cudnn-none-b32 --steps 20
  python -m benchmarks.train --preset cpu --only baby,baby-bfloat16-matmuls --repeats 3 --tag cpu-avx2

On GPU each configuration runs in a child process (`--isolate`, the default there): a clean allocator per
configuration (its own peak memory, an out-of-memory error cannot leave fragments behind), a kernel that
crashes or poisons the CUDA context loses one row, not the run, and a configuration that overruns the budget
is killed. Children get XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 unless it is set (JAX's default pre-allocates
75% of the 141 GB, too little for the larger batches without remat). No XLA flags are set; XLA_FLAGS from the
environment is honoured and recorded. Results are rewritten after every configuration, so a run cut short still
leaves what it finished: benchmarks/results/train_<preset>.{json,md} (`--tag` names them otherwise), with the
processor (benchmarks/record.py). `--repeats N` runs the configurations N times in turn and summarises each by
its median.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import record
from llm.config import model_config, validate_config
from llm.model import Transformer
from llm.model.params import count_params, flops_params, param_count_formula, train_flops_per_token
from llm.runtime.hardware import PEAK_FLOPS, peak_flops
from llm.runtime.host_memory import keep_freed_host_memory
from llm.state.optimizers import make_optimizer
from llm.state.train_state import create_train_state
from llm.training.steps import make_train_step

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
PRESETS = ("cpu", "cpu-quick", "gpu")
DEFAULT_BUDGET_S = {"cpu": 1800.0, "cpu-quick": 60.0, "gpu": 240.0}
FLOP_CONVENTION = ("PaLM appendix B: 6N + 12*L*H*Q*T training FLOPs per token (N = matmul weights incl. the output "
                   "projection, embedding lookups excluded; attention over the full T^2, no causal halving); "
                   "MFU = tokens/s * FLOPs per token / peak FLOP/s")
MFU_TARGET = 0.5  # the GPU preset's goal for its best configuration
MIN_START_S = 25.0  # an isolated configuration is not started with less budget left than this
GRACE_S = 10.0  # a child may overrun what is left of the budget by this much before it is killed
GPU_MEM_FRACTION = "0.92"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark configuration: an experiment preset plus dotted config overrides."""

    name: str
    experiment: str  # a file in experiments/, without .py
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    warmup: int = 2  # untimed steps, the first included (>= 1)
    steps: int = 10  # timed steps
    compile_only: bool = False
    compile_repeats: int = 1  # compile-only: best of this many lower+compile timings
    group: str = ""  # compile-only: rows of one group are compared with the group's first row

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        d = json.loads(text)
        d["overrides"] = tuple((k, v) for k, v in d["overrides"])
        return cls(**d)


def _llama(size: str, attn: str, remat: str, batch: int) -> Spec:
    return Spec(f"llama{size}-{attn}-{remat}-b{batch}", "llama", size,
                (("model.vocab_size", 32000), ("model.dtype", "bfloat16"), ("model.param_dtype", "float32"),
                 ("model.scan_layers", True), ("model.max_len", 2048), ("model.attention_impl", attn),
                 ("model.remat", remat), ("train.batch_size", batch)),
                warmup=2, steps=10)


def _shakespeare(preset: str, matmul_dtype: str | None = None, **kw) -> Spec:
    overrides = (("model.vocab_size", 65),)
    if matmul_dtype is None:
        return Spec(preset, "shakespeare_char", preset, overrides, **kw)
    overrides += (("model.matmul_dtype", matmul_dtype),)
    return Spec(f"{preset}-{matmul_dtype}-matmuls", "shakespeare_char", preset, overrides, **kw)


def _compile_case(layers: int, scan: bool) -> Spec:
    # A tiny width, so that the time is tracing + compiling, not big-buffer work.
    return Spec(f"compile-{'scan' if scan else 'unrolled'}-{layers}L", "shakespeare_char", "baby",
                (("model.vocab_size", 65), ("model.n_layers", layers), ("model.d_model", 64), ("model.n_heads", 2),
                 ("model.scan_layers", scan), ("train.batch_size", 4)),
                compile_only=True, compile_repeats=3 if scan else 1, group="scan" if scan else "unrolled")


def preset_specs(preset: str) -> list[Spec]:
    """The configurations of a preset, in the order they run (on GPU: most promising first)."""
    if preset == "cpu-quick":
        return [_shakespeare("baby", warmup=2, steps=5)]
    if preset == "cpu":
        return [_shakespeare("baby", warmup=3, steps=30), _shakespeare("small", warmup=1, steps=2),
                _shakespeare("baby", "bfloat16", warmup=3, steps=30),
                _shakespeare("small", "bfloat16", warmup=1, steps=2),
                _compile_case(4, True), _compile_case(48, True), _compile_case(4, False), _compile_case(48, False)]
    if preset == "gpu":
        # Batch sizes from JAX's saved residuals of the loss (jax.ad_checkpoint's saved_residuals, 'chunked'
        # standing in for cudnn) plus the logits' float32 buffers and the float32 params + AdamW state, against
        # ~121 GiB usable (0.92 of 141 GB): 1B 'dots' b16 ~60 GiB, 'none' b16 ~107 GiB (80 GiB of residuals),
        # 'full' b32 ~45 GiB; 350M 'dots' b32 ~60 GiB, 'none' b16 ~62 GiB (b32 would be ~118). 'dots' saves
        # every projection's output and recomputes only elementwise ops and the attention forward (a cuDNN or
        # Pallas call is no dot), so it is expected within a few percent of 'none' for far less memory; the
        # XLA path materialises [B, H, T, T] scores and runs last, small. Most promising first: the 1B (its
        # wider matmuls run closer to peak), cuDNN attention.
        return [
            _llama("1b", "cudnn", "dots", 16),
            _llama("1b", "cudnn", "none", 16),
            _llama("1b", "flash", "dots", 16),
            _llama("350m", "cudnn", "dots", 32),
            _llama("350m", "cudnn", "none", 16),
            _llama("1b", "cudnn", "full", 32),
            _llama("350m", "flash", "dots", 32),
            _llama("350m", "xla", "dots", 8),
        ]
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


# ------------------------------------------------------------------------------------------------------------
# one configuration


def load_experiment(name: str, preset: str):
    """`experiments/<name>.py`'s get_config(preset) (experiments/ is not a package)."""
    path = REPO / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_benchmark_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def build_config(spec: Spec):
    config = load_experiment(spec.experiment, spec.preset)
    for key, value in spec.overrides:
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = value
    validate_config(config)
    return config


def synthetic_batches(vocab: int, batch: int, seq_len: int, n: int = 2, seed: int = 0):
    """n (inputs, targets) pairs of uniform random tokens on the device; targets are inputs shifted by one."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)
        out.append((jax.device_put(tokens[:, :-1]), jax.device_put(tokens[:, 1:])))
    return out


def is_oom(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def device_info(matmul_dtype: str | None = None) -> dict[str, Any]:
    """The device, and its peak FLOP/s for matmuls with `matmul_dtype` operands (on CPU: measured)."""
    dev = jax.devices()[0]
    peak = peak_flops(dev, matmul_dtype)
    table = any(kind.lower() in dev.device_kind.lower() for kind in PEAK_FLOPS)
    measured = f"measured {matmul_dtype or 'float32'} 1024^3 matmul, best of 5"
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "peak_flops": peak,
            "peak_source": "data sheet, dense bf16" if table else (measured if dev.platform == "cpu" else "unknown")}


def memory_analysis(compiled) -> dict[str, float]:
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if m is None:
        return {}
    get = lambda name: float(getattr(m, name, 0) or 0)
    total = (get("argument_size_in_bytes") + get("output_size_in_bytes") + get("temp_size_in_bytes")
             - get("alias_size_in_bytes"))
    return {"xla_mem_bytes": total, "xla_temp_bytes": get("temp_size_in_bytes")}


def device_memory() -> dict[str, float]:
    stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
    if not stats:
        return {}
    return {"peak_bytes": float(stats.get("peak_bytes_in_use", 0)), "bytes_limit": float(stats.get("bytes_limit", 0))}


def describe(spec: Spec, config, cfg) -> dict[str, Any]:
    seq_len = config.train.seq_len or cfg.max_len
    return {
        "model": f"{cfg.n_layers}x{cfg.d_model} h{cfg.n_heads}/{cfg.kv_heads} ff{cfg.hidden_ff} v{cfg.vocab_size}",
        "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "kv_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head, "d_ff": cfg.hidden_ff, "vocab_size": cfg.vocab_size,
        "batch": config.train.batch_size, "seq_len": seq_len, "attention_impl": cfg.attention_impl,
        "remat": cfg.remat, "scan_layers": cfg.scan_layers, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
        "matmul_dtype": cfg.matmul_dtype,
        "dropout": cfg.dropout, "params_formula": param_count_formula(cfg)["total"],
        "flops_params": flops_params(cfg), "flops_per_token": train_flops_per_token(cfg, seq_len),
        "optimizer": config.optim.name,
    }


def run_spec(spec: Spec, *, steps: int | None = None, warmup: int | None = None, deadline: float | None = None,
             log=print) -> dict[str, Any]:
    """Benchmark one configuration in this process; never raises (failures become the row's status).

    deadline: a `time.time()` by which the timed steps should end; fewer are run (at least one) if the warm-up
      steps show that all of them would not fit.
    """
    t_start = time.perf_counter()
    row: dict[str, Any] = {"name": spec.name, "kind": "compile" if spec.compile_only else "train",
                           "group": spec.group, "status": "error"}
    try:
        row["host_malloc_tuned"] = keep_freed_host_memory()  # as `llm train` runs
        config = build_config(spec)
        row.update(device_info(config.model.matmul_dtype))
        cfg = model_config(config)
        row.update(describe(spec, config, cfg))
        if spec.compile_only:
            _compile_only(spec, config, cfg, row)
        else:
            _train(spec, config, cfg, row, steps=spec.steps if steps is None else steps,
                   warmup=spec.warmup if warmup is None else warmup, deadline=deadline, log=log)
        row["status"] = "ok"
    except Exception as e:  # every failure is a row, never a crash
        row["status"] = "oom" if is_oom(e) else "error"
        row["error"] = first_line(e)
    finally:
        row["wall_s"] = time.perf_counter() - t_start
        gc.collect()
    return row


def _compile_only(spec: Spec, config, cfg, row: dict[str, Any]) -> None:
    model = Transformer(cfg)
    tx, lr = make_optimizer(config.optim, config.train.steps)
    seq_len, batch = row["seq_len"], row["batch"]
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.PRNGKey(0), seq_len))
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    best = None
    for _ in range(max(1, spec.compile_repeats)):
        step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(1),  # a fresh jit: no cached trace
                               dropout_rng=config.train.dropout_rng)
        t0 = time.perf_counter()
        lowered = step.lower(abstract, tokens, tokens)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0] + best[1]:
            best = (t1 - t0, t2 - t1)
    row.update(lower_s=best[0], xla_compile_s=best[1], compile_s=best[0] + best[1], **memory_analysis(compiled))


def _train(spec: Spec, config, cfg, row: dict[str, Any], *, steps: int, warmup: int, deadline: float | None,
           log) -> None:
    warmup, steps = max(1, warmup), max(1, steps)
    model = Transformer(cfg)
    tx, lr = make_optimizer(config.optim, config.train.steps)
    seq_len, batch = row["seq_len"], row["batch"]
    t0 = time.perf_counter()
    state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), seq_len)
    jax.block_until_ready(state)
    row["init_s"] = time.perf_counter() - t0
    row["params"] = count_params(state.params)
    batches = synthetic_batches(cfg.vocab_size, batch, seq_len)

    step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(1), dropout_rng=config.train.dropout_rng)
    t0 = time.perf_counter()
    lowered = step.lower(state, *batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    row.update(lower_s=t1 - t0, xla_compile_s=t2 - t1, compile_s=t2 - t0, **memory_analysis(compiled))
    log(f"  {spec.name}: compiled in {t2 - t0:.1f} s; {warmup} warm-up + {steps} timed steps")

    times, losses = [], []
    total, i = warmup + steps, 0
    while i < total:
        x, y = batches[i % len(batches)]
        t = time.perf_counter()
        state, metrics = compiled(state, x, y)
        jax.block_until_ready(metrics)
        dt = time.perf_counter() - t
        if i == 0:
            row["first_step_s"] = dt
        if i >= warmup:
            times.append(dt)
        losses.append(float(metrics["loss"]))
        i += 1
        if deadline is not None and warmup <= i < total:
            fit = int((deadline - time.time()) // dt)
            if fit < total - i:
                total = max(warmup + 1, i + max(fit, 0))
                row["note"] = f"timed steps cut from {steps} to {total - warmup} by the budget"
    jax.block_until_ready(state)
    del state

    tokens = batch * seq_len
    step_s = statistics.median(times)
    row.update(warmup=warmup, steps=len(times), ms_per_step=1e3 * step_s, ms_min=1e3 * min(times),
               ms_max=1e3 * max(times), tokens_per_step=tokens, tokens_per_s=tokens / step_s,
               loss_first=losses[0], loss_last=losses[-1])
    row["tflops"] = row["tokens_per_s"] * row["flops_per_token"] / 1e12
    row["mfu"] = row["tflops"] * 1e12 / row["peak_flops"]
    row.update(device_memory())
    if not all(np.isfinite(losses)):
        row["note"] = "non-finite loss" + (f"; {row['note']}" if "note" in row else "")


# ------------------------------------------------------------------------------------------------------------
# isolated configurations (a child process each)


def run_isolated(spec: Spec, *, steps: int | None, warmup: int | None, deadline: float, timeout_s: float,
                 log=print) -> dict[str, Any]:
    """`run_spec` in a child process, killed after timeout_s; its output is streamed with a prefix."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.train", "--child-spec", spec.to_json(), "--child-out", str(out),
               "--child-deadline", repr(deadline)]
        if steps is not None:
            cmd += ["--steps", str(steps)]
        if warmup is not None:
            cmd += ["--warmup", str(warmup)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        tail: list[str] = []

        def pump():
            for line in proc.stdout:
                tail.append(line.rstrip())
                del tail[:-40]
                log(f"    | {line.rstrip()}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()  # this child only (its own session); it holds the device, so no grace period
            proc.wait()
        reader.join(timeout=5)
        wall = time.perf_counter() - t0
        if out.exists():
            row = json.loads(out.read_text())
        else:
            row = {"name": spec.name, "kind": "compile" if spec.compile_only else "train", "group": spec.group}
            if timed_out:
                row.update(status="timeout", error=f"killed after {timeout_s:.0f} s (budget or --config-timeout-s)")
            else:
                errors = [ln for ln in tail if "Error" in ln or "error" in ln] or tail or [""]
                status = "oom" if any("RESOURCE_EXHAUSTED" in ln for ln in tail) else "error"
                row.update(status=status, error=f"child exited with {proc.returncode}: {errors[-1].strip()}"[:300])
        row["process_wall_s"] = wall
        return row


# ------------------------------------------------------------------------------------------------------------
# the preset driver and the results files


def run_benchmark(preset: str, *, out_dir: str | Path = RESULTS_DIR, steps: int | None = None,
                  warmup: int | None = None, budget_s: float | None = None, isolate: bool | None = None,
                  only: list[str] | None = None, config_timeout_s: float = 150.0, command: str | None = None,
                  repeats: int = 1, tag: str | None = None, log=print):
    """Run a preset's configurations within the budget; returns (meta, rows, (json path, markdown path)).

    repeats > 1 runs the whole list that many times in turn (A, B, A, B, ...), so that other jobs' load falls on
    every configuration alike; each run is a row (its `run` numbered from 1) and the summary gives each
    configuration's median. The files are train_<tag> (default: the preset's name) in out_dir.

    No configuration starts once `budget_s` has passed since the start (isolated ones need MIN_START_S left);
    a running one trims its timed steps to end by then, and an isolated one is killed at min(what is left +
    GRACE_S, config_timeout_s) (a compile that overruns): the whole run ends within budget_s + GRACE_S.
    Configurations not started are rows with status 'skipped'.
    """
    t_start, wall_start = time.perf_counter(), time.time()
    budget_s = DEFAULT_BUDGET_S[preset] if budget_s is None else budget_s
    deadline = wall_start + budget_s
    isolate = preset == "gpu" if isolate is None else isolate
    specs = preset_specs(preset)
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise ValueError(f"unknown configuration(s) {unknown}; {preset} has {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in only]
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    per_run = len(specs)
    specs = specs * repeats
    meta: dict[str, Any] = {
        "preset": preset, "tag": tag or preset, "repeats": repeats,
        **record.machine(command or f"python -m benchmarks.train --preset {preset}", device=False),
        "versions": _versions(), "flop_convention": FLOP_CONVENTION,
        "timing": "median of timed steps after warm-up, each blocked with jax.block_until_ready on the metrics; "
                  "synthetic uniform random tokens",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""), "budget_s": budget_s,
        "isolated": isolate, "git_commit": _git_commit(),
    }
    if not isolate:  # a child reports its device; the parent must not start (and pre-allocate) one itself
        meta.update(device_info())
    numbers = [{"run": i // per_run + 1} if repeats > 1 else {} for i in range(len(specs))]
    rows: list[dict[str, Any]] = [{"name": s.name, "kind": "compile" if s.compile_only else "train",
                                   "group": s.group, "status": "pending", **n} for s, n in zip(specs, numbers)]
    paths = write_results(meta, rows, out_dir)
    log(f"{preset}: {len(specs)} configuration(s), budget {budget_s:.0f} s{', one process each' if isolate else ''}")
    for i, spec in enumerate(specs):
        elapsed = time.perf_counter() - t_start
        left = budget_s - elapsed
        if left <= 0 or (isolate and left < MIN_START_S):
            rows[i] = dict(rows[i], status="skipped", error=f"budget: {max(left, 0):.0f} s of {budget_s:.0f} s left")
            log(f"[{i + 1}/{len(specs)}] {spec.name}: skipped ({max(left, 0):.0f} s of the budget left)")
            continue
        log(f"[{i + 1}/{len(specs)}] {spec.name} (+{elapsed:.0f} s)")
        if isolate:
            row = run_isolated(spec, steps=steps, warmup=warmup, deadline=deadline,
                               timeout_s=min(left + GRACE_S, config_timeout_s), log=log)
        else:
            row = run_spec(spec, steps=steps, warmup=warmup, deadline=deadline, log=log)
            jax.clear_caches()
        rows[i] = {**row, **numbers[i]}
        for key in ("platform", "device_kind", "device_count", "peak_flops", "peak_source"):
            if key in row and key not in meta:
                meta[key] = row[key]
        log("  " + one_line(row))
        meta["elapsed_s"] = time.perf_counter() - t_start
        meta["summary"] = summary(rows, preset)
        write_results(meta, rows, out_dir)
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["summary"] = summary(rows, preset)
    paths = write_results(meta, rows, out_dir)
    return meta, rows, paths


def one_line(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row['name']}: {row.get('status')} {row.get('error', '')}"
    if row["kind"] == "compile":
        return f"{row['name']}: lower {row['lower_s']:.2f} s + compile {row['xla_compile_s']:.2f} s"
    return (f"{row['name']}: {row['ms_per_step']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, "
            f"{row['tflops']:.3g} TFLOP/s, MFU {row['mfu']:.1%}, compile {row['compile_s']:.1f} s, "
            f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")


def summary(rows: list[dict[str, Any]], preset: str) -> list[str]:
    lines = []
    ok = [r for r in rows if r.get("status") == "ok" and r["kind"] == "train"]
    if ok:
        best = max(ok, key=lambda r: r["mfu"])
        lines.append(f"best MFU: {best['name']} {best['mfu']:.1%} ({best['tflops']:.4g} TFLOP/s of "
                     f"{best['peak_flops'] / 1e12:.4g} peak, {best['tokens_per_s']:,.0f} tokens/s)")
        if preset == "gpu":
            lines.append(f"TARGET MFU >= {MFU_TARGET:.0%} (PaLM convention): "
                         f"{'MET' if best['mfu'] >= MFU_TARGET else 'NOT MET'}")
    runs: dict[str, list[float]] = {}
    for r in ok:
        if "run" in r:
            runs.setdefault(r["name"], []).append(r["ms_per_step"])
    for name, ms in runs.items():
        lines.append(f"{name}: median {statistics.median(ms):.1f} ms/step over {len(ms)} runs "
                     f"({', '.join(f'{m:.1f}' for m in ms)})")
    for group in ("scan", "unrolled"):
        g = [r for r in rows if r.get("group") == group and r.get("status") == "ok"]
        if len(g) >= 2:
            lo, hi = min(g, key=lambda r: r["n_layers"]), max(g, key=lambda r: r["n_layers"])
            ratio = hi["compile_s"] / lo["compile_s"]
            lines.append(f"compile time, {group}: {hi['n_layers']} layers {hi['compile_s']:.2f} s vs "
                         f"{lo['n_layers']} layers {lo['compile_s']:.2f} s: ratio {ratio:.2f}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    lines.append("rows: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return lines


def _fmt(value, spec: str = "", scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return format(value / scale, spec)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    gib = 2**30
    out = [f"# Training throughput ({meta['preset']}: {meta.get('device_kind', '?')})", "",
           record.machine_line(meta), "",
           f"FLOPs: {meta['flop_convention']}. Peak: {_fmt(meta.get('peak_flops'), '.4g', 1e12)} TFLOP/s "
           f"({meta.get('peak_source', '?')}). Timing: {meta['timing']}. XLA mem: compiled memory analysis "
           "(arguments + outputs + temporaries - donated). peak: device allocator's peak_bytes_in_use (GPU only).",
           ""]
    train = [r for r in rows if r["kind"] == "train"]
    other_peaks = [r for r in train if r.get("peak_flops") and r["peak_flops"] != meta.get("peak_flops")]
    if other_peaks:
        against = {r["name"]: f"{r['name']} against {r['peak_flops'] / 1e12:.4g} TFLOP/s ({r['peak_source']})"
                   for r in other_peaks}  # each configuration once, however many runs it has
        out += ["MFU of " + "; ".join(against.values()) + ".", ""]
    if train:
        out += ["| config | model | params | batch x seq | attention | remat | dtype | ms/step | tokens/s | TFLOP/s "
                "| MFU | compile s | 1st step s | XLA mem GiB | peak GiB | loss | status |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            params = r.get("params", r.get("params_formula"))
            shape = f"{r['batch']} x {r['seq_len']}" if "batch" in r else ""
            loss = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_last" in r else ""
            status = r.get("status", "")
            if r.get("error"):
                status += f": {r['error']}"
            if r.get("note"):
                status += f" ({r['note']})"
            dtype = r.get("dtype", "") + (f", {r['matmul_dtype']} matmuls" if r.get("matmul_dtype") else "")
            out.append("| " + " | ".join([
                r["name"] + (f" (run {r['run']})" if "run" in r else ""), r.get("model", ""),
                _fmt(params, ",.0f"), shape, r.get("attention_impl", ""),
                r.get("remat", ""), dtype, _fmt(r.get("ms_per_step"), ".1f"),
                _fmt(r.get("tokens_per_s"), ",.0f"), _fmt(r.get("tflops"), ".3g"), _fmt(r.get("mfu"), ".1%"),
                _fmt(r.get("compile_s"), ".1f"), _fmt(r.get("first_step_s"), ".2f"),
                _fmt(r.get("xla_mem_bytes"), ".2f", gib), _fmt(r.get("peak_bytes"), ".1f", gib), loss, status,
            ]).replace("\n", " ") + " |")
        out.append("")
    comp = [r for r in rows if r["kind"] == "compile"]
    if comp:
        out += ["Compile only (`lower` + `compile` of the train step; best of the repeats):", "",
                "| config | model | scan_layers | lower s | XLA compile s | total s | x first of group | status |",
                "|---|---|---|---|---|---|---|---|"]
        firsts: dict[str, float] = {}
        for r in comp:
            ratio = ""
            if r.get("status") == "ok":
                first = firsts.setdefault(r["group"], r["compile_s"])
                ratio = f"{r['compile_s'] / first:.2f}"
            status = r.get("status", "") + (f": {r['error']}" if r.get("error") else "")
            out.append("| " + " | ".join([
                r["name"], r.get("model", ""), str(r.get("scan_layers", "")), _fmt(r.get("lower_s"), ".2f"),
                _fmt(r.get("xla_compile_s"), ".2f"), _fmt(r.get("compile_s"), ".2f"), ratio, status]) + " |")
        out.append("")
    if meta.get("summary"):
        out += ["## Summary", ""] + [f"- {line}" for line in meta["summary"]] + [""]
    return "\n".join(out)


def write_results(meta: dict[str, Any], rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    stem = Path(out_dir) / f"train_{meta.get('tag', meta['preset'])}"
    return record.write_results(stem, {"meta": meta, "rows": rows}, markdown(meta, rows), default=_json_default)


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("jaxlib", "flax", "optax", "ml_collections", "numpy"):
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = ""
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: the preset's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, >= 1 (default: the preset's)")
    p.add_argument("--out", default=str(RESULTS_DIR), help="results directory")
    p.add_argument("--budget-s", type=float, default=None,
                   help="no configuration starts after this many seconds (default: gpu 240, cpu-quick 60, cpu 1800)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each configuration in its own process (default: on for the gpu preset)")
    p.add_argument("--config-timeout-s", type=float, default=150.0,
                   help="an isolated configuration is killed after this long (and when the budget runs out)")
    p.add_argument("--only", default=None, help="comma-separated configuration names of the preset")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the configurations this many times in turn; the summary gives each one's median")
    p.add_argument("--tag", default=None, help="results file name: train_<tag>.{json,md} (default: the preset)")
    p.add_argument("--list", action="store_true", help="print the preset's configurations and exit")
    p.add_argument("--child-spec", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-deadline", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    keep_freed_host_memory()  # before the first computation: it also chooses how XLA:CPU runs programs

    if a.child_spec:  # one isolated configuration, run by run_isolated
        row = run_spec(Spec.from_json(a.child_spec), steps=a.steps, warmup=a.warmup, deadline=a.child_deadline)
        Path(a.child_out).write_text(json.dumps(row, default=_json_default))
        return 0
    if a.list:
        for s in preset_specs(a.preset):
            print(s.name, dict(s.overrides))
        return 0
    if a.preset == "gpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION)
    command = record.command_line("train", argv)
    meta, _, (json_path, md_path) = run_benchmark(
        a.preset, out_dir=a.out, steps=a.steps, warmup=a.warmup, budget_s=a.budget_s, isolate=a.isolate,
        only=a.only.split(",") if a.only else None, config_timeout_s=a.config_timeout_s, command=command,
        repeats=a.repeats, tag=a.tag)
    print()
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path} in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
