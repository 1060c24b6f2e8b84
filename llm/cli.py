"""The `llm` command: parses flags and calls a job. User mistakes become one line on stderr and exit code 2.

    llm train [--config experiments/X.py[:preset]] [--workdir DIR] [--config.section.key=value ...]
              [--resume_anyway | --overwrite] [--debug]
    llm sample --workdir DIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N] [--temperature T]
               [--top-k K] [--top-p P] [--seed S] [--checkpoint latest|best|STEP]
    llm eval --workdir DIR [--config experiments/X.py] [--corpus SPEC] [--split val|train|all]
    llm chat --workdir DIR [--checkpoint latest|best|STEP] [--temperature T] [--top-k K] [--top-p P]
             [--max-new-tokens N] [--system TEXT] [--seed S]
    llm explain --workdir DIR [--prompt TEXT] [--out explain.html] [--png DIR] [--checkpoint latest|best|STEP]
    llm explain --workdir DIR --serve [--prompt TEXT] [--host 127.0.0.1] [--port 8000] [--max-prompt-chars N]
    llm convert import HF_DIR WORKDIR  |  llm convert export WORKDIR OUT_DIR --arch gpt2|llama

Exit codes: 0 done; 1 an unexpected error (a bug: traceback); 2 a mistake in the input (one line, nothing
written); 3 training diverged (rollbacks did not help); 75 stopped by SIGTERM/SIGINT after saving a checkpoint
(run the same command to resume).

Config files are Python and run as code when loaded: use only files you trust.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm.host_memory import keep_freed_host_memory

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # = llm.preemption.EXIT_PREEMPTED (not imported: the CLI starts without jax)
DEFAULT_WORKDIR = "runs/default"


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def _user_errors():
    """Exception types that are user mistakes (imported lazily: jax is slow to import)."""
    from llm.checkpoint import CheckpointError
    from llm.data import DataError
    from llm.model.config import ConfigError
    from llm.sampling import PromptError

    return (UserError, ConfigError, DataError, PromptError, CheckpointError)


def _load_experiment_module(spec: str):
    """`FILE[:arg]` -> (the loaded module, FILE, arg). The file runs as Python code; any error in it is one line."""
    import importlib.util

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise UserError(f"--config {path}: no such file; give an experiment file, e.g. "
                        "experiments/shakespeare_char.py:baby")
    # A fresh module per load: a module name reused across loads would keep an earlier file's get_config.
    module_spec = importlib.util.spec_from_file_location(f"llm_experiment_{abs(hash(spec))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"--config {path}: invalid syntax at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # the file is the user's code: any error in it is theirs
        raise UserError(f"--config {path}: loading it raised {type(e).__name__}: {_one_line(e)}") from None
    return module, path, arg


def _load_experiment(spec: str, module=None):
    """`FILE[:arg]` -> the ConfigDict of the file's get_config(arg) (`module`: the file, already loaded)."""
    from ml_collections import ConfigDict

    path, _, arg = spec.partition(":")
    if module is None:
        module, path, arg = _load_experiment_module(spec)
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"--config {path}: has no get_config(); an experiment file defines get_config(arg=None) "
                        "returning a ConfigDict (see experiments/)")
    config = call_experiment(module, "get_config", arg, f"--config {spec}")
    if not isinstance(config, ConfigDict):
        raise UserError(f"--config {spec}: get_config() returned {type(config).__name__}, not a ConfigDict; start "
                        "from llm.config.get_base_config()")
    return config


def call_experiment(module, name: str, arg: str, where: str):
    """module.<name>(arg) (no argument when arg is empty); what it raises becomes a one-line UserError."""
    try:
        return getattr(module, name)(arg) if arg else getattr(module, name)()
    except Exception as e:
        raise UserError(f"{where}: {name} raised {type(e).__name__}: {_one_line(e)}") from None


def _check_override_keys(config, argv: list[str]) -> None:
    """Every --config.a.b=value names a key the config has (absl would only say KeyError: 'b')."""
    from ml_collections import ConfigDict

    for a in argv:
        if not a.startswith("--config."):
            continue
        path = a[len("--config."):].split("=", 1)[0]
        node = config
        for depth, name in enumerate(path.split(".")):
            if not isinstance(node, ConfigDict) or name not in node:
                where = ".".join(path.split(".")[:depth]) or "the config"
                valid = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "none (not a section)"
                raise UserError(f"{a}: unknown config key {path}; keys in {where}: {valid}")
            node = node[name]


def _parse_train(argv: list[str]):
    """absl/ml_collections config flags: --config FILE[:arg] and --config.a.b=value overrides."""
    from absl import flags
    from ml_collections import ConfigDict, config_flags

    import llm.config

    argv = list(argv)
    spec = llm.config.__file__
    for i, a in enumerate(argv):  # --config FILE or --config=FILE, anywhere
        if a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
            del argv[i:i + 2]
            break
        if a.startswith("--config="):
            spec = a[len("--config="):]
            del argv[i]
            break
    config = _load_experiment(spec)
    _check_override_keys(config, argv)
    # --config.a.b=None: ml_collections parses the value with the field's type (int('None') fails for an int
    # field that defaults to None), so these are set after parsing.
    last = {a[len("--config."):].split("=", 1)[0]: a.endswith("=None") for a in argv if a.startswith("--config.")}
    nones = [key for key, is_none in last.items() if is_none]  # the last override of the key wins, as in absl
    argv = ["llm train", *(a for a in argv if not (a.startswith("--config.") and a.endswith("=None")))]
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where the run's checkpoints, logs and samples go", flag_values=fv)
    flags.DEFINE_boolean("debug", False, "show tracebacks for errors", flag_values=fv)
    flags.DEFINE_boolean("resume_anyway", False, "continue the run in --workdir although its config differs",
                         flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "delete the run in --workdir and start again", flag_values=fv)
    try:
        # sys_argv: the override flags (--config.a.b=...) are looked up in this list, not in sys.argv.
        config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=True, sys_argv=argv)
        rest = fv(argv)
        config = fv.config
        defaults = llm.config.get_base_config() if nones else None
        for key in nones:
            *sections, name = key.split(".")
            node, base = config, defaults
            for section in sections:
                node, base = node[section], base.get(section) if isinstance(base, dict | ConfigDict) else None
            default = base.get(name, node[name]) if isinstance(base, dict | ConfigDict) else node[name]
            if default is not None:
                raise UserError(f"--config.{key}=None: {key} cannot be None (its default is {default!r})")
            node[name] = None
    except flags.Error as e:
        raise UserError(_one_line(e)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"bad --config override: {_one_line(e)}") from None
    if len(rest) > 1:
        raise UserError(f"unexpected argument(s) {' '.join(rest[1:])!r}: llm train takes only flags (--config FILE, "
                        "--workdir DIR, --config.section.key=value, ...)")
    if fv.resume_anyway and fv.overwrite:
        raise UserError("--resume_anyway and --overwrite contradict each other; pass one of them")
    return config, fv.workdir, dict(resume_anyway=fv.resume_anyway, overwrite=fv.overwrite)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("..." if len(text) > 400 else "")


def cmd_train(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return 0
    config, workdir, options = _parse_train(argv)
    from llm.faults import Faults
    from llm.health import TrainingDiverged
    from llm.train import train

    try:
        faults = Faults.from_env()
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        result = train(config, workdir, faults=faults, **options)
    except TrainingDiverged as e:
        print(f"llm train: {_one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    import jax

    if result.stopped_by is not None:
        return EXIT_PREEMPTED
    if jax.process_index() != 0:
        return 0
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"done: step {result.step}, val loss {val}, {result.wall_time:.0f} s; workdir {Path(workdir).absolute()}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one UserError line (exit code 2 through main), not usage + SystemExit."""

    def error(self, message):
        raise UserError(f"{message}; see {self.prog} --help")


def _parse(p: Parser, argv: list[str]):
    """The parsed flags, or None after --help printed the usage."""
    try:
        return p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            raise
        return None


def cmd_sample(argv: list[str]) -> int:
    import math

    p = Parser(prog="llm sample", description="Generate text from a trained run.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts (default: a newline)")
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", "--top_k", type=int, default=None)
    p.add_argument("--top-p", "--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:
        return 0
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if not (math.isfinite(a.temperature) and a.temperature >= 0):
        raise UserError(f"--temperature must be a number >= 0 (0 is greedy), got {a.temperature}")
    if a.top_k is not None and a.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {a.top_k}")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {a.top_p}")
    if not -(2**63) <= a.seed < 2**63:
        raise UserError(f"--seed must fit in 64 bits (-2**63 <= seed < 2**63), got {a.seed}")
    prompts = a.prompt or ["\n"]
    from llm.inference import load_run, sample

    run = load_run(a.workdir, a.checkpoint, prompts=prompts)  # checks the prompts before reading the checkpoint
    texts = sample(run, prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, seed=a.seed)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} (step {run.step}) ---\n{text}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    p = Parser(prog="llm eval", description="Evaluate a run: loss, perplexity, bits per byte; task metrics for "
                                            "supervised tasks (see llm/evaluate.py).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", help="an experiment file whose `eval` section to use (default: the run's own)")
    p.add_argument("--corpus", help="evaluate on this corpus or task:NAME (sets eval.corpus)")
    p.add_argument("--split", choices=("val", "train", "all"), help="sets eval.split")
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--batch-size", "--batch_size", type=int, default=16)
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:
        return 0
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {a.batch_size}")
    from llm import run as run_lib
    from llm.config import validate_config

    eval_config = None
    if a.config or a.corpus or a.split:
        eval_config = (_load_experiment(a.config) if a.config else run_lib.load_config(a.workdir)).eval
        if a.corpus:
            eval_config.corpus = a.corpus
        if a.split:
            eval_config.split = a.split
        probe = run_lib.config_lib.get_base_config()
        probe.eval = eval_config
        validate_config(probe)
    from llm.evaluate import run_evaluation

    run_evaluation(a.workdir, eval_config, checkpoint=a.checkpoint, batch_size=a.batch_size)
    return 0


def cmd_convert(argv: list[str]) -> int:
    p = Parser(prog="llm convert", description="Hugging Face checkpoints <-> runs of this project (GPT-2 and "
                                               "Llama-family; see llm/hf/).")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("source", help="import: a Hugging Face model directory; export: a run's workdir")
    p.add_argument("target", help="import: the new run's workdir; export: the output directory")
    p.add_argument("--arch", default="llama", help="export: gpt2, llama, mistral, qwen2 or qwen3")
    p.add_argument("--checkpoint", default="latest", help="export: latest, best, or a step number")
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:
        return 0
    from llm.hf import export_workdir, import_to_workdir

    if a.direction == "import":
        if Path(a.target).exists():
            raise UserError(f"{a.target} exists; import into a new workdir")
        import_to_workdir(a.source, a.target)
    else:
        export_workdir(a.source, a.target, a.arch, checkpoint=a.checkpoint)
    print(f"{a.direction}ed {a.source} -> {a.target}")
    return 0


def cmd_chat(argv: list[str]) -> int:
    from llm.chat import chat_main

    return chat_main(argv)


def cmd_explain(argv: list[str]) -> int:
    from llm.explain.cli import explain_main

    return explain_main(argv)


def cmd_sweep(argv: list[str]) -> int:
    p = Parser(prog="llm sweep", description="Run the runs of an experiment file's get_sweep() (see llm/sweep.py); "
                                             "exit code 0 when all succeeded, 1 otherwise.")
    p.add_argument("experiment", help="experiments/X.py[:arg], defining get_config and get_sweep")
    p.add_argument("--workdir", required=True, help="the sweep's directory; run NAME goes to WORKDIR/NAME/")
    p.add_argument("--parallel", type=int, default=1, help="runs at once, each an `llm train` subprocess")
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="list the runs (name, overrides); run nothing")
    p.add_argument("--emit", choices=("slurm",), help="write WORKDIR/sweep.slurm, a job array (task i runs run i)")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this run (repeatable)")
    p.add_argument("--index", type=int, help="run only run number INDEX (0-based; for job arrays)")
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:
        return 0
    from llm import sweep

    if a.dry_run:
        return sweep.dry_run(a.experiment, only=a.only, index=a.index)
    if a.emit == "slurm":
        sweep.emit_slurm(a.experiment, a.workdir)
        return 0
    return sweep.run_sweep(a.experiment, a.workdir, parallel=a.parallel, only=a.only, index=a.index)


def cmd_report(argv: list[str]) -> int:
    p = Parser(prog="llm report", description="Tabulate and plot the runs of a sweep directory: report.md, "
                                              "report.csv, curves.png, variants.png.")
    p.add_argument("workdir", help="the sweep's directory (as given to llm sweep --workdir)")
    p.add_argument("--debug", action="store_true")
    a = _parse(p, argv)
    if a is None:
        return 0
    from llm.report import write_report

    print(write_report(a.workdir))
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "chat": cmd_chat, "convert": cmd_convert,
            "explain": cmd_explain, "sweep": cmd_sweep, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"llm: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    debug = "--debug" in rest
    if command not in ("sweep", "report"):  # these two run no XLA program themselves
        import jax  # noqa: F401  (imported first so that the next call also sets how XLA:CPU runs programs)
    keep_freed_host_memory()  # llm/host_memory.py: no page faults for XLA:CPU's per-call buffers
    try:
        return COMMANDS[command](rest)
    except KeyboardInterrupt:
        print("llm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug or not isinstance(e, _user_errors()):
            raise
        print(f"llm {command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
