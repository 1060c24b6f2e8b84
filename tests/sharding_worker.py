"""Runs tiny training runs under several device meshes and prints what the sharding tests compare.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_worker.py CORPUS OUTDIR MESH...

Each MESH is data,fsdp,tensor[,impl]; for each, a few steps of `llm.train.train` run in OUTDIR/<mesh> and one
JSON line is printed: the per-step losses, a few parameters' per-device shard shapes and the per-device memory.
"""

import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_config

from llm.model.params import count_params
from llm.train import train

PROBES = {  # parameter path -> what the sharding rules should do with it
    "embed/embedding": ("embed", "embedding"),
    "query/kernel": ("layers", "attention", "query", "kernel"),
    "up/kernel": ("layers", "feed_forward", "up", "kernel"),
}


def run(corpus: str, out: Path, spec: str) -> dict:
    data, fsdp, tensor, *rest = spec.split(",")
    out.mkdir(parents=True, exist_ok=True)
    c = tiny_config(out)
    c.data.corpus = corpus
    c.model.d_model, c.model.n_heads, c.model.n_kv_heads, c.model.n_layers = 64, 8, 4, 2
    c.model.scan_layers = True
    c.model.attention_impl = rest[0] if rest else "xla"
    c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 1, 4, 4
    c.train.batch_size = 8
    c.sample.num_samples = 0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = int(data), int(fsdp), int(tensor)
    workdir = out / spec.replace(",", "_")
    messages = []
    train(c, workdir, log=messages.append)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]

    from llm.inference import load_run

    params = load_run(workdir).params  # restored onto this process's default device layout
    memory = next(m for m in messages if m.startswith("per-device memory"))
    return {"mesh": spec, "losses": losses, "messages": messages[-3:], "memory": memory,
            "n_params": count_params(params), "devices": jax.device_count(), "workdir": str(workdir)}


def shard_shapes(workdir: Path, spec: str) -> dict:
    """Shard shapes of the probe parameters when the run's state is laid out on its mesh."""
    from llm import run as run_lib
    from llm.config import model_config
    from llm.model import Transformer
    from llm.optim import make_optimizer
    from llm.parallel import MESH_AXES, logical_rules, make_mesh, make_shardings, memory_report
    from llm.train_state import abstract_train_state, boxed_abstract_train_state

    config = run_lib.load_config(workdir)
    tokenizer = run_lib.load_tokenizer(workdir / run_lib.TOKENIZER_FILE)
    model = Transformer(model_config(config, vocab_size=tokenizer.vocab_size))
    tx, _ = make_optimizer(config.optim, config.train.steps)
    mesh = make_mesh({a: config.mesh[a] for a in MESH_AXES})
    rules = logical_rules(config.mesh.rules)
    boxed = boxed_abstract_train_state(model, tx, model.cfg.max_len)
    sh = make_shardings(boxed, mesh, rules)
    shapes = {}
    for name, path in PROBES.items():
        node_sh, node_abs = sh.state.params, boxed.params
        for p in path:
            node_sh, node_abs = node_sh[p], node_abs[p]
        shapes[name] = {"global": list(node_abs.value.shape), "shard": list(node_sh.shard_shape(node_abs.value.shape)),
                        "spec": str(node_sh.spec)}
    shapes["bytes_per_device"] = memory_report(abstract_train_state(model, tx, model.cfg.max_len), sh)
    return shapes


if __name__ == "__main__":
    corpus, out = sys.argv[1], Path(sys.argv[2])
    for spec in sys.argv[3:]:
        result = run(corpus, out, spec)
        result["shards"] = shard_shapes(Path(result["workdir"]), spec)
        print("RESULT " + json.dumps(result), flush=True)
