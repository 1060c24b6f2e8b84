"""Sharding: meshes of 8 simulated CPU devices and two processes on localhost train like one device does."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import sharding_worker
from conftest import cpu_devices_env, tiny_config
from sharding_worker import MESHES

from llm.errors import ConfigError
from llm.parallel import logical_rules, mesh_shape
from llm.parallel.distributed import initialize_distributed
from llm.runs import load_run

pytestmark = pytest.mark.slow  # real `llm` processes: minutes on 2 cores (-m 'not slow' skips them)

TESTS = Path(__file__).parents[1]  # the helpers (faults.py) are at the tests' root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, eight_devices):
    """({"1,1,1": the run on this process's one device}, {mesh: the run on 8 devices}) (tests/sharding_worker.py),
    on the same corpus."""
    tmp = tmp_path_factory.mktemp("sharding")
    single = sharding_worker.run(eight_devices["corpus"], tmp / "one", "1,1,1")
    return {"1,1,1": single}, eight_devices["meshes"]


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_trains_like_one_device(runs, mesh):
    single, eight = runs
    assert eight[mesh]["devices"] == 8
    np.testing.assert_allclose(eight[mesh]["losses"], single["1,1,1"]["losses"], rtol=2e-5)


def test_parameters_are_sharded_as_the_rules_say(runs):
    _, eight = runs
    shards = {m: eight[m]["shards"] for m in MESHES}
    # data parallel: everything replicated.
    assert shards["8,1,1"]["query/kernel"]["shard"] == shards["8,1,1"]["query/kernel"]["global"] == [2, 64, 8, 8]
    # FSDP: split along `embed` (64 / 8), the stacked-layers and head axes whole.
    assert shards["1,8,1"]["query/kernel"]["shard"] == [2, 8, 8, 8]
    assert shards["1,8,1"]["up/kernel"]["shard"] == [2, 8, 256]
    assert shards["1,8,1"]["embed/embedding"]["shard"] == [19, 8]  # vocab 19 is not split, embed is
    # FSDP x tensor: embed over fsdp=2, heads (8) and mlp (256) over tensor=4.
    assert shards["1,2,4"]["query/kernel"]["shard"] == [2, 32, 2, 8]
    assert shards["1,2,4"]["up/kernel"]["shard"] == [2, 32, 64]
    assert shards["1,2,4"]["query/kernel"]["spec"] == "P(None, 'fsdp', 'tensor', None)"


def test_fsdp_divides_parameter_and_optimizer_memory(runs):
    single, eight = runs
    one = single["1,1,1"]["shards"]["bytes_per_device"]
    fsdp = eight["1,8,1"]["shards"]["bytes_per_device"]
    for part in ("params", "opt_state"):
        # Every matrix has an `embed` axis (64 = 8 x 8); only norm scales and scalars stay whole.
        assert one[part] / fsdp[part] > 6.5, (part, one[part], fsdp[part])


@pytest.mark.parametrize("mesh", ["1,8,1", "1,2,4,1>4,1,2,1"])
def test_checkpoint_from_a_mesh_restores_on_one_device(runs, mesh):
    single, eight = runs
    a = load_run(single["1,1,1"]["workdir"]).params
    b = load_run(eight[mesh]["workdir"]).params
    assert len(jax.devices()) == 1
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.sharding.device_set == y.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-5)  # Adam steps of 3e-3; sums reorder


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_started_on_one_process_continues_on_two_like_one(runs, tmp_path):
    """Steps 1-2 in one process (killed after step 3, unsaved), resumed for 3-4 by two processes (jax.distributed,
    2 CPU devices each): the same token stream and losses as the one-device run, and a checkpoint one process reads."""
    single, _ = runs
    config = tiny_config(tmp_path)
    corpus = Path(single["1,1,1"]["workdir"]).parent / "corpus.txt"
    flags = [f"--config.data.corpus={corpus}", f"--config.data.cache_dir={tmp_path / 'cache'}",
             "--config.model.d_model=64", "--config.model.n_heads=8", "--config.model.n_kv_heads=4",
             "--config.model.n_layers=2", "--config.model.scan_layers=True", "--config.model.max_len=32",
             "--config.train.log_every=1", "--config.train.eval_every=4",
             "--config.train.checkpoint_every=2", "--config.train.batch_size=8", "--config.train.eval_batches=2",
             "--config.train.progress=False", "--config.optim.warmup_steps=5", "--config.optim.lr=0.003",
             "--config.sample.num_samples=0", "--config.mesh.fsdp=2"]
    distributed = ["--config.distributed.enabled=True", "--config.distributed.num_processes=2",
                   f"--config.distributed.coordinator_address=127.0.0.1:{_free_port()}"]
    assert config.optim.lr == 3e-3 and config.optim.warmup_steps == 5  # the flags above mirror tiny_config
    env = cpu_devices_env(2)
    # One process, killed (SIGKILL, tests/faults.py) after step 3, once the checkpoint of step 2 is committed.
    args = ["train", "--workdir", str(tmp_path / "run"), *flags, "--config.train.steps=4"]
    first = subprocess.run([sys.executable, str(TESTS / "faults.py"), "kill_after_step=3", *args], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == -9, first.stderr[-3000:]
    procs = [subprocess.Popen([sys.executable, "-m", "llm.cli", *args, *distributed,
                               f"--config.distributed.process_id={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "4 x cpu in 2 process(es)" in outs[0][0] and "done: step 4" in outs[0][0]
    assert "model:" not in outs[1][0] and "done:" not in outs[1][0]  # only process 0 logs
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in rows if "loss" in r], single["1,1,1"]["losses"], rtol=2e-5)
    restored = load_run(tmp_path / "run").params
    for x, y in zip(jax.tree_util.tree_leaves(restored),
                    jax.tree_util.tree_leaves(load_run(single["1,1,1"]["workdir"]).params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=2e-5)  # Adam steps of 3e-3; sums reorder


def test_mesh_shape_rules():
    # (data, fsdp, context, tensor); an axis not named is 1
    assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1, 1)
    assert mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 1, 2)
    assert mesh_shape({"data": 2, "fsdp": 1, "context": -1, "tensor": 2}, 8) == (2, 1, 2, 2)
    with pytest.raises(ConfigError, match="needs 4 devices but 8 are available"):
        mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="do not divide the 8 devices"):
        mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ConfigError, match="at most one -1"):
        mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def test_rules_are_validated():
    assert logical_rules({"batch": "data,fsdp", "embed": "fsdp", "kv": ""}) == (
        ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("kv", None))
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        logical_rules({"embed": "model"})


def test_distributed_needs_all_explicit_fields():
    d = tiny_config(Path("/tmp")).distributed
    d.enabled = True
    d.coordinator_address = "127.0.0.1:1234"
    with pytest.raises(ConfigError, match=r"missing distributed\.num_processes, distributed\.process_id"):
        initialize_distributed(d)
