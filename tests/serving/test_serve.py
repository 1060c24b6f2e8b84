"""`llm serve`: the slot engine (greedy = `generate`, alone and batched, requests joining mid-batch), and the HTTP
API through the official `openai` client against a real uvicorn server on a loopback port (completions, chat,
streaming, concurrency, logprobs, errors, the queue limit, the API key)."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import httpx2 as httpx
import numpy as np
import openai
import pytest
import uvicorn
from conftest import numpy_token_logprobs
from inference.test_chat import model_and_params  # tests/ is on the path (pyproject); its folder may not be

from llm.inference import SamplingParams, generate
from llm.serving.app import Limits
from llm.serving.engine import SlotEngine, request_key
from llm.serving.server import build_app

# ---------------------------------------------------------------------------------------------------------
# the engine


@pytest.mark.parametrize("overrides", [{}, {"position": "learned", "scan_layers": True}, {"short_conv": 3},
                                       {"mixer": "gla"}])
def test_slots_greedy_equal_generate_alone_and_joining_mid_batch(overrides):
    model, params = model_and_params(**overrides)
    prompts = [(np.arange(n) * 7 + 3) % 23 for n in [1, 7, 16, 17, 30]]
    want = [w.tolist() for w in generate(model, params, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))]
    slots = 3
    engine = SlotEngine(model, params, slots)
    keys = np.stack([request_key(0)] * slots)
    zeros, ones = np.zeros(slots), np.ones(slots)
    last, active, out, waiting = np.zeros(slots, np.int32), {}, {}, list(enumerate(prompts))
    while waiting or active:
        if waiting and len(active) < slots:  # one joins per step, into whichever slot is free (slots get reused)
            i, prompt = waiting.pop(0)
            slot = next(s for s in range(slots) if s not in active)
            token = int(np.argmax(np.asarray(engine.prefill(slot, prompt))))
            active[slot], out[i], last[slot] = i, [token], token
        tokens = engine.choose(engine.step(last), keys, zeros, zeros, ones)[0]
        for slot, i in list(active.items()):
            if len(out[i]) == 6:
                del active[slot]
            else:
                out[i].append(int(tokens[slot]))
                last[slot] = tokens[slot]
    assert [out[i] for i in range(len(prompts))] == want


# ---------------------------------------------------------------------------------------------------------
# the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """A uvicorn server of `app` on a free loopback port, in a thread (tests/evaluation/test_harness.py too)."""

    def __init__(self, app):
        self.port = _free_port()
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def close(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def run(trained):
    from llm.runs import load_run

    return load_run(trained / "run")


@pytest.fixture(scope="module")
def server(run):
    s = LoopbackServer(build_app(run, model_name="tiny", max_batch=4, limits=Limits(max_tokens=64)))
    yield s
    s.close()


def expected(run, prompt: str, n: int) -> str:
    """`llm sample`'s greedy continuation (without the prompt), cut at the end-of-text token."""
    tok = run.tokenizer
    out = generate(run.model, run.params, [tok.encode(prompt)], SamplingParams(max_new_tokens=n, temperature=0.0),
                   eos_id=tok.eos_id)[0]
    if tok.eos_id is not None and len(out) and out[-1] == tok.eos_id:
        out = out[:-1]
    return tok.decode(out)


PROMPTS = ["the ", "a", "and the cat sat", "d", "on the mat", "its ", "while the", "sun"]


def test_models_and_a_greedy_completion_equal_llm_sample(server, run):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="the ", max_tokens=10, temperature=0)
    assert r.choices[0].text == expected(run, "the ", 10)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == len(run.tokenizer.encode("the "))


def test_echo_gives_the_prompts_logprobs_and_token_ids_and_the_tokenizer_endpoints_work(server, run):
    """What the harness's local-completions sends for a loglikelihood: token-id prompts, echo, logprobs=1,
    max_tokens=1; each prompt token's log-probability (the first null) against one forward pass."""
    tok = run.tokenizer
    texts = ["the cat sat on the mat", "a dog ran"]
    ids = [[int(t) for t in tok.encode(x)] for x in texts]
    raw = httpx.post(server.url + "/completions", json={"model": "tiny", "prompt": ids, "echo": True, "logprobs": 1,
                                                        "max_tokens": 1, "temperature": 0}, timeout=60).json()
    for choice, row, text in zip(sorted(raw["choices"], key=lambda c: c["index"]), ids, texts, strict=True):
        lp = choice["logprobs"]
        assert choice["text"].startswith(text)
        assert lp["tokens"][:len(row)] == [tok.decode([t]) for t in row]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        want, _ = numpy_token_logprobs(run.model, run.params, row)
        np.testing.assert_allclose(lp["token_logprobs"][1:len(row)], want, atol=1e-4)
        for v, top in zip(lp["token_logprobs"][1:len(row)], lp["top_logprobs"][1:len(row)], strict=True):
            assert len(top) == 1 and max(top.values()) >= v - 1e-6
        assert len(lp["tokens"]) == len(row) + 1  # and the one generated token
    with pytest.raises(openai.BadRequestError, match="not in this model's vocabulary"):
        server.client().completions.create(model="tiny", prompt=[tok.vocab_size], max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="the prompt takes 32 tokens; this server takes at most 31"):
        server.client().completions.create(model="tiny", prompt=[ids[0][0]] * 32, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="echo: this server does not stream"):
        server.client().completions.create(model="tiny", prompt="a", max_tokens=1, echo=True, stream=True)
    root = server.url.removesuffix("/v1")
    tokenized = httpx.post(root + "/tokenize", json={"prompt": texts[0], "add_special_tokens": False}).json()
    assert tokenized["tokens"] == ids[0]
    assert httpx.post(root + "/detokenize", json={"tokens": ids[1]}).json()["prompt"] == texts[1]
    info = httpx.get(root + "/tokenizer_info").json()
    assert info["eos_token"] is None and info["model_max_length"] == run.model.cfg.max_len  # a char tokenizer


def test_concurrent_greedy_requests_equal_llm_sample_each(server, run):
    client = server.client()
    sched = server.app.state.scheduler
    steps, rows = sched.steps, sched.stepped_rows

    def one(i):
        return client.completions.create(model="tiny", prompt=PROMPTS[i % len(PROMPTS)], max_tokens=8 + i % 5,
                                         temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(one, range(12)))
    assert got == [expected(run, PROMPTS[i % len(PROMPTS)], 8 + i % 5) for i in range(12)]
    assert (sched.stepped_rows - rows) / (sched.steps - steps) > 1.5  # they were decoded together


def test_chat_completion_plain_mode_and_streaming(server):
    client = server.client()
    messages = [{"role": "system", "content": "the sun set"}, {"role": "user", "content": "the cat"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and "\n" not in text  # plain mode: an answer is one line
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == text


def test_streamed_completion_equals_the_whole_one(server):
    client = server.client()
    whole = client.completions.create(model="tiny", prompt="and the", max_tokens=15, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt="and the", max_tokens=15, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_sampling_fields_seed_n_stop_logprobs(server):
    client = server.client()
    kw = dict(model="tiny", prompt="the ", max_tokens=12, temperature=0.9, top_p=0.95)
    a = client.completions.create(seed=7, n=3, **kw)
    b = client.completions.create(seed=7, n=3, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 3
    greedy = client.completions.create(model="tiny", prompt="the ", max_tokens=12, temperature=0, logprobs=2)
    lp = greedy.choices[0].logprobs
    assert "".join(lp.tokens) == greedy.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(t) == 2 for t in lp.top_logprobs)
    text = greedy.choices[0].text
    stop = text[3:5]
    cut = client.completions.create(model="tiny", prompt="the ", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, run):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="a", max_tokens="many")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="at most 31"):
        client.completions.create(model="tiny", prompt="the cat " * 10, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="a", max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="a", temperature=-1)
    # Fields the server does not implement are refused by name, not dropped.
    for create, extra in ((client.completions.create, {"best_of": 2}),
                          (client.completions.create, {"presence_penalty": 0.5}),
                          (client.chat.completions.create, {"frequency_penalty": 0.5})):
        prompt = {"prompt": "a"} if create == client.completions.create else {
            "messages": [{"role": "user", "content": "a"}]}
        with pytest.raises(openai.BadRequestError) as e:
            create(model="tiny", max_tokens=2, **prompt, **extra)
        (name,) = extra
        assert e.value.body["message"] == f"{name}: this server does not implement it; leave it out"
        assert e.value.body["param"] == name
    raw = httpx.post(server.url + "/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 2,
                                                        "messages_extra": 1})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "unsupported_parameter"
    raw = httpx.post(server.url + "/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    big = httpx.post(server.url + "/completions", content=b"x" * (2 << 20))
    assert big.status_code == 413 and "error" in big.json()
    assert httpx.get(server.url + "/nothing").json()["error"]["message"]
    r = client.completions.create(model="tiny", prompt="the ", max_tokens=10, temperature=0)
    assert r.choices[0].text == expected(run, "the ", 10)


def test_api_key_and_a_full_queue(run):
    s = LoopbackServer(build_app(run, model_name="tiny", max_batch=1, max_queue=1, api_key="sekrit"))
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        client = s.client("sekrit")
        assert client.models.list().data[0].id == "tiny"

        def one(_):
            try:
                client.completions.create(model="tiny", prompt="the ", max_tokens=25, temperature=0)
                return "ok"
            except openai.RateLimitError:
                return "429"

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        assert "429" in results and "ok" in results
    finally:
        s.close()


def test_a_disconnected_stream_frees_its_slot(server):
    sched = server.app.state.scheduler
    with httpx.stream("POST", server.url + "/completions", json={"model": "tiny", "prompt": "the ", "stream": True,
                                                                 "max_tokens": 64, "temperature": 0.5}) as r:
        next(r.iter_lines())
    for _ in range(100):
        if not sched.busy():
            break
        time.sleep(0.05)
    assert not sched.busy()


@pytest.mark.slow
def test_llm_serve_binds_loopback_and_sigterm_finishes_in_flight_requests(trained):
    import signal
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llm.cli", "serve", "--workdir", str(trained / "run"), "--port",
                             str(port), "--max-batch", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/models").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url, api_key="-", max_retries=0, timeout=60)
        stream = client.completions.create(model="run", prompt="the ", max_tokens=25, temperature=0, stream=True)
        chunks = [next(iter(stream))]
        proc.send_signal(signal.SIGTERM)
        chunks += list(stream)
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        # uvicorn re-raises the SIGTERM once it has shut down gracefully: the exit is the signal's own.
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"http://127.0.0.1:{port}/v1" in proc.stdout.read()
