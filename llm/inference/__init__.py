"""Running a trained model: prompts to ids, batched generation with the KV cache, streaming one prompt's tokens,
chat sessions, and scoring batches (loss, accuracy). Reading a run from disk is llm/runs/."""

from __future__ import annotations

from llm.config.sampling import SamplingParams
from llm.inference.generate import generate, left_pad
from llm.inference.prompts import encode_prompts
from llm.inference.scoring import make_accuracy_step, make_eval_step, score
from llm.inference.streaming import prefill_bucket, stream_generate
from llm.model import Transformer
from llm.runs import LoadedRun, open_run
from llm.tokenizers import Tokenizer

__all__ = ["SamplingParams", "encode_prompts", "generate", "left_pad", "load_for_prompts", "make_accuracy_step",
           "make_eval_step", "prefill_bucket", "sample_texts", "score", "stream_generate"]


def load_for_prompts(workdir, checkpoint: str, prompts: list[str] | None) -> LoadedRun:
    """The run in `workdir` at `checkpoint`, its `prompts` checked (PromptError) before the checkpoint is read."""
    files = open_run(workdir)
    if prompts is not None:
        encode_prompts(files.tokenizer, prompts, files.model.cfg.max_len)
    return files.restore(checkpoint)


def sample_texts(model: Transformer, params, tokenizer: Tokenizer, prompts: list[str], sampling: SamplingParams
                 ) -> list[str]:
    """Continuations (prompt included) of each prompt, sampled as one batch with the KV cache."""
    encoded = encode_prompts(tokenizer, prompts, model.cfg.max_len)
    outs = generate(model, params, encoded, sampling, eos_id=tokenizer.eos_id)
    return [p + tokenizer.decode(o) for p, o in zip(prompts, outs, strict=True)]
