"""`llm eval --workdir DIR [--config experiments/X.py] [--corpus SPEC] [--split val|train|all]
[--checkpoint latest|best|STEP] [--batch-size N]`: evaluate a run as a config's `eval` section says.

`llm eval --workdir DIR --tasks NAME[,NAME...] [--num_fewshot K] [--limit N] [--include_path DIR]`: run
lm-evaluation-harness tasks on it instead (llm/evaluation/harness.py)."""

from __future__ import annotations

from llm.cli.parsing import Parser
from llm.errors import ConfigError


def main(argv: list[str]) -> int:
    p = Parser(prog="llm eval", description="Evaluate a run: loss, perplexity, bits per byte; task metrics for "
                                            "supervised tasks (see llm/evaluation/).")
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", help="an experiment file whose `eval` section to use (default: the run's own)")
    p.add_argument("--corpus", help="evaluate on this corpus or task:NAME (sets eval.corpus)")
    p.add_argument("--split", choices=("val", "train", "all"), help="sets eval.split")
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--batch-size", "--batch_size", type=int, default=16)
    p.add_argument("--tasks", help="lm-evaluation-harness tasks, comma-separated (e.g. hellaswag,arc_easy)")
    p.add_argument("--num_fewshot", "--num-fewshot", type=int, help="few-shot examples per task (harness tasks)")
    p.add_argument("--limit", type=int, help="at most N examples per task (harness tasks)")
    p.add_argument("--include_path", "--include-path", help="a folder of the harness's task YAML files")
    a = p.parse(argv)
    if a is None:
        return 0
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    harness_flags = [f for f, v in (("--num_fewshot", a.num_fewshot), ("--limit", a.limit),
                                    ("--include_path", a.include_path)) if v is not None]
    if a.tasks:
        return _harness(a)
    if harness_flags:
        raise ConfigError(f"{', '.join(harness_flags)} apply only to harness tasks; add --tasks NAME")
    from llm.config import get_base_config, load_experiment, validate_config
    from llm.evaluation import run_evaluation
    from llm.runs import load_config

    eval_config = None
    if a.config or a.corpus or a.split:
        eval_config = (load_experiment(a.config) if a.config else load_config(a.workdir)).eval
        if a.corpus:
            eval_config.corpus = a.corpus
        if a.split:
            eval_config.split = a.split
        probe = get_base_config()
        probe.eval = eval_config
        validate_config(probe)
    run_evaluation(a.workdir, eval_config, checkpoint=a.checkpoint, batch_size=a.batch_size)
    return 0


def _harness(a) -> int:
    clash = [f for f, v in (("--config", a.config), ("--corpus", a.corpus), ("--split", a.split)) if v]
    if clash:
        raise ConfigError(f"{', '.join(clash)} set the loss evaluation, not harness tasks; drop them or --tasks")
    for flag, value, least in (("--num_fewshot", a.num_fewshot, 0), ("--limit", a.limit, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError(f"--tasks names no task: {a.tasks!r}")
    from llm.evaluation.harness import run_harness

    out = run_harness(a.workdir, tasks, checkpoint=a.checkpoint, num_fewshot=a.num_fewshot, limit=a.limit,
                      include_path=a.include_path, batch_size=a.batch_size)
    for task, metrics in out["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)
        print(f"{task}: {shown}")
    return 0
