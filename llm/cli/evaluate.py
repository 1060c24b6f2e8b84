"""`llm eval --workdir DIR [--config experiments/X.py] [--corpus SPEC] [--split val|train|all]
[--checkpoint latest|best|STEP] [--batch-size N]`: evaluate a run as a config's `eval` section says."""

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
    a = p.parse(argv)
    if a is None:
        return 0
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
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
