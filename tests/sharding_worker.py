"""Runs tiny training runs under several device meshes and prints what the sharding tests compare.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py CORPUS OUTDIR MESH...

Each MESH is data,fsdp,tensor[,impl] or data,fsdp,context,tensor[,impl] (context splits the sequence); for each,
four steps of `llm.training.train` run in OUTDIR/<mesh> and one JSON line is printed: the per-step losses, and what
the run's own final state arrays hold: a few parameters' shardings and shard shapes, and the bytes of parameters
and optimizer state on each device. FIRST>THEN runs steps 1-2 on mesh FIRST and resumes steps 3-4 on mesh THEN.
"""

import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_config

from llm.model.params import count_params
from llm.training import train

PROBES = {  # parameter path -> what the sharding rules should do with it
    "embed/embedding": ("embed", "embedding"),
    "query/kernel": ("layers", "attention", "query", "kernel"),
    "up/kernel": ("layers", "feed_forward", "up", "kernel"),
}


def mesh_sizes(spec: str) -> tuple[dict[str, int], str]:
    """'2,2,2,dense' -> ({'data': 2, 'fsdp': 2, 'context': 1, 'tensor': 2}, 'dense')."""
    parts = spec.split(",")
    impl = parts.pop() if not parts[-1].isdigit() else "xla"
    if len(parts) == 3:
        parts.insert(2, "1")
    return dict(zip(("data", "fsdp", "context", "tensor"), map(int, parts))), impl


def run(corpus: str, out: Path, spec: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / spec.replace(",", "_").replace(">", "_then_")
    messages = []
    stages = spec.split(">")
    for i, stage in enumerate(stages):
        c = tiny_config(out)
        c.data.corpus = corpus
        c.model.d_model, c.model.n_heads, c.model.n_kv_heads, c.model.n_layers = 64, 8, 4, 2
        c.model.scan_layers = True
        sizes, c.model.attention_impl = mesh_sizes(stage)
        c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 1, 4, 4
        c.train.batch_size = 8
        c.sample.num_samples = 0
        for axis, size in sizes.items():
            c.mesh[axis] = size
        result = train(c, workdir, log=messages.append, stop_after=2 if i < len(stages) - 1 else None)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    memory = next(m for m in messages if m.startswith("per-device memory"))
    return {"mesh": spec, "losses": losses, "messages": messages[-3:], "memory": memory,
            "n_params": count_params(result.state.params), "devices": jax.device_count(), "workdir": str(workdir),
            "shards": held(result.state)}


def held(state) -> dict:
    """What the trained state's arrays hold: each probe parameter's sharding spec and per-device shard shape (the
    same on every device), and the bytes of parameters and optimizer state on each device."""
    out = {}
    for name, path in PROBES.items():
        x = state.params
        for p in path:
            x = x[p]
        shard_shapes = {tuple(s.data.shape) for s in x.addressable_shards}
        assert len(shard_shapes) == 1, shard_shapes
        out[name] = {"global": list(x.shape), "shard": list(shard_shapes.pop()), "spec": str(x.sharding.spec)}
    per_device = {}
    for part in ("params", "opt_state"):
        totals = {}
        for leaf in jax.tree_util.tree_leaves(getattr(state, part)):
            for s in leaf.addressable_shards:
                totals[s.device.id] = totals.get(s.device.id, 0) + s.data.nbytes
        per_device[part] = max(totals.values())
    out["bytes_per_device"] = per_device
    return out


if __name__ == "__main__":
    corpus, out = sys.argv[1], Path(sys.argv[2])
    for spec in sys.argv[3:]:
        print("RESULT " + json.dumps(run(corpus, out, spec)), flush=True)
