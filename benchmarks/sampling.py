"""Sampling throughput: the KV-cache decoder (`llm.inference.generate`) against recomputing the whole prefix.

For one model (random weights: speed does not depend on them) and a 64-token prompt, each method generates
`--new-tokens` (512) tokens greedily:

  kv-cache    `llm.inference.generate`: one prefill, then one compiled decode step per token inside a lax.scan
              (the whole generation is one jitted call), at batch sizes 1, 8, 32
  recompute   no cache: every new token runs the full forward pass over the prefix so far and takes the last
              position's logits; the prefix is padded to the next multiple of 64 tokens (a handful of compiled
              shapes instead of 512) and the step is jitted, so this is recomputation, not retracing

Both are timed after a warm-up call that compiles them (compile time excluded), each the median of `--repeats`
runs. The greedy tokens of the two methods must agree (checked, reported). tokens/s = batch * new tokens / time.

    python -m benchmarks.sampling                  # writes benchmarks/results/sampling_<device>.{json,md}
    python -m benchmarks.sampling --new-tokens 128 --batches 1,4 --repeats 1    # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import record
from llm.config.sampling import SamplingParams
from llm.inference import generate
from llm.model import ModelConfig, Transformer
from llm.model.params import count_params
from llm.runtime.host_memory import keep_freed_host_memory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BUCKET = 64


def build(cfg: ModelConfig):
    model = Transformer(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return model, params


def recompute_generate(model, params, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy tokens [B, new_tokens], each from a full forward pass over the prefix (padded to a multiple of 64)."""
    forward = jax.jit(lambda p, x, last: jnp.argmax(
        jax.lax.dynamic_index_in_dim(model.apply({"params": p}, x), last, axis=1, keepdims=False), -1))
    b, t0 = prompts.shape
    buf = np.zeros((b, -(-(t0 + new_tokens) // BUCKET) * BUCKET), np.int32)
    buf[:, :t0] = prompts
    for i in range(new_tokens):
        n = t0 + i
        width = -(-n // BUCKET) * BUCKET
        buf[:, n] = np.asarray(forward(params, jnp.asarray(buf[:, :width]), n - 1))
    return buf[:, t0:t0 + new_tokens]


def timed(fn, repeats: int):
    fn()  # compile
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--batches", default="1,8,32", help="kv-cache batch sizes (the first is also run by recompute)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    cfg = ModelConfig(vocab_size=256, max_len=args.prompt_len + args.new_tokens, d_model=args.d_model,
                      n_layers=args.layers, n_heads=max(1, args.d_model // 64), position="rope", norm="rmsnorm",
                      ffn="swiglu", use_bias=False)
    malloc_tuned = keep_freed_host_memory()  # as `llm sample` runs (before the first computation)
    model, params = build(cfg)
    rng = np.random.default_rng(0)
    rows = []
    device = jax.devices()[0]

    def row(method, batch, seconds, agree=None):
        r = {"method": method, "batch": batch, "new_tokens": args.new_tokens, "seconds": seconds,
             "tokens_per_s": batch * args.new_tokens / seconds, "ms_per_token_step": 1e3 * seconds / args.new_tokens}
        if agree is not None:
            r["greedy_tokens_equal_kv_cache"] = agree
        rows.append(r)
        print(f"{method:10s} batch {batch:3d}: {seconds:7.2f} s, {r['tokens_per_s']:9.1f} tokens/s", flush=True)
        return r

    kv_tokens = {}
    for b in batches:
        prompts = rng.integers(0, 256, (b, args.prompt_len), dtype=np.int32)
        greedy = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
        seconds, out = timed(lambda p=prompts, s=greedy: np.stack(generate(model, params, list(p), s)), args.repeats)
        kv_tokens[b] = (prompts, out)
        row("kv-cache", b, seconds)
    b = batches[0]
    prompts, kv_out = kv_tokens[b]
    seconds, out = timed(lambda: recompute_generate(model, params, prompts, args.new_tokens), max(1, args.repeats - 2))
    agree = bool((out == kv_out).all())
    row("recompute", b, seconds, agree)
    speedup = rows[0]["tokens_per_s"] / rows[-1]["tokens_per_s"]
    scaling = {bb: r["tokens_per_s"] / rows[0]["tokens_per_s"] for bb, r in zip(batches, rows, strict=False)}

    meta = {**record.machine(record.command_line("sampling", argv)), "host_malloc_tuned": malloc_tuned,
            "model": {k: getattr(cfg, k) for k in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads",
                                                   "position", "norm", "ffn")},
            "params": count_params(params), "prompt_len": args.prompt_len,
            "kv_cache_speedup_batch1": speedup, "kv_cache_batch_scaling": scaling}
    lines = [f"# Sampling throughput ({device.platform}: {device.device_kind})", "", record.machine_line(meta), "",
             f"Model: {cfg.n_layers} layers x {cfg.d_model} wide, {cfg.n_heads} heads, RoPE, RMSNorm, SwiGLU, vocab "
             f"{cfg.vocab_size}, context {cfg.max_len}, {meta['params']:,} parameters (random weights); prompt "
             f"{args.prompt_len} tokens, {args.new_tokens} new tokens, greedy. Compile time excluded (a warm-up call "
             "first); median of the repeats.", "",
             "| method | batch | seconds | tokens/s | ms per generated position | greedy tokens = kv-cache |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        eq = r.get("greedy_tokens_equal_kv_cache")
        lines.append(f"| {r['method']} | {r['batch']} | {r['seconds']:.2f} | {r['tokens_per_s']:,.1f} | "
                     f"{r['ms_per_token_step']:.2f} | {'' if eq is None else eq} |")
    lines += ["", "## Summary", "",
              f"- KV cache vs recompute at batch {b}: {speedup:.1f}x the tokens/s (target >= 10x)",
              "- KV-cache tokens/s relative to batch 1: "
              + ", ".join(f"batch {bb}: {s:.1f}x" for bb, s in scaling.items()),
              f"- greedy tokens of the two methods equal: {agree}"]
    record.write_results(Path(args.out) / f"sampling_{device.platform}", {"meta": meta, "rows": rows}, "\n".join(lines))
    print("\n".join(lines[-4:]))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
