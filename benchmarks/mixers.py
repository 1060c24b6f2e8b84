"""Sequence mixers against softmax attention: training throughput and decoding throughput and memory by length.

One model shape for all (random weights: speed does not depend on them): `--d-model` 256, 2 layers, 4 heads,
vocab 256, short convolutions of 3, chunks of `--chunk` tokens (16: on a CPU the chunk's C x C work dominates, so
small chunks are fastest). Softmax attention runs `attention_impl=chunked` (memory linear in length, so 16k fits);
`window` is attention with a 64-token window; Based has the same window.

  train    tokens/s of a jitted forward + backward (loss and gradients) at each `--train-lengths` with
           `--train-tokens` tokens a step (batch = tokens / length, at least 1); training FLOPs per token from the
           model's accounting (`llm.model.params.train_flops_per_token`) and the achieved GFLOP/s
  decode   tokens/s of a jitted one-token decode step (batch `--decode-batch`) against a cache made for each
           `--decode-lengths` (attention's KV cache spans the whole context; a mixer's state does not depend on
           it), the cache's size, and the peak resident memory of a fresh process that only builds the model and
           cache and decodes (`ru_maxrss`), so memory is measured, not inferred

Each (mixer, length) runs in its own process (`--worker`), timed after a warm-up call (compile excluded), median
of `--repeats`.

    python -m benchmarks.mixers                                  # writes benchmarks/results/mixers_<device>.{json,md}
    python -m benchmarks.mixers --mixers attention,gla --train-lengths 256 --decode-lengths 1024 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIXERS = ("attention", "window", "linear", "based", "retnet", "gla", "mamba2", "deltanet", "gated_deltanet")
WINDOW = 64


def model_config(mixer: str, max_len: int, a):
    from llm.model import ModelConfig

    extra = {"attention": {}, "window": {"window": WINDOW},
             "based": {"mixer": "based", "window": WINDOW}}.get(mixer, {"mixer": mixer})
    if mixer == "linear":
        extra["feature_map"] = "elu"
    return ModelConfig(vocab_size=256, max_len=max_len, d_model=a.d_model, n_layers=2, n_heads=4, position="rope",
                       short_conv=3, mixer_chunk=a.chunk, attention_impl="chunked", **extra)


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn` (its results waited for) after a compiling call: benchmarks.sampling's timer."""
    import jax

    from benchmarks.sampling import timed as median_timed

    return median_timed(lambda: jax.block_until_ready(fn()), repeats)[0]


def train_row(mixer: str, length: int, a) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from llm.model import Transformer
    from llm.model.params import train_flops_per_token

    cfg = model_config(mixer, length, a)
    batch = max(1, a.train_tokens // length)
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens[:, :8])["params"])

    def loss(p):
        logits = model.apply({"params": p}, tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))

    step = jax.jit(jax.value_and_grad(loss))
    seconds = timed(lambda: step(params), a.repeats)
    flops = train_flops_per_token(cfg, length)
    return {"batch": batch, "seconds": seconds, "tokens_per_s": batch * length / seconds,
            "flops_per_token": flops, "gflop_per_s": batch * length * flops / seconds / 1e9}


def decode_row(mixer: str, length: int, a) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from llm.model import Transformer
    from llm.model.mixers import state_size

    cfg = model_config(mixer, length, a)
    model = Transformer(cfg)
    token = jnp.zeros((a.decode_batch, 1), jnp.int32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), token, decode=True))()
    params, cache = nn.unbox(variables["params"]), variables["cache"]
    cache_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(cache))

    @jax.jit
    def steps(cache):
        def one(cache, _):
            logits, upd = model.apply({"params": params, "cache": cache}, token, decode=True, mutable=["cache"])
            return upd["cache"], logits[:, -1, 0]
        return jax.lax.scan(one, cache, None, length=a.decode_steps)

    seconds = timed(lambda: steps(cache), a.repeats)
    layer_state = state_size(cfg, cfg.mixer) if mixer not in ("attention", "window") else None
    return {"batch": a.decode_batch, "seconds": seconds,
            "tokens_per_s": a.decode_batch * a.decode_steps / seconds, "cache_mib": cache_bytes / 2**20,
            "layer_state_numbers": layer_state,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker(a) -> None:
    from llm.runtime.host_memory import keep_freed_host_memory

    keep_freed_host_memory()
    fn = train_row if a.worker == "train" else decode_row
    print(json.dumps(fn(a.mixer, a.length, a)))


def arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", default=",".join(MIXERS))
    p.add_argument("--train-lengths", default="256,1024,4096,16384")
    p.add_argument("--train-tokens", type=int, default=16384)
    p.add_argument("--decode-lengths", default="1024,4096,16384")
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--worker", choices=("train", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--mixer", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = arguments(argv)
    if a.worker:
        worker(a)
        return 0
    rows = []
    plan = [("train", int(n)) for n in a.train_lengths.split(",") if n] + \
           [("decode", int(n)) for n in a.decode_lengths.split(",") if n]
    shared = [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
              ("train_tokens", "decode_batch", "decode_steps", "d_model", "chunk", "repeats")]
    for kind, length in plan:
        for mixer in a.mixers.split(","):
            cmd = [sys.executable, "-m", "benchmarks.mixers", "--worker", kind, "--mixer", mixer,
                   "--length", str(length), *shared]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                row = {"error": done.stderr.strip().splitlines()[-1][:200]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"kind": kind, "mixer": mixer, "length": length, **row})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, a, argv)
    return 0


def write(rows, a, argv) -> None:
    from benchmarks import record

    meta = record.machine(record.command_line("mixers", argv))
    lines = [f"# Sequence mixers: training and decoding by length ({meta['platform']}: {meta['device_kind']})", "",
             record.machine_line(meta), "",
             f"Model: 2 layers x {a.d_model} wide, 4 heads, vocab 256, short convolutions of 3, mixer chunks of "
             f"{a.chunk}; attention `attention_impl=chunked`; windows of {WINDOW}. Random weights; compile time "
             f"excluded; median of {a.repeats}.", ""]
    for kind, header, cols in [
            ("train", f"## Training: forward + backward, {a.train_tokens} tokens a step (tokens/s)",
             lambda r: f"{r['tokens_per_s']:,.0f} ({r['gflop_per_s']:.1f} GFLOP/s)"),
            ("decode", f"## Decoding: batch {a.decode_batch}, one token a step (tokens/s; cache MiB; peak RSS MiB)",
             lambda r: f"{r['tokens_per_s']:,.0f}; {r['cache_mib']:.1f}; {r['peak_rss_mib']:.0f}")]:
        mine = [r for r in rows if r["kind"] == kind]
        lengths = sorted({r["length"] for r in mine})
        lines += [header, "", "| mixer | " + " | ".join(f"T = {n}" for n in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for mixer in dict.fromkeys(r["mixer"] for r in mine):
            cells = []
            for n in lengths:
                r = next(r for r in mine if r["mixer"] == mixer and r["length"] == n)
                cells.append(cols(r) if "error" not in r else f"error: {r['error'][:60]}")
            lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
        lines.append("")
    record.write_results(Path(a.out) / f"mixers_{meta['platform']}", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
