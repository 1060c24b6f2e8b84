"""Per-device memory of a training step under several device meshes (parameters, optimizer state, activations).

    python -m benchmarks.memory [--config experiments/gpt2.py:124m] [--batch 8] [--devices 8]
    python -m benchmarks.memory --context 32768 [--config ...]   # one long sequence split over 1, 2, 4, 8 devices

Runs on simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N is set here before JAX
starts), so it needs no accelerator: parameter and optimizer bytes come from the shardings, activations and
temporaries from XLA's compiled memory analysis of the real train step (compiled, not run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# (name, (data, fsdp, context, tensor), context strategy)
MESHES = [("1 device", (1, 1, 1, 1), "ring"), ("8-way FSDP", (1, 8, 1, 1), "ring"),
          ("2 data x 2 fsdp x 2 tensor", (2, 2, 1, 2), "ring")]
CONTEXT_MESHES = [("1 device", (1, 1, 1, 1), "ring"),
                  *((f"{n}-way context, {s}", (1, 1, n, 1), s) for n in (2, 4, 8) for s in ("ring", "all_gather"))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="experiments/gpt2.py:124m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--context", type=int, default=0, metavar="LENGTH",
                   help="one sequence of LENGTH tokens per step (batch 1, chunked attention) under context parallelism")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={a.devices}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import flax.linen as nn
    import jax
    import numpy as np

    from benchmarks import record
    from llm.config import model_config
    from llm.model import Transformer
    from llm.parallel import logical_rules, make_mesh, make_shardings, memory_report
    from llm.parallel.context.layout import ContextSettings, context_settings
    from llm.state.optimizers import make_optimizer
    from llm.state.train_state import abstract_train_state, boxed_abstract_train_state
    from llm.training.steps import make_train_step

    path, _, preset = a.config.partition(":")
    sys.path.insert(0, str(Path(path).parent))
    config = __import__(Path(path).stem).get_config(preset or None)
    meshes = MESHES
    if a.context:  # the chunked kernel everywhere, so that only the split differs between rows
        config.model.max_len, config.train.seq_len, config.model.attention_impl = a.context, a.context, "chunked"
        a.batch, meshes = 1, CONTEXT_MESHES
    model = Transformer(model_config(config, vocab_size=a.vocab))
    seq = config.train.seq_len or model.cfg.max_len
    tx, lr = make_optimizer(config.optim, config.train.steps)
    rules = logical_rules(config.mesh.rules)
    rows = []
    for name, shape, strategy in meshes:
        mesh = make_mesh(dict(zip(("data", "fsdp", "context", "tensor"), shape)),
                         devices=jax.devices()[:int(np.prod(shape))])
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules), context_settings(ContextSettings(strategy)):
            sh = make_shardings(boxed_abstract_train_state(model, tx, seq), mesh, rules)
            abstract = abstract_train_state(model, tx, seq)
            state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                           abstract, sh.state)
            batch = jax.ShapeDtypeStruct((a.batch, seq), np.int32, sharding=sh.batch)
            step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(0), sh)
            compiled = step.lower(state, batch, batch, {}).compile()
            report = memory_report(abstract, sh, compiled)
        rows.append({"mesh": name, "shape": list(shape), **{k: v / 2**20 for k, v in report.items()}})
        print(rows[-1], flush=True)

    meta = record.machine(record.command_line("memory", argv))
    lines = [f"# Per-device training memory: {a.config}, batch {a.batch} x {seq}, vocab {a.vocab}", "",
             f"{meta['device_count']} simulated CPU devices; " + record.machine_line(meta), "",
             "MiB per device: parameters and AdamW state from the shardings; activations and temporaries from "
             "XLA's compiled memory analysis of the train step (CPU compiler; a GPU's differs somewhat).", "",
             "| mesh (data, fsdp, context, tensor) | params | optimizer state | activations + temps |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mesh']} {tuple(r['shape'])} | {r['params']:,.1f} | {r['opt_state']:,.1f} | "
                     f"{r['activations_and_temps']:,.1f} |")
    stem = f"memory_{Path(path).stem}_{preset or 'default'}{f'_context{a.context}' if a.context else ''}"
    record.write_results(Path(a.out) / stem, {"meta": meta, "config": a.config, "batch": a.batch, "rows": rows},
                         "\n".join(lines), indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
