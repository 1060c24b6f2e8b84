"""The `llm` command: parses flags and calls a job. User mistakes become one line on stderr and exit code 2.

    llm train [--config experiments/X.py[:preset]] [--workdir DIR] [--config.section.key=value ...]
    llm sample --workdir DIR --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N] [--temperature T]
               [--top-k K] [--top-p P] [--seed S] [--checkpoint latest|best|STEP]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
DEFAULT_WORKDIR = "runs/default"


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def _user_errors():
    """Exception types that are user mistakes (imported lazily: jax is slow to import)."""
    from llm.data import DataError
    from llm.model.config import ConfigError
    from llm.sampling import PromptError

    return (UserError, ConfigError, DataError, PromptError)


def _parse_train(argv: list[str]):
    """absl/ml_collections config flags: --config FILE[:arg] and --config.a.b=value overrides."""
    from absl import flags
    from ml_collections import config_flags

    import llm.config

    # absl wants `--config=FILE` before the overrides; accept `--config FILE` anywhere too.
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            argv[i:i + 2] = [f"--config={argv[i + 1]}"]
            break
    argv = ["llm train", *sorted(argv, key=lambda a: not a.startswith("--config="))]
    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where the run's checkpoints, logs and samples go", flag_values=fv)
    flags.DEFINE_boolean("debug", False, "show tracebacks for errors", flag_values=fv)
    try:
        # sys_argv: the override flags (--config.a.b=...) are looked up in this list, not in sys.argv.
        config_flags.DEFINE_config_file("config", default=llm.config.__file__, flag_values=fv, lock_config=True,
                                        sys_argv=argv,
                                        help_string="experiment file, e.g. experiments/shakespeare_char.py:baby")
        fv(argv)
        config = fv.config
        config.keys()  # a file that failed to load stands in as a proxy that raises its error on first use
    except flags.Error as e:
        raise UserError(_one_line(e)) from None
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError, ImportError) as e:
        raise UserError(f"bad --config: {_one_line(e)}") from None
    from ml_collections import ConfigDict

    if not isinstance(config, ConfigDict):
        raise UserError(f"--config: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config, fv.workdir


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("..." if len(text) > 400 else "")


def cmd_train(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return 0
    config, workdir = _parse_train(argv)
    from llm.train import train

    result = train(config, workdir)
    import jax

    if jax.process_index() != 0:
        return 0
    val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"done: step {result.step}, val loss {val}, {result.wall_time:.0f} s; workdir {Path(workdir).absolute()}")
    return 0


def cmd_sample(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llm sample", description="Generate text from a trained run.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts (default: a newline)")
    p.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    p.add_argument("--top-k", "--top_k", type=int, default=None)
    p.add_argument("--top-p", "--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    if a.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 is greedy), got {a.temperature}")
    if a.top_k is not None and a.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {a.top_k}")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {a.top_p}")
    from llm.inference import load_run, sample

    run = load_run(a.workdir, a.checkpoint)
    texts = sample(run, a.prompt or ["\n"], max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, seed=a.seed)
    for i, text in enumerate(texts):
        print(f"--- sample {i + 1} (step {run.step}) ---\n{text}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample}


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
