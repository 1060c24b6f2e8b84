"""`llm train [--config experiments/X.py[:preset]] [--workdir DIR] [--config.section.key=value ...]
[--resume_anyway | --overwrite] [--debug]`: train (or resume) an experiment in a workdir, then print samples.

The config flags are absl / ml_collections config flags: --config FILE[:arg] picks an experiment file (default:
the base config, llm/config/base.py), --config.a.b=value overrides any key.
"""

from __future__ import annotations

from pathlib import Path

from llm.config.experiments import DEFAULT_EXPERIMENT, check_key, load_experiment
from llm.errors import ConfigError, ExitCode, one_line

DEFAULT_WORKDIR = "runs/default"


def main(argv: list[str], hooks=None) -> int:
    """hooks: the tests' seam into the training loop (llm/training/hooks.py); None in real runs."""
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(__doc__)
        return ExitCode.OK
    config, workdir, options = parse_train(argv)
    import jax

    from llm.training import NO_HOOKS, train

    result = train(config, workdir, hooks=hooks or NO_HOOKS, **options)
    if result.stopped_by is not None:
        return ExitCode.PREEMPTED
    if jax.process_index() == 0:
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"done: step {result.step}, val loss {val}, {result.wall_time:.0f} s; workdir "
              f"{Path(workdir).absolute()}")
    return ExitCode.OK


def parse_train(argv: list[str]):
    """(config, workdir, {resume_anyway, overwrite}) from the flags."""
    from absl import flags
    from ml_collections import config_flags

    argv = list(argv)
    spec = _pop_config_spec(argv)
    config = load_experiment(spec)
    for a in argv:
        if a.startswith("--config."):
            check_key(config, a[len("--config."):].split("=", 1)[0], a)
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
        _set_nones(config, nones)
    except flags.Error as e:
        raise ConfigError(one_line(e)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"bad --config override: {one_line(e)}") from None
    if len(rest) > 1:
        raise ConfigError(f"unexpected argument(s) {' '.join(rest[1:])!r}: llm train takes only flags (--config FILE, "
                          "--workdir DIR, --config.section.key=value, ...)")
    if fv.resume_anyway and fv.overwrite:
        raise ConfigError("--resume_anyway and --overwrite contradict each other; pass one of them")
    return config, fv.workdir, dict(resume_anyway=fv.resume_anyway, overwrite=fv.overwrite)


def _pop_config_spec(argv: list[str]) -> str:
    """The --config FILE (or --config=FILE) argument, removed from argv; the default experiment without one."""
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
            del argv[i:i + 2]
            return spec
        if a.startswith("--config="):
            del argv[i]
            return a[len("--config="):]
    return DEFAULT_EXPERIMENT


def _set_nones(config, keys: list[str]) -> None:
    """Set each dotted key to None, if the option may be None (its default is None)."""
    from llm.config import OPTIONS

    for key in keys:
        option = OPTIONS.get(key)
        if option is not None and not option.nullable:
            raise ConfigError(f"--config.{key}=None: {key} cannot be None (its default is {option.default!r})")
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = None


__all__ = ["DEFAULT_WORKDIR", "main", "parse_train"]
