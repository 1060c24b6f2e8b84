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
    llm convert import HF_DIR WORKDIR [--tokenizer PATH]  |  llm convert export WORKDIR OUT_DIR --arch gpt2|llama
    llm sweep experiments/X.py[:arg] --workdir DIR [--parallel N] [--dry-run] [--emit slurm] [--only NAME]
    llm report SWEEP_DIR
    llm serve --workdir DIR [--host 127.0.0.1] [--port 8000] [--checkpoint latest|best|STEP] [--max-batch N]
              [--api-key KEY] [--max-queue N] [--max-tokens N] [--max-prompt-tokens N] [--model-name NAME]
    llm prepare SOURCE... --out DIR [--tokenizer byte|char|bpe|FILE] [--vocab_size N] [--text_field F]
                [--val_fraction F] [--workers N]

Exit codes: see `llm --help` (llm/errors.py).

Config files are Python and run as code when loaded: use only files you trust.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

from llm.errors import ExitCode, UserError, describe_exit_codes, one_line
from llm.runtime.host_memory import keep_freed_host_memory

# One module per command (llm/cli/<module>.py, each with `main(argv) -> exit code`); nothing below the CLI imports it.
COMMANDS = {"train": "train", "sample": "sample", "eval": "evaluate", "chat": "chat", "convert": "convert",
            "explain": "explain", "sweep": "sweep", "report": "report",
            "prepare": "prepare", "serve": "serve"}  # command -> module in llm/cli/
NO_XLA = ("sweep", "report", "prepare")  # commands that run no XLA program themselves


def main(argv: list[str] | None = None, *, train_hooks=None) -> int:
    """The `llm` command; returns its exit code. train_hooks: the tests' seam into `llm train`'s loop
    (llm/training/hooks.py), None in real use."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        codes = textwrap.fill("Exit codes: " + describe_exit_codes(), 116)
        print(__doc__.replace("Exit codes: see `llm --help` (llm/errors.py).", codes))
        return ExitCode.OK
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"llm: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return ExitCode.USER_ERROR
    if command not in NO_XLA:
        import jax  # noqa: F401  (imported first so that the next call also sets how XLA:CPU runs programs)
    keep_freed_host_memory()  # llm/runtime/host_memory.py: no page faults for XLA:CPU's per-call buffers
    module = importlib.import_module(f"llm.cli.{COMMANDS[command]}")
    try:
        return int(module.main(rest, hooks=train_hooks) if command == "train" else module.main(rest))
    except KeyboardInterrupt:
        print("llm: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except UserError as e:
        if "--debug" in rest:
            raise
        print(f"llm {command}: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
