"""What the commands share: an argparse whose mistakes are one-line user errors, and the sampling flags (one set of
flags, checked by `SamplingParams`' rules)."""

from __future__ import annotations

import argparse

from llm.config.sampling import SamplingParams
from llm.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one ConfigError line (exit code 2 through `llm`), not usage + SystemExit; every
    command takes --debug (read by `llm` itself, which then shows a traceback instead of the one line)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    def error(self, message):
        raise ConfigError(f"{message}; see {self.prog} --help")

    def parse(self, argv: list[str]) -> argparse.Namespace | None:
        """The parsed flags, or None after --help printed the usage."""
        try:
            return self.parse_args(argv)
        except SystemExit as e:
            if e.code:
                raise
            return None


FLAGS = {  # SamplingParams field -> (type, help)
    "temperature": (float, "0 is greedy decoding"),
    "top_k": (int, "keep the K most likely tokens (0 or unset: off)"),
    "top_p": (float, "keep the smallest set of tokens with probability >= P (1 or unset: off)"),
    "max_new_tokens": (int, "tokens to generate"),
    "seed": (int, "of the sampling keys"),
}


def add_sampling_flags(p: Parser, defaults: SamplingParams, fields: tuple[str, ...] = tuple(FLAGS)) -> None:
    """--temperature, --top-k, --top-p, --max-new-tokens and --seed (or the `fields` named), with `defaults`."""
    for field in fields:
        kind, help_text = FLAGS[field]
        names = dict.fromkeys(["--" + field.replace("_", "-"), "--" + field])  # --top-k and --top_k
        p.add_argument(*names, type=kind, default=getattr(defaults, field), help=help_text, dest=field)


DEFAULTS = SamplingParams()


def sampling_params(a: argparse.Namespace, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
    """The parsed sampling flags (`defaults` for fields without one), checked; a bad one is a ConfigError naming
    the flag."""
    params = SamplingParams(**{f: getattr(a, f, getattr(defaults, f)) for f in FLAGS})
    return params.check(lambda field: "--" + field.replace("_", "-"))
