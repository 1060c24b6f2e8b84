"""Numerical faults, damaged checkpoints and workdir safety, in process (tests/e2e/test_preemption.py has the
subprocess tests of signals and kills)."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from faults import FaultHooks

from llm import runs as run_lib
from llm.errors import CheckpointError, ConfigError, TrainingDiverged
from llm.model import ModelConfig, Transformer
from llm.runs import load_run
from llm.runs.checkpoints import Checkpointer, DamagedCheckpoint, checksums
from llm.state.optimizers import make_optimizer
from llm.state.train_state import create_train_state
from llm.training import train
from llm.training.health import LossMonitor
from llm.training.steps import make_train_step

QUIET = dict(log=lambda *_: None)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def config_for(tmp_path, **overrides):
    base = {"train.steps": 12, "train.checkpoint_every": 4, "train.eval_every": 100, "train.log_every": 1,
            "sample.num_samples": 0}
    return tiny_config(tmp_path, **{**base, **overrides})


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The unbroken 12-step run every recovery below must reproduce."""
    tmp = tmp_path_factory.mktemp("clean")
    train(config_for(tmp), tmp / "run", **QUIET)
    return tmp, load_run(tmp / "run").params


# --------------------------------------------------------------------------------------------------------
# the compiled step


def test_nonfinite_step_changes_nothing_but_the_counter():
    cfg = ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, max_len=8)
    model = Transformer(cfg)
    tx, lr = make_optimizer(config_for_optim(), 10)
    state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), 8)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 8)), jnp.int32)
    step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(1))
    copy = jax.tree_util.tree_map(np.array, state)
    after, metrics = step(state, x, x, {"weights": jnp.full(x.shape, jnp.nan)})
    assert int(after.step) == 1 and float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["grad_norm"]))
    assert_trees_equal(after.params, copy.params)
    assert_trees_equal(after.opt_state, copy.opt_state)
    later, metrics = step(after, x, x, {"weights": jnp.ones(x.shape)})  # step 1 is clean: the update happens
    assert float(metrics["skipped"]) == 0.0
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)), later.params,
                                     copy.params)
    assert all(jax.tree_util.tree_leaves(changed))


def config_for_optim():
    from llm.config import get_base_config

    optim = get_base_config().optim
    optim.warmup_steps = 0  # the schedule counts applied updates: a skipped first step would leave lr(0) = 0
    return optim


def test_loss_monitor_counts_runs_and_spikes():
    m = LossMonitor(max_bad_steps=3, spike_factor=2.0, window=4)
    assert [m.observe(i, 1.0, False) for i in range(4)] == [None] * 4
    assert m.observe(5, float("nan"), True) is None and m.observe(6, 1.0, True) is None
    assert m.observe(7, 1.0, False) is None  # a good step ends the run of bad ones
    assert m.observe(8, 1.0, True) is None and m.observe(9, 1.0, True) is None
    assert "3 consecutive" in m.observe(10, 1.0, True)
    m.reset()
    for i in range(2):
        m.observe(i, 1.0, False)
    assert "spike" in m.observe(3, 2.5, False)
    assert LossMonitor(3, 0.0, 4).observe(0, 1e9, False) is None  # spike_factor 0: off


# --------------------------------------------------------------------------------------------------------
# numerical faults in a run


def test_isolated_nan_step_is_skipped_and_logged(tmp_path):
    result = train(config_for(tmp_path), tmp_path / "run", hooks=FaultHooks(nan_steps=(5,)), **QUIET)
    assert (result.step, result.skipped_steps, result.rollbacks) == (12, 1, 0)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_steps"] for r in rows if "skipped_steps" in r}
    assert skipped[6] == 1 and sum(skipped.values()) == 1  # the update made by step 6 (state.step 5) was skipped
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r and not r["skipped_steps"])
    assert Checkpointer(tmp_path / "run" / "checkpoints").restore_meta(12)["skipped_steps"] == 1


def test_transient_nans_roll_back_and_end_like_a_clean_run(tmp_path, clean_run):
    """Three NaN steps in a row (max_bad_steps=3) -> back to the checkpoint of step 4 -> the fault is gone ->
    the run ends bit-identical to the unbroken one."""
    config = config_for(tmp_path, **{"train.max_bad_steps": 3})
    messages = []
    result = train(config, tmp_path / "run", hooks=FaultHooks(nan_steps=(5, 6, 7), passes=1), log=messages.append)
    assert (result.rollbacks, result.skipped_steps) == (1, 3)
    assert any("rolled back to step 4" in m for m in messages)
    assert_trees_equal(load_run(tmp_path / "run").params, clean_run[1])
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["to_step"] for e in events if e.get("event") == "rollback"] == [4]


def test_persistent_nans_stop_the_run_with_a_clear_message(tmp_path):
    config = config_for(tmp_path, **{"train.max_bad_steps": 2, "train.max_rollbacks": 2})
    with pytest.raises(TrainingDiverged, match=r"after 2 rollback.*lower optim\.lr"):
        train(config, tmp_path / "run", hooks=FaultHooks(nan_steps=(5, 6, 7, 8), passes=100), **QUIET)
    assert Checkpointer(tmp_path / "run" / "checkpoints").all_steps() == [4]  # the good checkpoint is kept


def test_loss_spike_rolls_back_with_a_learning_rate_cut(tmp_path):
    config = config_for(tmp_path, **{"train.spike_factor": 3.0, "train.spike_window": 4,
                                     "train.rollback_lr_factor": 0.5})
    result = train(config, tmp_path / "run", hooks=FaultHooks(spike_steps=(9,), passes=1), **QUIET)
    assert (result.step, result.rollbacks, result.skipped_steps) == (12, 1, 0)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["to_step"], r["reason"][:21]) for r in rows if r.get("event") == "rollback"] == [
        (8, "loss spike at step 10")]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    sched = make_optimizer(config.optim, 12)[1]
    assert lrs[9] == pytest.approx(float(sched(8)) * 0.5)  # after the rollback: half the scheduled rate
    assert Checkpointer(tmp_path / "run" / "checkpoints").restore_meta(12)["rollbacks"] == 1


def test_loss_spike_repeating_diverges(tmp_path):
    config = config_for(tmp_path, **{"train.spike_factor": 3.0, "train.spike_window": 4,
                                     "train.rollback_lr_factor": 0.5, "train.max_rollbacks": 1})
    with pytest.raises(TrainingDiverged, match="loss spike at step 10"):
        train(config, tmp_path / "run", hooks=FaultHooks(spike_steps=(9,), passes=100), **QUIET)
    meta = Checkpointer(tmp_path / "run" / "checkpoints").restore_meta(8)
    assert meta["rollbacks"] == 0  # written before the spike


# --------------------------------------------------------------------------------------------------------
# damaged checkpoints


def flip_bytes(step_dir):
    """Change bytes in place (same size) in the biggest array file of a checkpoint step."""
    files = [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(f)]
    path = max(files, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


def test_checksums_see_every_changed_or_moved_word():
    rng = np.random.default_rng(0)
    tree = {"f32": rng.standard_normal((7, 5)).astype(np.float32), "i32": np.arange(10, dtype=np.int32),
            "bf16": jnp.asarray(rng.standard_normal(9), jnp.bfloat16), "flag": np.array([True, False])}
    base = checksums(tree)
    assert base == checksums(jax.tree_util.tree_map(jnp.asarray, tree))
    for key in tree:
        for index in range(np.asarray(tree[key]).size):
            changed = dict(tree)
            flat = np.asarray(tree[key]).copy().reshape(-1)
            flat[index] = ~flat[index] if flat.dtype == bool else flat[index] + 1
            changed[key] = flat.reshape(np.shape(tree[key]))
            assert checksums(changed)[f"['{key}']"] != base[f"['{key}']"], (key, index)
    swapped = dict(tree, i32=tree["i32"][::-1].copy())
    assert checksums(swapped)["['i32']"] != base["['i32']"]


def test_bytes_orbax_reads_back_silently_are_caught_by_the_checksums(tmp_path):
    """Find a flip Orbax restores without error (values silently wrong): only the checksums can catch it."""
    import orbax.checkpoint as ocp

    state = {"w": jnp.arange(1000, dtype=jnp.float32)}
    target = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(1, state, meta={})
    files = [f for f in glob.glob(f"{tmp_path}/checkpoints/1/state/**/d/*", recursive=True) if os.path.isfile(f)]
    path = max(files, key=os.path.getsize)
    original = open(path, "rb").read()
    silent = False
    for offset in range(len(original) // 2, len(original) - 8, 37):
        data = bytearray(original)
        data[offset] ^= 0xFF
        open(path, "wb").write(bytes(data))
        try:
            raw = ckpt.manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        except Exception:
            continue  # this flip breaks decompression: an error, not the case under test
        if not np.array_equal(np.asarray(raw.state["w"]), np.arange(1000)):
            silent = True
            break
    assert silent, "no flip found that Orbax reads back silently"
    with pytest.raises(DamagedCheckpoint, match=r"1 array.*differ from what was saved"):
        ckpt.restore(1, target)


def test_unreadable_checkpoint_falls_back(tmp_path):
    state = {"w": jnp.arange(64.0)}
    target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32)}
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    ckpt.save(1, state, meta={})
    ckpt.save(2, {"w": state["w"] + 1}, meta={})
    for f in glob.glob(f"{tmp_path}/checkpoints/2/state/**/d/*", recursive=True):
        os.truncate(f, 3)
    with pytest.raises(DamagedCheckpoint, match="step 2"):
        ckpt.restore(2, target)
    restored, _, step = ckpt.restore_latest_good(target)
    assert step == 1 and np.array_equal(np.asarray(restored["w"]), np.arange(64.0))
    assert ckpt.all_steps() == [1] and len(list((tmp_path / "damaged-checkpoints").iterdir())) == 1
    with pytest.raises(CheckpointError, match="different model: w has shape"):
        ckpt.restore(1, {"w": jax.ShapeDtypeStruct((32,), jnp.float32)})


def test_flipped_bytes_are_detected_and_the_run_falls_back(tmp_path, clean_run):
    """Step 12's array bytes are changed in place: sampling and resuming both use step 8 instead, and the
    resumed run still ends bit-identical to the unbroken one."""
    config = config_for(tmp_path)
    train(config, tmp_path / "run", stop_after=12, **QUIET)
    flip_bytes(tmp_path / "run" / "checkpoints" / "12")
    messages = []
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", log=messages.append)
    assert ckpt.all_steps() == [8, 12]
    with pytest.raises(DamagedCheckpoint, match=r"differ from what was saved|cannot be read"):
        ckpt.restore(12, load_run_target(tmp_path / "run"))
    ckpt.close()
    messages = []
    result = train(config, tmp_path / "run", log=messages.append)
    assert any("WARNING: checkpoint step 12" in m for m in messages)
    assert any("resumed from" in m and "at step 8" in m for m in messages)
    assert result.step == 12
    assert_trees_equal(load_run(tmp_path / "run").params, clean_run[1])
    assert len(list((tmp_path / "run" / "damaged-checkpoints").iterdir())) == 1  # moved, not deleted


def load_run_target(workdir):
    from llm.state.train_state import abstract_train_state

    files = run_lib.open_run(workdir)
    tx, _ = make_optimizer(files.config.optim, files.config.train.steps)
    return abstract_train_state(files.model, tx, files.config.model.max_len)


# --------------------------------------------------------------------------------------------------------
# workdir safety


def tree_snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_different_config_is_refused_then_resumed_anyway_or_overwritten(tmp_path, clean_run):
    config = config_for(tmp_path, **{"train.steps": 8})
    train(config, tmp_path / "run", **QUIET)
    before = tree_snapshot(tmp_path / "run")
    changed = config_for(tmp_path, **{"train.steps": 12})
    with pytest.raises(ConfigError, match=r"train.steps: 8 -> 12.*--resume_anyway.*--overwrite"):
        train(changed, tmp_path / "run", **QUIET)
    assert tree_snapshot(tmp_path / "run") == before
    result = train(changed, tmp_path / "run", resume_anyway=True, **QUIET)
    assert result.step == 12 and list((tmp_path / "run").glob("config.json.*.bak"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == 12
    result = train(changed, tmp_path / "run", overwrite=True, **QUIET)
    assert result.step == 12 and not list((tmp_path / "run").glob("config.json.*.bak"))
    assert_trees_equal(load_run(tmp_path / "run").params, clean_run[1])  # started again from step 0


def test_foreign_directory_and_running_run_are_refused(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("x")
    with pytest.raises(ConfigError, match="not empty and holds no run"):
        train(config_for(tmp_path), tmp_path / "thesis", **QUIET)
    (tmp_path / "run").mkdir()
    lock = run_lib.WorkdirLock(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=f"another `llm train` \\(pid {os.getpid()}\\) is running"):
            train(config_for(tmp_path), tmp_path / "run", **QUIET)
    finally:
        lock.release()


def test_sampling_skips_a_damaged_latest_checkpoint_without_touching_the_run(tmp_path):
    config = config_for(tmp_path, **{"train.steps": 8})
    train(config, tmp_path / "run", **QUIET)
    flip_bytes(tmp_path / "run" / "checkpoints" / "8")
    before = tree_snapshot(tmp_path / "run")
    warnings = []
    assert load_run(tmp_path / "run", log=warnings.append).step == 4
    assert len(warnings) == 1 and "step 8" in warnings[0] and "using the one before it" in warnings[0]
    # A flip inside a compressed chunk reads back as garbage or fails to decompress: either way it is caught.
    with pytest.raises(CheckpointError, match=r"step 8: (1 array|cannot be read)"):
        load_run(tmp_path / "run", "8")
    assert tree_snapshot(tmp_path / "run") == before  # sampling only reads
