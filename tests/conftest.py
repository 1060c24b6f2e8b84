"""Shared fixtures: a tiny experiment config, a small corpus, one tiny trained run, and a persistent compilation
cache, so that tests (and the processes they start) compile each program once."""

import gc
import os
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# JAX reads these when it is imported (here, and in every subprocess a test starts, which inherits them): compiled
# programs are kept on disk, and a program compiled once (the same tiny train step in many tests and processes)
# is loaded afterwards instead of compiled again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compiling, not running, is what the tests' tiny programs spend their time on. LLVM's optimizations take about two
# thirds of a tiny train step's XLA CPU compile time, and unoptimized machine code computes the same values (XLA's
# HLO passes, fusion included, still run). Of the rest, jaxlib 0.10's MLIR fusion emitters take more than half for
# a loop (a scan, an interpreted Pallas kernel); the classic emitters compile the same fusions about 3x faster.
# XLA also splits each program's machine code into many LLVM modules to compile them on parallel threads; on two
# busy cores that buys nothing and each module's set-up costs CPU: one module compiles the same train steps with
# about a sixth less (benchmarks/results/startup_cpu-avx2.md, all three measured there). XLA aborts on a flag it
# does not know, so these are passed only to the jaxlib they were measured on.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if version("jaxlib").startswith("0.10."):
    TEST_XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def cpu_devices_env(devices: int) -> dict[str, str]:
    """The environment of a subprocess that simulates `devices` CPU devices (with this suite's XLA flags)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"}

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llm.config import get_base_config  # noqa: E402
from llm.runtime.host_memory import keep_freed_host_memory  # noqa: E402

keep_freed_host_memory()  # as `llm train` does: the suite's many small steps stop page-faulting their buffers
# Tracing makes millions of short-lived objects: at Python's default thresholds (700, 10, 10) the cyclic collector
# runs thousands of times a test file, its full passes walking every object the imports made. Those are frozen out
# of its view and it runs a fourteenth as often: on model/test_mixers.py its time (gc.callbacks) falls from 4.4 to
# 0.9 s of 100 s of CPU.
gc.freeze()
gc.set_threshold(10_000, 10, 10)


def make_corpus(path: Path, n_chars: int = 30_000, seed: int = 0) -> Path:
    """A learnable text: words from a small vocabulary in a Markov-ish order, so loss falls fast."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "bed", "while", "sun", "set"]
    out, w, length = [], 0, 0
    while length < n_chars:
        w = (w + rng.integers(1, 3)) % len(words)
        out.append(words[w])
        length += len(words[w]) + 1
    path.write_text(" ".join(out) + "\n")
    return path


def numpy_cross_entropy(logits_BTV, targets_BT, weights_BT=None) -> tuple[float, float]:
    """(sum of token losses, sum of weights) of next-token cross-entropy, in float64 NumPy: the reference the
    library's loss is checked against (and, computed on the host, nothing to compile)."""
    logits = np.asarray(logits_BTV, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    losses = log_z - np.take_along_axis(logits, np.asarray(targets_BT)[..., None], -1)[..., 0]
    weights = np.ones_like(losses) if weights_BT is None else np.asarray(weights_BT, np.float64)
    return float((losses * weights).sum()), float(weights.sum())


def numpy_token_logprobs(model, params, ids) -> tuple[np.ndarray, np.ndarray]:
    """(log p(ids[i] | ids[:i]) for i >= 1, whether each ids[i] is the argmax there) from one unpadded forward pass
    of `ids`, log-softmax in float64 NumPy: the reference for scored and echoed tokens."""
    import jax

    ids = np.asarray(ids, np.int32)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids[None, :-1])[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = ids[1:]
    return logp[np.arange(len(targets)), targets], logp.argmax(-1) == targets


def tiny_config(tmp: Path, **overrides):
    """A 1-layer, 32-wide character model on a generated corpus (a test about layers sets its own n_layers: each
    layer is more for XLA to compile); a few steps take about a second."""
    c = get_base_config()
    c.data.corpus = str(make_corpus(tmp / "corpus.txt"))
    c.data.cache_dir = str(tmp / "cache")
    c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.max_len = 1, 32, 4, 32
    c.train.batch_size = 8
    c.train.steps = 20
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.progress = False
    c.optim.warmup_steps = 5
    c.optim.lr = 3e-3
    c.sample.num_samples = 1
    c.sample.max_new_tokens = 8
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def tiny_run_flags(tmp: Path) -> list[str]:
    """`llm train` flags of the tiny run (1 layer, 32 wide, context 32, 6 steps of batch 4, checkpoints at steps 3
    and 6) on tmp/corpus.txt, written if absent."""
    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        make_corpus(corpus)
    return [f"--config.data.corpus={corpus}", f"--config.data.cache_dir={tmp / 'cache'}",
            "--config.model.n_layers=1", "--config.model.d_model=32", "--config.model.max_len=32",
            "--config.train.steps=6", "--config.train.eval_every=3", "--config.train.eval_batches=1",
            "--config.train.batch_size=4", "--config.train.checkpoint_every=3", "--config.train.progress=False",
            "--config.sample.num_samples=0"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A directory with one tiny trained run (`run/`, the default experiment with `tiny_run_flags`), its corpus
    (`corpus.txt`) and token cache (`cache/`), trained once per session through `llm train`. Tests only read it;
    one that changes a run copies it first (shutil.copytree)."""
    from llm.cli import main

    tmp = tmp_path_factory.mktemp("trained")
    assert main(["train", "--config", str(REPO / "experiments" / "default.py"), "--workdir", str(tmp / "run"),
                 *tiny_run_flags(tmp)]) == 0
    return tmp


# A tiny_config run that tests only read (evaluation, fine-tuning's base): one shape and config, so the run is trained
# once per xdist worker and its compiled programs come from the persistent cache after the first.
LM_RUN = {"train.steps": 30, "model.max_len": 64, "sample.num_samples": 0}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """trained_run(**overrides) -> the workdir of a `tiny_config(tmp, **overrides)` run trained in process, once per
    session for the same overrides. Tests only read it; one that changes a run copies it first."""
    from llm.training import train

    made = {}

    def make(**overrides) -> Path:
        key = tuple(sorted(overrides.items()))
        if key not in made:
            tmp = tmp_path_factory.mktemp("run")
            train(tiny_config(tmp, **overrides), tmp / "run", log=lambda *_: None)
            made[key] = tmp / "run"
        return made[key]

    return make


@pytest.fixture(scope="session")
def eight_devices(tmp_path_factory) -> dict:
    """What tests/sharding_worker.py reports from the suite's one 8-device process (run once per session, whichever
    xdist worker asks first; the other waits and reads its results): {"corpus": path, "meshes": {mesh: result},
    "context:ops": [case...], "context:model": [case...]}."""
    import fcntl
    import json
    import subprocess
    import sys

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers
    out, results = root / "eight_devices", root / "eight_devices.json"
    with open(root / "eight_devices.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not results.exists():
            out.mkdir(exist_ok=True)
            corpus = make_corpus(out / "corpus.txt")
            proc = subprocess.run([sys.executable, str(REPO / "tests" / "sharding_worker.py"), str(corpus), str(out)],
                                  capture_output=True, text=True, env=cpu_devices_env(8), timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            found = {"corpus": str(corpus), "meshes": {}, "context:ops": [], "context:model": []}
            for row in (json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")):
                if "check" in row:
                    found[row.pop("check")].append(row)
                else:
                    found["meshes"][row["mesh"]] = row
            results.write_text(json.dumps(found))
    return json.loads(results.read_text())


@pytest.fixture
def tiny(tmp_path):
    return tiny_config(tmp_path)


# Test files by the time they take on 2 cores, longest first (`--durations=0`); the others follow in collection
# order. With `-n auto --dist loadfile --no-loadscope-reorder` (pyproject.toml) a worker takes the next file as it
# finishes one, so longest-first leaves the short files to the end and the workers finish together.
# e2e/test_sharding.py starts the 8-device process (eight_devices) at once; parallel/test_context_parallel.py,
# which reads the same results, comes last, long after they are ready.
LONGEST_FIRST = (
    "e2e/test_sharding.py", "model/test_mixers.py", "training/test_train.py", "training/test_faults.py",
    "e2e/test_preemption.py", "kernels/test_flash_attention.py", "model/test_model.py", "hf/test_hf.py",
    "training/test_finetune.py", "data/test_prepare.py", "runtime/test_host_memory.py", "ops/test_attention_ops.py",
    "serving/test_serve.py", "explain/test_explain_data.py", "e2e/test_sweep.py", "ops/test_mixer_ops.py",
    "inference/test_sampling.py", "evaluation/test_evaluate.py", "explain/test_explain_browser.py",
    "config/test_resolved.py", "inference/test_chat.py", "e2e/test_cli.py",
)
LAST = ("parallel/test_context_parallel.py",)


def pytest_collection_modifyitems(config, items):
    rank = ({name: i for i, name in enumerate(LONGEST_FIRST)}
            | {name: len(LONGEST_FIRST) + 1 + i for i, name in enumerate(LAST)})
    tests = Path(__file__).parent
    # stable: the rest keep their order
    items.sort(key=lambda item: rank.get(item.path.relative_to(tests).as_posix(), len(LONGEST_FIRST)))
