"""Attention benchmark: implementations x lengths x head dims x masking x dtype, forward and forward+backward.

For each case it reports the median wall time of several runs after warm-up (blocking on the results),
TFLOP/s in the FlashAttention convention (forward 4*B*H*S^2*D, halved when causal; backward 2.5x, forward +
backward 3.5x), and memory: XLA's compiled memory analysis (arguments + outputs + temporaries - aliased; it
needs no allocation, so it also covers cases too big or too slow to run) and, on GPU, the device's
peak_bytes_in_use after the case (a process-wide high-water mark: it only ever grows). Before timing, each
implementation is checked against `reference` at a small length. A failing case (OOM, unsupported option) is
recorded with its error, never a crash. Results go to benchmarks/results/attention_<platform>.{json,md}.

  python -m benchmarks.attention --quick        # CPU: a few minutes, shows the memory story at 16k-32k tokens
  python -m benchmarks.attention --gpu-suite    # H200: flash vs cuDNN vs XLA, bf16, plus a forward autotune
  python -m benchmarks.attention --mgpu-suite   # H200: Mosaic GPU forward vs Triton vs cuDNN (~2 min)

Implementations: those of `llm.ops.attention` plus 'flash_mgpu' / 'flash_triton' (impl='flash' with the
backend pinned to 'mosaic_gpu' / 'triton'; a call outside mgpu's scope is recorded as an error, not timed), and
'ring' / 'all_gather': context-parallel attention (llm/parallel/context/attention.py) with the sequence split over all
devices (balanced when causal; inputs taken as already laid out; memory is per device).
  python -m benchmarks.attention --impls flash,xla --seq-lens 4096 --head-dims 128 --flash block_k=64
  python -m benchmarks.attention --context-devices 8 --impls chunked,ring,all_gather --seq-lens 8192 \
      --head-dims 64 --causal true --dtypes float32 --tokens 8192 --heads-x-dim 256 --tag cpu_context
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import statistics
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import record
from llm.dtypes import parse_dtype
from llm.kernels import flash_attention as fa
from llm.ops.attention import AttentionSpec, attention
from llm.parallel.context.attention import Layout, context_attention

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass(frozen=True)
class Case:
    impl: str
    seq: int
    head_dim: int
    causal: bool
    dtype: str
    mode: str  # 'fwd' or 'fwd_bwd'
    batch: int
    heads: int
    kv_heads: int
    tuning: tuple = ()  # flash knobs as sorted (key, value) pairs
    timed: bool = True  # False: compiled memory analysis only
    untimed_why: str = ""

    @property
    def flops(self) -> float:
        return fa.flops(self.batch, self.seq, self.seq, self.heads, self.head_dim, causal=self.causal,
                        mode=self.mode)

    def label(self) -> str:
        mask = "causal" if self.causal else "full"
        return (f"{self.impl:9s} S={self.seq:<6d} D={self.head_dim:<4d} {mask:6s} {self.dtype:8s} "
                f"{self.mode:7s} B={self.batch} H={self.heads}/{self.kv_heads}")


# Benchmark-only names: the flash kernel with its lowering pinned.
FLASH_VARIANTS = {"flash_mgpu": "mosaic_gpu", "flash_triton": "triton"}


def is_flash(impl: str) -> bool:
    return impl == "flash" or impl in FLASH_VARIANTS


def impl_kwargs(case: Case) -> dict[str, Any]:
    if case.impl in FLASH_VARIANTS:
        return dict(case.tuning, backend=FLASH_VARIANTS[case.impl])
    if case.impl == "flash":
        return dict(case.tuning)
    if case.impl == "chunked":
        return {"block_k": 512}
    return {}


def make_inputs(case: Case, seq: int | None = None, batch: int | None = None, seed: int = 0):
    seq = seq or case.seq
    batch = batch or case.batch
    dt = parse_dtype(case.dtype, "--dtypes")
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (batch, seq, case.heads, case.head_dim), dt)
    k = jax.random.normal(ks[1], (batch, seq, case.kv_heads, case.head_dim), dt)
    v = jax.random.normal(ks[2], (batch, seq, case.kv_heads, case.head_dim), dt)
    do = jax.random.normal(ks[3], q.shape, dt)
    return (q, k, v) if case.mode == "fwd" else (q, k, v, do)


CONTEXT_IMPLS = ("ring", "all_gather")  # benchmark names of context-parallel attention over all devices


def context_fn(case: Case, *, in_order: bool):
    """Context-parallel attention over every device; it takes and gives sequences in the layout's order, or, with
    `in_order`, in slot order (for checking against the reference)."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("context",))
    layout = Layout("context", jax.device_count(), balanced=case.causal, strategy=case.impl)
    spec = AttentionSpec(causal=case.causal, scale=case.head_dim ** -0.5)

    def per_device(q, k, v):
        seg = jnp.zeros(q.shape[:2], jnp.int32)
        return context_attention(q, k, v, seg, seg, None, layout=layout, spec=spec)

    spec = jax.sharding.PartitionSpec(None, "context")
    split = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)
    if not in_order:
        return split

    def f(q, k, v):
        order = layout.order(q.shape[1])
        return split(q[:, order], k[:, order], v[:, order])[:, np.argsort(order)]

    return f


def make_fn(case: Case, impl: str | None = None, *, in_order: bool = False):
    """The jitted function a case times: attention, or attention's VJP (forward + backward)."""
    name = impl or case.impl
    if name in CONTEXT_IMPLS:
        f = context_fn(case, in_order=in_order)
    else:
        f = functools.partial(attention, spec=AttentionSpec("flash" if is_flash(name) else name, causal=case.causal),
                              **(impl_kwargs(case) if impl is None else {}))
    if case.mode == "fwd":
        return jax.jit(f)

    def fwd_bwd(q, k, v, do):
        out, vjp = jax.vjp(f, q, k, v)
        return out, vjp(do)

    return jax.jit(fwd_bwd)


def memory_bytes(compiled) -> int | None:
    """Bytes XLA's buffer assignment needs for one call: arguments + outputs + temporaries - aliases."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends have no analysis
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _short_error(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    text = msg[0] if msg else type(e).__name__
    for line in msg:  # prefer the informative line of an XLA error
        if "RESOURCE_EXHAUSTED" in line or "Out of memory" in line or "out of resource" in line.lower():
            text = line
            break
    return text[:300]


# --------------------------------------------------------------------------------------------------------
# Verification against the reference at a small size.

_VERIFIED: dict[tuple, str] = {}


def verify(case: Case, seq: int) -> str:
    """'ok', 'FAIL (max err ...)' or 'error: ...' for this implementation/option set at length `seq`."""
    key = (case.impl, case.head_dim, case.causal, case.dtype, case.mode, case.tuning, case.heads, case.kv_heads)
    if key in _VERIFIED:
        return _VERIFIED[key]
    if case.impl == "reference":
        _VERIFIED[key] = "ok (is reference)"
        return _VERIFIED[key]
    try:
        args = make_inputs(case, seq=seq, batch=1, seed=1)
        got = jax.tree.leaves(make_fn(case, in_order=True)(*args))
        want = jax.tree.leaves(make_fn(case, impl="reference")(*args))
        tol = 1e-4 if case.dtype == "float32" else 5e-2
        if jax.default_backend() == "gpu" and case.dtype == "float32":
            tol = 2e-2  # TF32 in XLA/cuDNN einsums
        worst = 0.0
        for g, w in zip(got, want):
            g32, w32 = np.asarray(g, np.float32), np.asarray(w, np.float32)
            err = float(np.max(np.abs(g32 - w32) / (tol + tol * np.abs(w32))))
            worst = max(worst, err)
        _VERIFIED[key] = "ok" if worst <= 1.0 else f"FAIL (err/tol {worst:.2f} at S={seq})"
    except Exception as e:
        _VERIFIED[key] = "error: " + _short_error(e)
    return _VERIFIED[key]


# --------------------------------------------------------------------------------------------------------
# One case.


def run_case(case: Case, *, warmup: int, iters: int, verify_len: int) -> dict[str, Any]:
    rec: dict[str, Any] = dict(dataclasses.asdict(case), tuning=dict(case.tuning), flops=case.flops)
    why = mgpu_fallback(case)
    if why:  # would silently time the Triton forward instead
        rec.update(verified="not run", error=f"outside the mgpu kernel's scope (Triton would run): {why}")
        return rec
    rec["verified"] = verify(case, min(verify_len, case.seq))
    try:
        fn = make_fn(case)
        args = make_inputs(case)
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        rec["compile_s"] = round(time.perf_counter() - t0, 3)
        rec["mem_bytes"] = memory_bytes(compiled)
        if not case.timed:
            rec["note"] = "compiled memory only, not run: " + (case.untimed_why or "above --time-max-len")
            return rec
        for _ in range(warmup):
            jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        rec["time_s"] = statistics.median(times)
        rec["tflops"] = case.flops / rec["time_s"] / 1e12
        stats = _device_memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            rec["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    except Exception as e:
        rec["error"] = _short_error(e)
    finally:
        jax.clear_caches()
    return rec


def mgpu_fallback(case: Case) -> str | None:
    """For a flash_mgpu case: why the call would fall back to Triton (None when mgpu runs it)."""
    if case.impl != "flash_mgpu":
        return None
    from llm.kernels import flash_common as fc

    dt = parse_dtype(case.dtype, "--dtypes")
    q = jax.ShapeDtypeStruct((case.batch, case.seq, case.heads, case.head_dim), dt)
    k = jax.ShapeDtypeStruct((case.batch, case.seq, case.kv_heads, case.head_dim), dt)
    knobs = dict(fa.default_tuning("mosaic_gpu", case.head_dim, dt), **dict(case.tuning))
    st = fc.FlashStatic(causal=case.causal, window=None, scale=case.head_dim ** -0.5, softcap=None,
                        q_len=case.seq, kv_len=case.seq, blocks=fa._fit_blocks(knobs, case.seq, case.seq, "mosaic_gpu"),
                        backend="mosaic_gpu", num_stages=knobs["num_stages"])
    return fa.mgpu_fallback_reason(st, q, k, False)


def _device_memory_stats():
    try:
        return jax.devices()[0].memory_stats()
    except Exception:
        return None


# --------------------------------------------------------------------------------------------------------
# Autotune: the flash forward (optionally forward + backward) over tiles, warps and stages.


def autotune(base: Case, grid: list[dict[str, int]], *, warmup: int, iters: int,
             on_result=None, impl: str = "flash") -> dict[str, Any]:
    """Time the flash kernel at `base` for each knob setting; the best verified one is `best`.

    `on_result(partial)` is called after every setting (the benchmark saves partial results with it)."""
    results = []
    tune = {"case": dataclasses.asdict(base), "results": results, "best": None}
    for knobs in grid:
        case = dataclasses.replace(base, impl=impl, tuning=tuple(sorted(knobs.items())))
        rec = run_case(case, warmup=warmup, iters=iters, verify_len=512)
        results.append({"tuning": knobs, "time_s": rec.get("time_s"), "tflops": rec.get("tflops"),
                        "verified": rec["verified"], "error": rec.get("error")})
        shown = f"{rec['tflops']:.1f} TFLOP/s" if rec.get("tflops") else rec.get("error", "")
        print(f"  autotune {knobs}: {shown}  {rec['verified']}", flush=True)
        good = [r for r in results if r["tflops"] and r["verified"].startswith("ok")]
        tune["best"] = max(good, key=lambda r: r["tflops"]) if good else None
        if on_result:
            on_result(tune)
    return tune


def fwd_tune_grid(head_dim: int) -> list[dict[str, int]]:
    """About a dozen forward settings around the Hopper sweet spot (128-row query tiles, 2-4 stage K/V
    pipeline). Pre-screened offline by compiling for sm_90 with Triton 3.6: all fit in shared memory and none
    spills registers (128-row tiles spill with 4 warps at head_dim 128, so those use 8)."""
    if head_dim <= 64:
        points = [(128, 128, 4, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 128, 4, 4), (128, 64, 4, 3),
                  (128, 64, 8, 3), (128, 64, 4, 4), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 3)]
    else:
        points = [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4),
                  (128, 32, 8, 3), (128, 32, 8, 4), (64, 64, 4, 2), (64, 64, 4, 3), (64, 64, 8, 3),
                  (64, 128, 8, 2), (64, 128, 8, 3)]
    return [dict(block_q=bq, block_k=bk, num_warps=w, num_stages=s) for bq, bk, w, s in points]


def mgpu_tune_grid(head_dim: int) -> list[dict[str, int]]:
    """Mosaic GPU forward: block_q is the CTA tile (two consumer warpgroups of block_q / 2 rows), block_k
    the key block of one TMA step, num_stages the K/V ring depth. Five settings that fit Hopper's 227 KiB
    of shared memory at head_dim 128 (3 stages of 128 keys is the tightest: ~226 KiB)."""
    points = [(128, 128, 2), (128, 128, 3), (128, 64, 2), (128, 64, 3), (128, 64, 4)]
    if head_dim <= 64:
        points += [(128, 256, 2)]
    return [dict(block_q=bq, block_k=bk, num_stages=s) for bq, bk, s in points]


def bwd_tune_grid() -> list[dict[str, int]]:
    """Backward tiles (dq: query rows x key block; dk/dv: key rows x query block), 8 warps (4 spill)."""
    grid = []
    for (bq_dq, bk_dq, bq_dkv, bk_dkv), stages in itertools.product(
            [(128, 64, 32, 128), (128, 32, 32, 128), (64, 64, 64, 64), (128, 64, 64, 64)], (2, 3)):
        grid.append(dict(block_q_dq=bq_dq, block_k_dq=bk_dq, block_q_dkv=bq_dkv, block_k_dkv=bk_dkv,
                         num_warps_bwd=8, num_stages_bwd=stages))
    return grid


# --------------------------------------------------------------------------------------------------------
# Presets and output.


def sweep(impls, seq_lens, head_dims, causals, dtypes, modes, *, tokens, heads_x_dim, kv_ratio,
          tuning=(), timed_max_len=None, untimed_why="") -> list[Case]:
    """Cases with batch = tokens // seq and heads = heads_x_dim // head_dim (constant work per length)."""
    cases = []
    for seq, d, causal, dtype, mode, impl in itertools.product(seq_lens, head_dims, causals, dtypes, modes,
                                                              impls):
        heads = max(1, heads_x_dim // d)
        cases.append(Case(impl=impl, seq=seq, head_dim=d, causal=causal, dtype=dtype, mode=mode,
                          batch=max(1, tokens // seq), heads=heads, kv_heads=max(1, heads // kv_ratio),
                          tuning=tuple(sorted(tuning)) if is_flash(impl) else (),
                          timed=timed_max_len is None or seq <= timed_max_len, untimed_why=untimed_why))
    return cases


def available(impl: str) -> bool:
    return impl != "cudnn" or jax.default_backend() == "gpu"


def fmt_bytes(n) -> str:
    return "" if n is None else f"{n / 2**20:,.1f}"


def fmt(x, spec: str, mul: float = 1.0) -> str:
    return "" if x is None else format(x * mul, spec)


def to_markdown(meta: dict, records: list[dict], tunes: list[dict]) -> str:
    lines = [f"# Attention benchmark ({meta['platform']}: {meta['device_kind']})", "", record.machine_line(meta), "",
             "TFLOP/s: forward 4*B*H*S^2*D (halved when causal), backward 2.5x, fwd+bwd 3.5x. "
             "mem: compiled memory analysis (arguments + outputs + temporaries), MiB.", "",
             "| impl | S | D | mask | dtype | pass | B x H/K | time ms | TFLOP/s | mem MiB | peak MiB | verified "
             "| note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        t = r.get("time_s")
        note = r.get("error") or r.get("note") or ""
        if is_flash(r["impl"]):
            knobs = ",".join(f"{k}={v}" for k, v in r["tuning"].items()) or "default tiles"
            note = f"{note} {knobs}".strip()
        lines.append(
            f"| {r['impl']} | {r['seq']} | {r['head_dim']} | {'causal' if r['causal'] else 'full'} | "
            f"{r['dtype']} | {r['mode']} | {r['batch']}x{r['heads']}/{r['kv_heads']} | "
            f"{fmt(t, '.2f', 1e3)} | {fmt(r.get('tflops'), '.3g')} | {fmt_bytes(r.get('mem_bytes'))} | "
            f"{fmt_bytes(r.get('device_peak_bytes'))} | {r['verified']} | {note.replace('|', '/')} |")
    for tune in tunes:
        c = tune["case"]
        lines += ["", f"## Autotune: {c['impl']} {c['mode']} S={c['seq']} D={c['head_dim']} "
                      f"{'causal' if c['causal'] else 'full'} {c['dtype']} B={c['batch']} H={c['heads']}", "",
                  "| config | time ms | TFLOP/s | verified |", "|---|---|---|---|"]
        for r in sorted(tune["results"], key=lambda r: -(r["tflops"] or 0)):
            cfg = ",".join(f"{k}={v}" for k, v in r["tuning"].items())
            status = r["verified"] if not r["error"] else r["error"][:80]
            lines.append(f"| {cfg} | {fmt(r['time_s'], '.3f', 1e3)} | {fmt(r['tflops'], '.1f')} | {status} |")
        if tune["best"]:
            lines += ["", f"Best: `{tune['best']['tuning']}` at {tune['best']['tflops']:.1f} TFLOP/s"]
    summary = meta.get("summary")
    if summary:
        lines += ["", "## Summary", ""] + [f"- {s}" for s in summary]
    return "\n".join(lines) + "\n"


def write_results(meta, records, tunes, out_dir, tag):
    base = os.path.join(out_dir, f"attention_{tag}")
    record.write_results(base, {"meta": meta, "records": records, "autotune": tunes}, to_markdown(meta, records, tunes),
                         default=str)
    return base


def parse_tuning(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items or []:
        key, _, val = item.partition("=")
        if key not in fa.TUNING_KEYS:
            raise SystemExit(f"--flash {item!r}: unknown knob; choose from {fa.TUNING_KEYS}")
        out[key] = int(val)
    return out


def gpu_summary(records: list[dict]) -> list[str]:
    """Flash vs cuDNN at each point both ran, and the H200 target check."""
    by = {}
    for r in records:
        if r.get("tflops"):
            by[(r["impl"], r["seq"], r["head_dim"], r["causal"], r["dtype"], r["mode"])] = r["tflops"]
    lines = []
    for (impl, seq, d, causal, dtype, mode), tf in sorted(by.items()):
        if impl != "flash":
            continue
        cud = by.get(("cudnn", seq, d, causal, dtype, mode))
        xla = by.get(("xla", seq, d, causal, dtype, mode))
        ratio = f", {tf / cud:.2f}x cuDNN ({cud:.0f})" if cud else ""
        ratio += f", {tf / xla:.2f}x XLA ({xla:.0f})" if xla else ""
        lines.append(f"flash {mode} S={seq} D={d} {'causal' if causal else 'full'} {dtype}: {tf:.0f} TFLOP/s{ratio}")
    tgt = by.get(("flash", 8192, 128, True, "bfloat16", "fwd"))
    cud = by.get(("cudnn", 8192, 128, True, "bfloat16", "fwd"))
    if tgt:
        ok = tgt >= 450 and (cud is None or tgt >= 0.9 * cud)
        lines.append(f"TARGET bf16/hd128/causal/8192 forward: {tgt:.0f} TFLOP/s (need >= 450 and >= 0.9x cuDNN"
                     f"{f' = {0.9 * cud:.0f}' if cud else ''}): {'MET' if ok else 'NOT MET'}")
    return lines


# The Triton forward's best H200 setting at bf16/hd128/causal/8192 (benchmarks/results/attention_gpu.md).
TRITON_BEST_FWD = dict(block_q=128, block_k=64, num_warps=8, num_stages=3)


def mgpu_summary(records: list[dict]) -> list[str]:
    """Mosaic GPU forward vs the Triton forward and cuDNN at each point, and the H200 target check."""
    by = {}
    for r in records:
        if r.get("tflops") and r.get("verified", "").startswith("ok"):
            key = (r["impl"], r["seq"], r["head_dim"], r["causal"], r["dtype"], r["mode"])
            by[key] = max(by.get(key, 0.0), r["tflops"])
    lines = []
    for (impl, seq, d, causal, dtype, mode), tf in sorted(by.items()):
        if impl != "flash_mgpu":
            continue
        rest = (seq, d, causal, dtype, mode)
        tri, cud = by.get(("flash_triton", *rest)), by.get(("cudnn", *rest))
        ratio = f", {tf / tri:.2f}x Triton ({tri:.0f})" if tri else ""
        ratio += f", {tf / cud:.2f}x cuDNN ({cud:.0f})" if cud else ""
        lines.append(f"flash_mgpu {mode} S={seq} D={d} {'causal' if causal else 'full'} {dtype}: {tf:.0f} TFLOP/s"
                     f"{ratio}")
    point = (8192, 128, True, "bfloat16", "fwd")
    tgt, cud = by.get(("flash_mgpu", *point)), by.get(("cudnn", *point))
    if tgt:
        ok = tgt >= 450 and (cud is None or tgt >= 0.9 * cud)
        lines.append(f"TARGET bf16/hd128/causal/8192 forward (mgpu): {tgt:.0f} TFLOP/s (need >= 450 and >= 0.9x "
                     f"cuDNN{f' = {0.9 * cud:.0f}' if cud else ''}): {'MET' if ok else 'NOT MET'}")
    else:
        lines.append("TARGET bf16/hd128/causal/8192 forward (mgpu): no verified mgpu timing: NOT MET")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default="reference,xla,cudnn,chunked,flash")
    p.add_argument("--seq-lens", default="1024,2048")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--causal", default="both", choices=["both", "true", "false"])
    p.add_argument("--dtypes", default="bfloat16")
    p.add_argument("--modes", default="fwd,fwd_bwd")
    p.add_argument("--tokens", type=int, default=16384, help="batch = tokens // seq")
    p.add_argument("--heads-x-dim", type=int, default=2048, help="heads = this // head_dim")
    p.add_argument("--kv-ratio", type=int, default=1, help="query heads per key/value head (GQA)")
    p.add_argument("--flash", action="append", default=[], help="flash knob, e.g. block_k=64 (repeatable)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--verify-len", type=int, default=1024)
    p.add_argument("--time-max-len", type=int, default=None, help="longer lengths: memory analysis only")
    p.add_argument("--autotune", action="store_true", help="tune the flash forward at the first point")
    p.add_argument("--autotune-bwd", action="store_true", help="also tune the flash backward knobs")
    p.add_argument("--quick", action="store_true", help="CPU preset: a few minutes")
    p.add_argument("--gpu-suite", action="store_true", help="H200 preset: flash vs cuDNN vs XLA + autotune")
    p.add_argument("--mgpu-suite", action="store_true",
                   help="H200 preset: Mosaic GPU forward (small autotune) vs Triton vs cuDNN; tag gpu_mgpu")
    p.add_argument("--context-devices", type=int, default=None,
                   help="simulate this many CPU devices (for the ring and all_gather rows)")
    p.add_argument("--out-dir", default=RESULTS_DIR)
    p.add_argument("--tag", default=None, help="file name tag (default: the platform, e.g. cpu or gpu)")
    a = p.parse_args(argv)
    if a.context_devices:  # read when JAX first asks for its devices, which is below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={a.context_devices}")

    platform = jax.default_backend()
    tag = a.tag or (f"{platform}_mgpu" if a.mgpu_suite else platform)
    summarize = mgpu_summary if a.mgpu_suite else (gpu_summary if platform == "gpu" else cpu_summary)
    flash_knobs = parse_tuning(a.flash)
    tunes: list[dict] = []
    cases: list[Case] = []
    meta = record.machine(record.command_line("attention", argv))
    records: list[dict] = []

    def run_all(cs):
        for c in cs:
            rec = run_case(c, warmup=a.warmup, iters=a.iters, verify_len=a.verify_len)
            records.append(rec)
            shown = (f"{rec['time_s'] * 1e3:9.2f} ms {rec['tflops']:8.2f} TFLOP/s" if rec.get("time_s")
                     else f"{'':31s}")
            print(f"{c.label()} {shown} mem {fmt_bytes(rec.get('mem_bytes')):>10s} MiB  {rec['verified']}  "
                  f"{rec.get('error', '')}", flush=True)
            meta["summary"] = summarize(records)
            write_results(meta, records, tunes, a.out_dir, tag)

    def save_tune(slot: int):
        def save(tune):
            tunes[slot:slot + 1] = [tune]
            write_results(meta, records, tunes, a.out_dir, tag)

        return save

    if a.quick:
        # CPU: timings at modest lengths, then compiled memory at 16k and 32k tokens, where the reference's
        # [S, S] scores take gigabytes and chunked/flash stay at O(S * block).
        a.warmup, a.iters = 1, 3
        common = dict(head_dims=[64], causals=[True], dtypes=["float32"], tokens=0, heads_x_dim=4 * 64,
                      kv_ratio=2, tuning=tuple(flash_knobs.items()))
        impls = ["reference", "dense", "xla", "chunked", "flash"]
        cases = sweep(impls, [1024, 4096], modes=["fwd", "fwd_bwd"], **common)
        why = ("the reference's and XLA's [S, S] float32 scores need tens of GiB here (24 GiB machine); "
               "chunked and flash are timed at 16k below")
        cases += sweep(impls, [16384, 32768], modes=["fwd", "fwd_bwd"], timed_max_len=0, untimed_why=why,
                       **common)
        cases += sweep(["chunked", "flash"], [16384], modes=["fwd"], **common)
        a.verify_len = 512
    elif a.gpu_suite:
        a.warmup, a.iters = 2, 7
        base = Case(impl="flash", seq=8192, head_dim=128, causal=True, dtype="bfloat16", mode="fwd", batch=2,
                    heads=16, kv_heads=16)
        print("autotune: flash forward at bf16/hd128/causal/8192", flush=True)
        tune = autotune(base, fwd_tune_grid(128), warmup=2, iters=5, on_result=save_tune(len(tunes)))
        best = dict(tune["best"]["tuning"]) if tune["best"] else {}
        if a.autotune_bwd:
            tb = autotune(dataclasses.replace(base, mode="fwd_bwd", tuning=tuple(sorted(best.items()))),
                          [dict(best, **g) for g in bwd_tune_grid()], warmup=1, iters=3,
                          on_result=save_tune(len(tunes)))
            if tb["best"]:
                best = dict(tb["best"]["tuning"])
        best.update(flash_knobs)
        write_results(meta, records, tunes, a.out_dir, tag)
        common = dict(dtypes=["bfloat16"], tokens=16384, heads_x_dim=2048, kv_ratio=1,
                      tuning=tuple(best.items()))
        impls = ["flash", "cudnn", "xla"]
        # The target point first, so it lands even if a later case runs out of time.
        cases = sweep(impls, [8192], [128], [True], modes=["fwd", "fwd_bwd"], **common)
        cases += sweep(["flash"], [8192], [128], [True], modes=["fwd"], **dict(common, tuning=()))  # defaults
        cases += sweep(impls, [2048, 4096, 16384], [128], [True], modes=["fwd", "fwd_bwd"], **common)
        cases += sweep(impls, [8192], [64], [True], modes=["fwd", "fwd_bwd"], **common)
        cases += sweep(impls, [8192], [128], [False], modes=["fwd", "fwd_bwd"], **common)
    elif a.mgpu_suite:
        # Budget ~2 minutes on an H200: a 5-setting mgpu forward autotune at the target point, then mgpu
        # (best setting) vs Triton (its best known setting) vs cuDNN, forward and forward + backward, causal
        # and not. The target point first, so it lands even if the step's time box cuts the rest.
        a.warmup, a.iters = 2, 7
        a.verify_len = min(a.verify_len, 1024)
        base = Case(impl="flash_mgpu", seq=8192, head_dim=128, causal=True, dtype="bfloat16", mode="fwd",
                    batch=2, heads=16, kv_heads=16)
        print("autotune: mgpu forward at bf16/hd128/causal/8192", flush=True)
        tune = autotune(base, mgpu_tune_grid(128), warmup=2, iters=5, on_result=save_tune(len(tunes)),
                        impl="flash_mgpu")
        best = dict(tune["best"]["tuning"]) if tune["best"] else {}
        best.update(flash_knobs)
        common = dict(dtypes=["bfloat16"], tokens=16384, heads_x_dim=2048, kv_ratio=1)
        for causal in (True, False):
            for mode in ("fwd", "fwd_bwd"):
                cases += sweep(["flash_mgpu"], [8192], [128], [causal], modes=[mode], tuning=tuple(best.items()),
                               **common)
                cases += sweep(["flash_triton"], [8192], [128], [causal], modes=[mode],
                               tuning=tuple(TRITON_BEST_FWD.items()), **common)
                cases += sweep(["cudnn"], [8192], [128], [causal], modes=[mode], **common)
        cases += sweep(["flash_mgpu", "flash_triton", "cudnn"], [8192], [64], [True], modes=["fwd"],
                       **dict(common, kv_ratio=4))
    else:
        causals = {"both": [True, False], "true": [True], "false": [False]}[a.causal]
        impls = [i for i in a.impls.split(",") if available(i)]
        if a.autotune:
            d, seq = int(a.head_dims.split(",")[0]), int(a.seq_lens.split(",")[0])
            base = Case(impl="flash", seq=seq, head_dim=d, causal=causals[0], dtype=a.dtypes.split(",")[0],
                        mode="fwd", batch=max(1, a.tokens // seq), heads=max(1, a.heads_x_dim // d),
                        kv_heads=max(1, a.heads_x_dim // d // a.kv_ratio))
            autotune(base, fwd_tune_grid(d), warmup=a.warmup, iters=a.iters, on_result=save_tune(len(tunes)))
        cases = sweep(impls, [int(s) for s in a.seq_lens.split(",")], [int(d) for d in a.head_dims.split(",")],
                      causals, a.dtypes.split(","), a.modes.split(","), tokens=a.tokens,
                      heads_x_dim=a.heads_x_dim, kv_ratio=a.kv_ratio, tuning=tuple(flash_knobs.items()),
                      timed_max_len=a.time_max_len)
    cases = [c for c in cases if available(c.impl)]
    run_all(cases)
    meta["summary"] = summarize(records)
    base = write_results(meta, records, tunes, a.out_dir, tag)
    for line in meta["summary"]:
        print(line)
    print(f"wrote {base}.json and {base}.md")
    return 0


def cpu_summary(records: list[dict]) -> list[str]:
    """Memory of chunked and flash relative to the reference at each length both were analysed."""
    mem = {(r["impl"], r["seq"], r["mode"]): r.get("mem_bytes") for r in records if r.get("mem_bytes")}
    lines = []
    for (impl, seq, mode), m in sorted(mem.items()):
        ref = mem.get(("reference", seq, mode))
        if impl in ("chunked", "flash") and ref and seq >= 16384:
            lines.append(f"{impl} {mode} S={seq}: {m / 2**20:,.1f} MiB = {m / ref:.1%} of reference's "
                         f"{ref / 2**20:,.1f} MiB")
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
