"""What a process pays before its first step: importing `llm`, and XLA:CPU compiling small programs.

  import    CPU seconds of a fresh process until `llm.cli`, `llm.training` and `llm.runs` are imported (what every
            `llm` command and test process pays first), and of `import ml_dtypes` alone (jax imports it; 0.7.0
            registers its NumPy ufunc loops far more slowly than 0.6), with the installed ml_dtypes and with each
            `--ml-dtypes DIR` (another version's wheel unpacked there, put first on PYTHONPATH)
  compile   CPU seconds (all threads) of XLA:CPU compiling a fixed set of lowered programs: the training steps
            of tiny models (attention with 2 layers, GLA, Mamba-2; 32 wide, context 32, batch 8, the test suite's
            shapes) and 20 small element-wise programs, under each `--flag-sets` entry (XLA_FLAGS; the default,
            and those tests/conftest.py sets). Tracing and lowering are not counted, nor is the compilation cache
            used.

Every measurement is a fresh process (`--worker`), the variants taken in turn (A, B, C, A, B, C, ...) `--repeats`
times so that drift on a shared machine falls on each alike; the table gives each variant's median, minimum and
maximum.

    python -m benchmarks.startup                       # writes benchmarks/results/startup_cpu.{json,md}
    python -m benchmarks.startup --repeats 3 --tag cpu-avx2
    pip download --no-deps ml_dtypes==0.7.0 -d /tmp/w && unzip -q /tmp/w/ml_dtypes-0.7.0-*.whl -d /tmp/ml7 &&
        python -m benchmarks.startup --ml-dtypes /tmp/ml7
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
O0 = "--xla_backend_optimization_level=0"
CLASSIC = "--xla_cpu_use_fusion_emitters=false"
ONE_MODULE = "--xla_cpu_parallel_codegen_split_count=1"
FLAG_SETS = ("", O0, f"{O0} {CLASSIC}", f"{O0} {CLASSIC} {ONE_MODULE}")


def import_worker() -> dict:
    import numpy  # noqa: F401  (ml_dtypes registers its types with NumPy's)

    t = time.process_time()
    import ml_dtypes

    ml = time.process_time() - t
    for module in ("llm.cli", "llm.training", "llm.runs"):
        importlib.import_module(module)

    return {"ml_dtypes": ml_dtypes.__version__, "ml_dtypes_s": ml, "import_s": time.process_time()}


def lowered_programs() -> dict:
    """name -> a lowered, not yet compiled, program."""
    import jax
    import jax.numpy as jnp

    from llm.config import get_base_config
    from llm.model import ModelConfig, Transformer
    from llm.state import abstract_train_state, make_optimizer
    from llm.training.steps import make_train_step

    config = get_base_config()
    tx, schedule = make_optimizer(config.optim, 20, config.finetune)
    tokens = jax.ShapeDtypeStruct((8, 32), jnp.int32)
    out = {}
    for name, layers, mixer in (("attention x2", 2, "attention"), ("gla", 1, "gla"), ("mamba2", 1, "mamba2")):
        model = Transformer(ModelConfig(vocab_size=32, max_len=32, d_model=32, n_heads=4, n_layers=layers,
                                        mixer=mixer))
        step = make_train_step(model, tx, schedule, 1, jax.random.PRNGKey(0))
        out[name] = [step.lower(abstract_train_state(model, tx, 32), tokens, tokens)]
    out["20 small"] = [jax.jit(lambda a, n=n: (a * 2.0 + a).sum() + n).lower(jnp.ones((n + 1, 7)))
                       for n in range(20)]
    return out


def compile_worker() -> dict:
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    times = {}
    for name, programs in lowered_programs().items():
        t = time.process_time()
        for p in programs:
            p.compile()
        times[name] = time.process_time() - t
    return times


def in_fresh_process(kind: str, xla_flags: str, first_path: str = "") -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
    if first_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (first_path, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--worker", kind], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--flag-sets", default="|".join(FLAG_SETS), help="XLA_FLAGS values separated by '|'")
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--ml-dtypes", action="append", default=[], metavar="DIR",
                   help="also time the imports with the ml_dtypes unpacked in DIR (repeatable)")
    p.add_argument("--worker", choices=("import", "compile"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(import_worker() if a.worker == "import" else compile_worker()))
        return 0
    from benchmarks import record

    meta = record.machine(record.command_line("startup", argv), device=False)
    flag_sets = a.flag_sets.split("|")
    imports, compiles = {d: [] for d in ["", *a.ml_dtypes]}, {f: [] for f in flag_sets}
    for _ in range(a.repeats):
        for first_path, runs in imports.items():
            runs.append(in_fresh_process("import", "", first_path))
        for flags in flag_sets:
            compiles[flags].append(in_fresh_process("compile", flags))
    lines = ["# Process start-up: imports and XLA:CPU compile time", "", record.machine_line(meta), "",
             f"Median (min-max) CPU seconds of {a.repeats} fresh processes each.", "",
             "| ml_dtypes | `import ml_dtypes` | process start to `llm.cli`, `llm.training`, `llm.runs` imported |",
             "|---|---|---|",
             *(f"| {runs[0]['ml_dtypes']} | {spread([r['ml_dtypes_s'] for r in runs])} | "
               f"{spread([r['import_s'] for r in runs])} |" for runs in imports.values()), "",
             "| XLA_FLAGS | " + " | ".join(compiles[flag_sets[0]][0]) + " | all |",
             "|---" * (len(compiles[flag_sets[0]][0]) + 2) + "|"]
    for flags, runs in compiles.items():
        cells = [spread([r[name] for r in runs]) for name in runs[0]] + [spread([sum(r.values()) for r in runs])]
        lines.append(f"| `{flags or '(default)'}` | " + " | ".join(cells) + " |")
    data = {"meta": meta, "imports": list(imports.values()), "compiles": compiles}
    record.write_results(Path(a.out) / f"startup_{a.tag}", data,
                         "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
