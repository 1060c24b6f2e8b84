"""Evaluating a trained run (`llm eval`): loss, perplexity, bits per byte, answer accuracy and task metrics of
generations, as its config's `eval` section says."""

from llm.evaluation.evaluate import format_table, measure, run_evaluation

__all__ = ["format_table", "measure", "run_evaluation"]
