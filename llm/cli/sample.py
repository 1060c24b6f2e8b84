"""`llm sample --workdir DIR [--prompt TEXT ...] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
[--seed S] [--checkpoint latest|best|STEP]`: continue prompts with a trained run."""

from __future__ import annotations

from llm.cli.parsing import Parser, add_sampling_flags, sampling_params
from llm.config.sampling import SamplingParams


def main(argv: list[str]) -> int:
    p = Parser(prog="llm sample", description="Generate text from a trained run.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", help="repeat for a batch of prompts (default: a newline)")
    add_sampling_flags(p, SamplingParams(temperature=0.8, max_new_tokens=200))
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    a = p.parse(argv)
    if a is None:
        return 0
    sampling = sampling_params(a)
    prompts = a.prompt or ["\n"]
    from llm.inference import load_for_prompts, sample_texts

    run = load_for_prompts(a.workdir, a.checkpoint, prompts)
    for i, text in enumerate(sample_texts(run.model, run.params, run.tokenizer, prompts, sampling)):
        print(f"--- sample {i + 1} (step {run.step}) ---\n{text}")
    return 0
