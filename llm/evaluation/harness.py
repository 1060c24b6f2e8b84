"""A trained run as an EleutherAI lm-evaluation-harness model, registered as `llm`:

    lm_eval.simple_evaluate(model="llm", model_args="workdir=runs/x,checkpoint=best", tasks=["hellaswag"])
    python -m llm.evaluation.harness --model llm --model_args workdir=runs/x --tasks hellaswag   # lm_eval's CLI

Requests are tokenized as the harness's `hf` backend does (a context's trailing spaces move to the continuation;
an empty context is the end-of-text token; a context plus continuation longer than the model's window keeps its
last max_len + 1 tokens), so the same run scores the same through either. Loglikelihoods are computed in batches
of bucketed lengths (llm/inference/logprobs.py); rolling loglikelihoods over the harness's disjoint windows of
the model's context; generations by the KV-cache generator, greedy, cut at the first stop sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from llm.config.sampling import SamplingParams
from llm.errors import ConfigError, PromptError, one_line
from llm.files import write_json
from llm.inference.generate import generate
from llm.inference.logprobs import token_logprobs
from llm.runs import EVAL_DIR, load_run

GENERATION_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}


@register_model("llm")
class HarnessLM(LM):
    """The run in `workdir` (its `checkpoint`: latest, best or a step) answering harness requests; `batch_size`
    rows are scored at a time."""

    def __init__(self, workdir: str, checkpoint: str = "latest", batch_size: int | str = 8,
                 max_gen_toks: int = 256, device: str | None = None, **unused):
        super().__init__()
        # simple_evaluate passes max_batch_size and device to every model; None means not asked for.
        asked = sorted(k for k, v in unused.items() if v is not None)
        if asked:
            raise ConfigError(f"model_args {', '.join(asked)} are not used by llm's harness model; it takes "
                              "workdir, checkpoint, batch_size, max_gen_toks")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ConfigError(f"batch_size must be a number >= 1, got {batch_size!r}")
        if device is not None:  # lm_eval's CLI always sends one (cuda:0 unless told): said, not silently dropped
            import jax

            print(f"llm harness: device={device} is not used; JAX runs the model on {jax.default_backend()}",
                  file=sys.stderr)
        loaded = load_run(workdir, str(checkpoint))
        self.model, self.params, self.tokenizer, self.step = loaded.model, loaded.params, loaded.tokenizer, loaded.step
        self.max_len = loaded.model.cfg.max_len
        self.batch_size, self.max_gen_toks = int(batch_size), int(max_gen_toks)
        self.truncated = False

    # ---- tokens ----------------------------------------------------------------------------------------------

    @property
    def eot_id(self) -> int:
        if self.tokenizer.eos_id is None:
            raise PromptError("this run's tokenizer has no end-of-text token, which an empty context and rolling "
                              "loglikelihoods need; train with a tokenizer that has one (e.g. the bpe tokenizer)")
        return self.tokenizer.eos_id

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The hf backend's split: the continuation's tokens are those the whole text has beyond the context's."""
        if not context:
            return [self.eot_id], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, head = self.encode(context + continuation), self.encode(context)
        return head, whole[len(head):]

    def _window(self, context: list[int], continuation: list[int]) -> list[int]:
        row = (context + continuation)[-(self.max_len + 1):]
        if len(row) < len(context) + len(continuation) and not self.truncated:
            self.truncated = True
            print(f"llm harness: a request longer than the model's context of {self.max_len} tokens keeps its "
                  "last tokens (as the hf backend does)", file=sys.stderr)
        return row

    # ---- requests --------------------------------------------------------------------------------------------

    def score_pairs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether every continuation token is the argmax)."""
        scored_ids = [i for i, (_, continuation) in enumerate(pairs) if continuation]  # nothing to score: 0, greedy
        rows = [self._window(*pairs[i]) for i in scored_ids]
        out = [(0.0, True)] * len(pairs)
        for i, (logp, greedy) in zip(scored_ids, token_logprobs(self.model, self.params, rows,
                                                                 batch_size=self.batch_size), strict=True):
            n = len(pairs[i][1])
            out[i] = (float(logp[-n:].sum()), bool(greedy[-n:].all()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.score_pairs([self.encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            tokens = self.encode(request.args[0])
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.eot_id,
                                                    max_seq_len=self.max_len, context_len=1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, self.score_pairs(windows), strict=True):
            totals[i] += logp
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate_one(*r.args) for r in requests]

    def _generate_one(self, context: str, kwargs: dict) -> str:
        unknown = sorted(set(kwargs) - GENERATION_KWARGS)
        if unknown:
            raise ConfigError(f"generation_kwargs {', '.join(unknown)} are not supported by llm's harness model "
                              f"(it takes {', '.join(sorted(GENERATION_KWARGS))})")
        if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) not in (0, 0.0, None):
            raise ConfigError("llm's harness model generates greedily; the task asks to sample (do_sample / "
                              "temperature): set them off in the task's generation_kwargs")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eot_text = self.tokenizer.decode([self.eot_id])
        steps = int(kwargs.get("max_gen_toks", self.max_gen_toks))
        prompt = self.encode(context)[-(self.max_len - 1):] or [self.eot_id]
        out = generate(self.model, self.params, [np.asarray(prompt, np.int32)],
                       SamplingParams(temperature=0.0, max_new_tokens=steps), eos_id=self.eot_id)[0]
        text = self.tokenizer.decode([int(t) for t in out if int(t) != self.eot_id])
        for stop in [*until, eot_text]:
            if stop:
                text = text.split(stop)[0]
        return text


def task_manager(tasks: Sequence[str], include_path: str | None = None):
    """lm_eval's TaskManager that knows `tasks`: `include_path`'s task YAMLs alone when they hold every one (the
    harness's own index of ~15,000 tasks takes seconds to build), else with the harness's own. An unknown name is a
    ConfigError naming the closest known ones."""
    import difflib

    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include_path {include_path} is not a directory of task YAML files")
    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=include_path)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            raise ConfigError(f"unknown harness task {task!r}" + (f"; did you mean {', '.join(close)}?" if close else
                              "; list them with `lm_eval ls tasks`, or pass --include_path DIR with its YAML"))
    return manager


def run_harness(workdir: str | Path, tasks: Sequence[str], *, checkpoint: str = "latest",
                num_fewshot: int | None = None, limit: int | None = None, include_path: str | None = None,
                batch_size: int = 8) -> dict:
    """lm_eval's simple_evaluate of `tasks` on the run; its results (per task, metric -> value) are written to
    workdir/eval/harness-step<N>.json and returned."""
    import lm_eval

    manager = task_manager(tasks, include_path)
    model = HarnessLM(str(workdir), checkpoint, batch_size)
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False)
    except (ConnectionError, OSError) as e:  # a hub dataset with no network
        raise ConfigError(f"a task's dataset could not be fetched ({one_line(e, 160)}); offline, write the task as "
                          "a local YAML (dataset_path: json, data_files) and pass --include_path DIR") from e
    results = {"step": model.step, "tasks": list(tasks), "num_fewshot": num_fewshot, "limit": limit,
               "results": out["results"]}
    path = Path(workdir) / EVAL_DIR / f"harness-step{model.step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results, indent=2)
    return results


def main() -> None:
    """lm_eval's own command line, with this model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
