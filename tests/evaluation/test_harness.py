"""lm-evaluation-harness tasks on a trained run (llm/evaluation/harness.py): each request's loglikelihood against
the model's own full forward pass of that one text, scored in float64 NumPy; a local multiple-choice task through
`llm eval --tasks`, its accuracy against those references; bad requests refused by name."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import numpy_token_logprobs

from llm.cli import main
from llm.errors import ConfigError, PromptError
from llm.evaluation.harness import HarnessLM
from llm.runs import load_run

DOCS = [  # the trained run's corpus is words like these (conftest.make_corpus)
    {"query": "the cat sat on", "choices": [" the mat", " a dog", " sun set"], "label": 0},
    {"query": "the dog ran to", "choices": [" its bed", " cat the", " on"], "label": 1},
    {"query": "while the sun", "choices": [" set", " mat and the dog ran", " ran"], "label": 2},
]


@pytest.fixture(scope="module")
def harness(trained):
    return HarnessLM(str(trained / "run"), batch_size=2)  # batches of 2: rows of several lengths share one


def reference_loglikelihood(lm, context: str, continuation: str) -> tuple[float, bool]:
    """The continuation's log-probability from one unpadded forward pass of context + continuation (a character
    tokenizer: the two texts' tokens concatenate), log-softmax in float64."""
    head, tail = list(lm.tokenizer.encode(context)), list(lm.tokenizer.encode(continuation))
    logp, greedy = numpy_token_logprobs(lm.model, lm.params, head + tail)
    return float(logp[-len(tail):].sum()), bool(greedy[-len(tail):].all())


def requests(pairs):
    return [SimpleNamespace(args=pair) for pair in pairs]


def test_loglikelihoods_equal_one_forward_pass_per_request(harness):
    pairs = [(d["query"], c) for d in DOCS for c in d["choices"]] + [("the cat sat on ", "the mat"), ("the", "")]
    got = harness.loglikelihood(requests(pairs))
    assert got[-1] == (0.0, True)  # an empty continuation: nothing to score
    for pair, (ll, greedy) in zip(pairs[:-2], got, strict=False):
        want_ll, want_greedy = reference_loglikelihood(harness, *pair)
        assert ll == pytest.approx(want_ll, abs=1e-4), pair
        assert greedy == want_greedy, pair
    # A context's trailing space moves to the continuation, as the harness's hf backend tokenizes it.
    assert got[-2][0] == pytest.approx(reference_loglikelihood(harness, "the cat sat on", " the mat")[0], abs=1e-4)


def test_a_request_longer_than_the_context_keeps_its_last_tokens(harness, capsys):
    long_context = ("the cat sat on the mat and the dog ran to its bed while the sun set " * 3).rstrip()
    (ll, _), = harness.loglikelihood(requests([(long_context, " the mat")]))
    kept = (long_context + " the mat")[-(harness.max_len + 1):]
    want, _ = reference_loglikelihood(harness, kept[:-len(" the mat")], " the mat")
    assert ll == pytest.approx(want, abs=1e-4)
    assert "keeps its last tokens" in capsys.readouterr().err


def test_a_local_multiple_choice_task_through_llm_eval(trained, harness, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    assert main(["eval", "--workdir", str(run), "--tasks", "tiny_mc", "--include_path", str(tmp_path / "tasks")]) == 0
    written = json.loads(next((run / "eval").glob("harness-step*.json")).read_text())
    picks = [int(np.argmax([reference_loglikelihood(harness, d["query"], c)[0] for c in d["choices"]]))
             for d in DOCS]
    want = np.mean([p == d["label"] for p, d in zip(picks, DOCS, strict=True)])
    assert written["results"]["tiny_mc"]["acc,none"] == pytest.approx(want)
    assert f"tiny_mc: acc {want:.4f}" in capsys.readouterr().out


def test_local_completions_against_llm_serve_equal_the_native_model(trained, harness):
    """The harness's own `local-completions` API model (token ids from the server's /tokenize, echo + logprobs)
    against a real `llm serve` on a loopback port: the same loglikelihoods and greedy flags as the native model."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from serving.test_serve import LoopbackServer  # tests/ is on the path (pyproject)

    from llm.serving.app import Limits
    from llm.serving.server import build_app

    server = LoopbackServer(build_app(load_run(trained / "run"), model_name="tiny", max_batch=4, limits=Limits()))
    try:
        # The server takes prompts of up to max_len - 1 tokens (one is generated); these requests fit.
        api = LocalCompletionsAPI(base_url=server.url + "/completions", model="tiny", tokenizer_backend="remote",
                                  num_concurrent=2, max_retries=1, max_length=harness.max_len - 1)
        pairs = [(d["query"], c) for d in DOCS for c in d["choices"] if len(d["query"] + c) < harness.max_len]
        assert len(pairs) == 8
        served = api.loglikelihood(requests(pairs), disable_tqdm=True)
    finally:
        server.close()
    native = harness.loglikelihood(requests(pairs))
    np.testing.assert_allclose([x for x, _ in served], [x for x, _ in native], atol=1e-4)
    assert [g for _, g in served] == [g for _, g in native]


def test_bad_harness_requests_are_refused_by_name(trained, harness, tmp_path):
    with pytest.raises(PromptError, match="no end-of-text token"):  # a character tokenizer without one
        harness.loglikelihood_rolling(requests([("the cat sat",)]))
    with pytest.raises(ConfigError, match="model_args max_batch_size are not used"):
        HarnessLM(str(trained / "run"), max_batch_size=64)
    with pytest.raises(ConfigError, match="batch_size must be a number >= 1, got 'auto'"):
        HarnessLM(str(trained / "run"), batch_size="auto")
    with pytest.raises(ConfigError, match="generation_kwargs top_p are not supported"):
        harness.generate_until(requests([("the cat", {"until": ["\n"], "top_p": 0.9})]))
    assert main(["eval", "--workdir", str(trained / "run"), "--limit", "3"]) == 2  # --limit without --tasks
    assert main(["eval", "--workdir", str(trained / "run"), "--tasks", "tiny_mc", "--include_path",
                 str(tmp_path / "missing")]) == 2
