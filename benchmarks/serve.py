"""`llm serve` under load, loopback only, a fixed number of requests: throughput and latency percentiles at 1, 4,
16 and 64 concurrent clients (the official openai client, greedy completions of a fixed length), against the
serial baseline (one request at a time).

    python -m benchmarks.serve --workdir runs/baby [--requests 64] [--max-tokens 64] [--max-batch 16]

Without --workdir, a tiny model (random weights, char tokenizer of a built-in text) is made in a temp dir so the
benchmark runs anywhere in seconds; its numbers measure the serving machinery, not a real model. The table (with
the machine, date, command and the process's peak RSS) goes to benchmarks/results/serve_<platform>.{md,json}.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import resource
import socket
import statistics
import threading
import time
from pathlib import Path

from benchmarks import record

RESULTS = Path(__file__).parent / "results"


def _percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def _tiny_run(max_len: int, d_model: int, n_layers: int):
    import jax

    from llm.model import ModelConfig, Transformer
    from llm.runs import LoadedRun
    from llm.tokenizers import CharTokenizer

    text = "the cat sat on a mat and the dog ran to its bed while the sun set\n"
    tok = CharTokenizer(sorted(set(text)))
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, max_len=max_len, d_model=d_model, n_layers=n_layers,
                                    n_heads=4))
    params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), jax.numpy.int32))["params"]
    import flax.linen as nn

    return LoadedRun(config=None, model=model, params=nn.unbox(params), tokenizer=tok, step=0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--concurrency", default="1,4,16,64")
    a = p.parse_args(argv)

    import openai
    import uvicorn

    from llm.serving.server import build_app, warm_up

    if a.workdir:
        from llm.runs import load_run

        run = load_run(a.workdir)
    else:
        run = _tiny_run(max_len=256, d_model=128, n_layers=4)
    app = build_app(run, model_name="bench", max_batch=a.max_batch, max_queue=1024)
    warm_up(app, run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)
    prompt = "the cat sat on a mat and "

    def one(_):
        t = time.perf_counter()
        r = client.completions.create(model="bench", prompt=prompt, max_tokens=a.max_tokens, temperature=0)
        return time.perf_counter() - t, r.usage.completion_tokens

    one(0)  # compile the prompt's prefill bucket
    sched = app.state.scheduler
    print(f"model: {run.model.cfg.n_layers} layers x {run.model.cfg.d_model}, context {run.model.cfg.max_len}; "
          f"{a.requests} requests of {a.max_tokens} greedy tokens per level; max batch {a.max_batch}")
    print(f"{'clients':>7} {'tok/s':>8} {'req/s':>7} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'mean batch':>10} "
          f"{'vs serial':>9}")
    serial, rows_out = None, []
    for c in [int(x) for x in a.concurrency.split(",")]:
        steps, rows = sched.steps, sched.stepped_rows
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(c) as pool:
            results = list(pool.map(one, range(a.requests)))
        wall = time.perf_counter() - t
        lat = [r[0] for r in results]
        tps = sum(r[1] for r in results) / wall
        serial = serial or (tps if c == 1 else None)
        batch = (sched.stepped_rows - rows) / max(1, sched.steps - steps)
        gain = f"{tps / serial:8.1f}x" if serial else "        -"
        print(f"{c:>7} {tps:8.0f} {a.requests / wall:7.2f} {_percentile(lat, 50):7.3f} {_percentile(lat, 90):7.3f} "
              f"{_percentile(lat, 99):7.3f} {batch:10.1f} {gain}", flush=True)
        rows_out.append({"clients": c, "tokens_per_s": tps, "requests_per_s": a.requests / wall,
                         **{f"p{q}_s": _percentile(lat, q) for q in (50, 90, 99)}, "mean_batch": batch,
                         "vs_serial": tps / serial if serial else None})
    print(f"mean latency at the last level: {statistics.mean(lat):.3f} s")
    write_results(a, run, rows_out)
    server.should_exit = True
    thread.join(30)


def write_results(a, run, rows) -> None:
    cfg = run.model.cfg
    meta = {**record.machine(record.command_line("serve", None)),
            "model": f"{cfg.n_layers} layers x {cfg.d_model}, context {cfg.max_len}", "requests": a.requests,
            "max_tokens": a.max_tokens, "max_batch": a.max_batch,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    lines = [f"# `llm serve` under load ({meta['platform']})", "",
             record.machine_line(meta), "",
             f"Model {meta['model']}; {a.requests} greedy "
             f"requests of {a.max_tokens} tokens per level, max batch {a.max_batch}, loopback, the openai client; "
             f"peak RSS of the process (server and clients) {meta['peak_rss_mib']:,.0f} MiB.", "",
             "| clients | tokens/s | requests/s | p50 s | p90 s | p99 s | mean batch | vs serial |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        gain = f"{r['vs_serial']:.1f}x" if r["vs_serial"] else "-"
        lines.append(f"| {r['clients']} | {r['tokens_per_s']:.0f} | {r['requests_per_s']:.2f} | {r['p50_s']:.3f} | "
                     f"{r['p90_s']:.3f} | {r['p99_s']:.3f} | {r['mean_batch']:.1f} | {gain} |")
    stem = RESULTS / f"serve_{meta['platform']}"
    record.write_results(stem, {**meta, "rows": rows}, "\n".join(lines), indent=2)
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
