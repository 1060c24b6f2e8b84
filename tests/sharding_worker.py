"""The suite's one process with 8 simulated CPU devices: tiny training runs under several device meshes, and the
context-parallel checks of tests/context_worker.py; prints what tests/e2e/test_sharding.py and
tests/parallel/test_context_parallel.py compare (through conftest's `eight_devices` fixture).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py CORPUS OUTDIR [ITEM...]

Each ITEM is a MESH, data,fsdp,tensor[,impl] or data,fsdp,context,tensor[,impl] (context splits the sequence), or
context:ops / context:model; without items, all of MESHES and both context checks. For each mesh, four steps of
`llm.training.train` run in OUTDIR/<mesh> and one JSON line is printed: the per-step losses, and what the run's own
final state arrays hold: a few parameters' shardings and shard shapes, and the bytes of parameters and optimizer
state on each device. FIRST>THEN runs steps 1-2 on mesh FIRST and resumes steps 3-4 on mesh THEN. A context check
prints a line per case, tagged with its name.
"""

import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_config

from llm.model.params import count_params
from llm.training import train

# Attention: 'xla' unless named; the 2 x 2 x 2 mesh runs the default ('dense') and the Pallas kernel. Context
# parallelism (more meshes in tests/context_worker.py): the 8-way ring, and a run whose checkpoint at step 2 (4-way
# context with fsdp) resumes on 2-way context with data.
MESHES = ["8,1,1", "1,8,1", "1,2,4", "2,2,2,dense", "2,2,2,flash", "1,1,8,1", "1,2,4,1>4,1,2,1"]
CONTEXT_CHECKS = ["context:ops", "context:model"]

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


def main(corpus: str, out: Path, items: list[str]) -> None:
    for item in items or [*MESHES, *CONTEXT_CHECKS]:
        if item.startswith("context:"):
            import context_worker

            for result in context_worker.CHECKS[item.split(":")[1]]():
                print("RESULT " + json.dumps({"check": item, **result}), flush=True)
        else:
            print("RESULT " + json.dumps(run(corpus, out, item)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
