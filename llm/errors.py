"""The errors a user can cause, and the exit codes of the `llm` command: each written once, here.

Every mistake in what a user gives (a config, data, a checkpoint, a prompt, a flag) raises a `UserError`
subclass with a one-line message that says what is wrong and how to fix it; the command prints that line and
exits with the error's `exit_code`, without a traceback (`--debug` shows it). Anything else is a bug: exit code 1
and the traceback.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The `llm` command's exit codes (what each means: MEANINGS)."""

    OK = 0
    BUG = 1
    USER_ERROR = 2
    DIVERGED = 3
    PREEMPTED = 75  # sysexits' EX_TEMPFAIL, "try again later"
    INTERRUPTED = 130  # the shell's 128 + SIGINT


MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.BUG: "an unexpected error (a bug: traceback)",
    ExitCode.USER_ERROR: "a mistake in the input (one line, nothing written)",
    ExitCode.DIVERGED: "training diverged (rollbacks did not help)",
    ExitCode.PREEMPTED: "stopped by SIGTERM/SIGINT after saving a checkpoint (run the same command to resume)",
    ExitCode.INTERRUPTED: "interrupted by Ctrl-C outside a training loop",
}


def describe_exit_codes() -> str:
    return "; ".join(f"{int(code)} {meaning}" for code, meaning in MEANINGS.items())


class UserError(Exception):
    """A mistake in what the user asked for; its message is one line that says what to change."""

    exit_code: ExitCode = ExitCode.USER_ERROR


class ConfigError(UserError, ValueError):
    """An experiment config, override or flag that cannot be used."""


class DataError(UserError, ValueError):
    """A corpus, data file or token split that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that cannot serve this run (another model's, or none usable)."""


class PromptError(UserError, ValueError):
    """A prompt the model cannot take (empty, not encodable, too long for the context)."""


class TrainingDiverged(UserError):
    """Rollbacks did not cure a run's numerical faults; the message says what happened and what to change."""

    exit_code = ExitCode.DIVERGED


def one_line(e: BaseException | str, limit: int = 400) -> str:
    """An exception's message on one line (whitespace runs collapsed), cut to `limit` characters."""
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")
