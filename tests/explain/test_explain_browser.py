"""The explorer page in a real browser (headless Chromium driven by Playwright), its server and `llm explain`.

The browser is Debian's chromium (/usr/bin/chromium, or $LLM_CHROMIUM); Playwright never downloads one. Without
it these tests skip, except where LLM_REQUIRE_BROWSER=1 (CI, see .ci/run): there they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from llm.explain.page import embed_json, render_html
from llm.explain.server import DEFAULT_PROMPT, make_server

# ---------------------------------------------------------------------------------------------------------------
# Synthetic data (llm/explain/SCHEMA.md) with known numbers.


def _causal_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = np.where(mask == 1, scores, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def synthetic_data(T=6, L=2, H=2, *, words=None, seed=0, window=None, position="learned",
                   weights_source="recomputed") -> dict:
    """A data dict as explain_data returns it, for T tokens and L x H heads (random, deterministic numbers)."""
    rng = np.random.default_rng(seed)
    words = list(words) if words is not None else [f"w{i}" for i in range(T)]
    T = len(words)
    tokens = [{"id": 100 + i, "text": w, "bytes": list(w.encode()), "partial": False} for i, w in enumerate(words)]
    if T >= 3 and words is not None and words[2] == "\ufffd":
        tokens[2].update(bytes=[0xE2, 0x82], partial=True)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    ok = j <= i
    if window is not None:
        ok &= i - j < window
    mask = ok.astype(int)
    weights = _causal_softmax(rng.normal(0, 2, (L, H, T, T)), mask)
    weights = np.where(mask == 1, weights, 0.0)
    entropy = -(np.where(weights > 0, weights * np.log(np.where(weights > 0, weights, 1)), 0)).sum(-1).mean(-1)
    vocab_ids = list(range(90, 90 + 40)) + [t["id"] for t in tokens]
    vocab_ids = sorted(set(vocab_ids))
    labels = {t["id"]: t["text"] for t in tokens}
    points = rng.normal(0, 1, (len(vocab_ids), 2))
    neighbors = {}
    for t in tokens:
        others = [v for v in vocab_ids if v != t["id"]][:8]
        neighbors[str(t["id"])] = [[v, round(0.9 - 0.05 * n, 6)] for n, v in enumerate(others)]
    pos = rng.normal(0, 1, (T, 8))
    pos /= np.linalg.norm(pos, axis=-1, keepdims=True)
    logits = np.round(rng.normal(0, 2, 12), 4)
    order = np.argsort(-logits)
    return {
        "model": {"workdir": "runs/synthetic", "step": 123, "n_layers": L, "n_heads": H, "kv_heads": H,
                  "d_model": 32, "max_len": 64, "vocab_size": 256, "position": position, "window": window,
                  "attention_impl": "flash" if weights_source == "recomputed" else "reference", "tokenizer": "char",
                  "weights_source": weights_source,
                  "note": "The weights were recomputed with the reference softmax (synthetic)."},
        "prompt": " ".join(words),
        "tokens": tokens,
        "tokenizers": {"byte": [{"id": b, "text": chr(b)} for b in " ".join(words).encode()][:40],
                       "char": [{"id": n, "text": c} for n, c in enumerate(" ".join(words))],
                       "bpe": [{"id": 300 + n, "text": w} for n, w in enumerate(words)]},
        "embeddings": {"method": "pca", "explained": [0.31, 0.12], "ids": vocab_ids,
                       "labels": [labels.get(v, f"t{v}") for v in vocab_ids], "points": points.tolist(),
                       "neighbors": neighbors},
        "positions": ({"kind": position, "similarity": (pos @ pos.T).tolist()} if position in ("learned", "sinusoidal")
                      else {"kind": None, "similarity": None}),
        "attention": {"layers": L, "heads": H, "weights": weights.tolist(), "entropy": entropy.tolist(),
                      "mask": mask.tolist()},
        "prediction": {"top": [{"id": int(200 + k), "text": f"n{k}", "logit": float(logits[k])} for k in order]},
    }


def softmax(logits, temperature=1.0):
    x = np.asarray(logits, np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def nucleus(logits, temperature, top_k, top_p):
    """llm.ops.sampling's order: softmax(logits / T), top-k, then the smallest set with mass >= top_p; renormalised."""
    x = np.sort(np.asarray(logits, np.float64))[::-1] / temperature
    if top_k:
        x = x[x >= x[top_k - 1]]
    p = softmax(x)
    before = np.cumsum(p) - p
    x = x[x >= x[before < top_p].min()]
    return softmax(x)


# ---------------------------------------------------------------------------------------------------------------
# Tests without a browser.


def test_embedded_json_cannot_close_the_script():
    data = synthetic_data(words=["a", "</script><script>alert(1)</script>", "<!--", "&amp;", "\u2028"])
    html = render_html(data)
    body = html.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(body) == data
    assert "</script" not in embed_json("</script>") and "<!--" not in embed_json("<!--")
    assert json.loads(embed_json({"x": float("nan"), "y": [float("inf")]})) == {"x": None, "y": [None]}


def test_page_is_self_contained():
    html = render_html(synthetic_data())
    assert not re.search(r"""(src|href)\s*=""", html, re.IGNORECASE)
    assert not re.search(r"@import|url\(", html)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


def _start(**kwargs):
    server = make_server(None, "127.0.0.1", 0, quiet=True, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def _stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(5)


class NotAPrompt(ValueError):
    pass


def words_explain_fn(run, prompt: str) -> dict:
    """The injected data function: one token per word; "bad" is a prompt the model rejects."""
    if "bad" in prompt.split():
        raise NotAPrompt("the prompt contains 'bad', which this model cannot take")
    return synthetic_data(words=prompt.split() or ["\n"], seed=len(prompt))


def _request(url, *, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_server_api_and_limits():
    server, thread = _start(explain_fn=words_explain_fn, max_prompt_chars=40)
    try:
        port = server.server_address[1]
        assert port != 0 and server.url == f"http://127.0.0.1:{port}/"
        api = server.url + "api/explain"
        post = lambda body, ctype="application/json": _request(
            api, data=body if isinstance(body, bytes) else json.dumps(body).encode(), headers={"Content-Type": ctype})
        status, ctype, body = post({"prompt": "one two three"})
        assert status == 200 and ctype.startswith("application/json")
        assert [t["text"] for t in json.loads(body)["tokens"]] == ["one", "two", "three"]
        for bad, needle in [({"prompt": "x" * 41}, "at most 40"), ({"prompt": ""}, "empty"), ({"prompt": 3}, "string"),
                            ({"text": "a"}, "prompt"), (b"{not json", "not JSON"), ({"prompt": "a bad one"}, "bad")]:
            status, ctype, body = post(bad)
            assert status == 400 and ctype.startswith("application/json"), (bad, status)
            assert needle in json.loads(body)["error"], (bad, body)
        assert post({"prompt": "a"}, "text/plain")[0] == 415
        assert post(b"x" * 100_000)[0] == 400
        status, ctype, body = _request(server.url)
        assert status == 200 and ctype.startswith("text/html")
        assert f'"prompt":"{DEFAULT_PROMPT}"' in body.decode()
        assert _request(server.url + "?prompt=" + "y" * 41)[0] == 200  # the page shows the error
        assert _request(server.url + "nothing")[0] == 404
        assert _request(server.url, headers={"Host": "evil.example:80"})[0] == 403
    finally:
        _stop(server, thread)


@pytest.mark.slow
def test_llm_explain_serve_on_a_trained_run(trained):
    """The real command, as a user starts it: `llm explain --serve` on a trained run answers the page and the API
    with that run's data, and stops on SIGINT."""
    import signal
    import subprocess
    import sys

    # Started as from a terminal: a shell starts background jobs with SIGINT ignored and children inherit that (then
    # Python installs no KeyboardInterrupt handler and Ctrl-C does nothing), so the launcher restores it.
    launcher = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "runpy.run_module('llm.cli', run_name='__main__', alter_sys=True)")
    command = [sys.executable, "-c", launcher, "explain", "--workdir", str(trained / "run"), "--serve", "--port",
               "0", "--prompt", "the cat", "--temperature", "0.5"]
    # PYTHONFAULTHANDLER: should the server not stop, SIGABRT makes it print every thread's stack (below).
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"})
    try:
        lines = [proc.stdout.readline()]
        while lines[-1] and "serving on" not in lines[-1]:  # until the URL (or the end of the output)
            lines.append(proc.stdout.readline())
        line = lines[-1]
        assert "serving on http://127.0.0.1:" in line, "".join(lines)
        url = line.split("serving on ", 1)[1].split()[0]
        status, _, body = _request(url)
        assert status == 200 and '"prompt":"the cat"' in body.decode() and '"temperature":0.5' in body.decode()
        status, _, body = _request(url + "api/explain", data=json.dumps({"prompt": "a mat"}).encode(),
                                       headers={"Content-Type": "application/json"})
        data = json.loads(body)
        assert status == 200 and data["model"]["step"] == 6 and [t["text"] for t in data["tokens"]] == list("a mat")
        assert len(data["attention"]["weights"]) == 1  # the run's one layer
    finally:
        proc.send_signal(signal.SIGINT)
        # communicate() drains the pipe: a server blocked writing its log to a full pipe could never exit.
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, _ = proc.communicate(timeout=60)
            raise AssertionError(f"llm explain --serve did not stop on SIGINT; its threads:\n{out[-6000:]}") from None
        assert proc.returncode == 0, out[-3000:]


def test_cli_flag_mistakes(tmp_path):
    from llm.cli.explain import main as explain_main
    from llm.errors import UserError

    assert explain_main(["--help"]) == 0
    for argv, needle in [([], "--workdir"), (["--workdir", "w", "--serve", "--out", "x.html"], "--serve"),
                         (["--workdir", "w", "--port", "9"], "--serve only"),
                         (["--workdir", "w", "--serve", "--port", "70000"], "0..65535"),
                         (["--workdir", "w", "--prompt", ""], "empty"),
                         (["--workdir", "w", "--out", str(tmp_path / "no" / "x.html")], "does not exist"),
                         (["--workdir", "w", "--out", str(tmp_path)], "directory")]:
        with pytest.raises(UserError, match=re.escape(needle)):
            explain_main(argv)


def test_cli_writes_the_page_and_pngs(tmp_path, monkeypatch):
    import llm.explain.data
    import llm.explain.figures
    import llm.inference
    from llm.cli.explain import main as explain_main
    from llm.explain.data import EXPLAIN_SAMPLING

    calls = []
    monkeypatch.setattr(llm.inference, "load_for_prompts", lambda workdir, checkpoint, prompts: ("RUN", workdir))
    monkeypatch.setattr(llm.explain.data, "explain_data",
                        lambda run, prompt, **kw: calls.append((run, prompt, kw)) or synthetic_data(T=3))
    monkeypatch.setattr(llm.explain.figures, "write_pngs",
                        lambda data, out: (Path(out) / "tokens.png").write_bytes(b"png") and None)
    out = tmp_path / "e.html"
    assert explain_main(["--workdir", "runs/x", "--prompt", "hello", "--out", str(out), "--png",
                         str(tmp_path / "png")]) == 0
    assert calls == [(("RUN", "runs/x"), "hello", {"workdir": "runs/x", "sampling": EXPLAIN_SAMPLING})]
    assert explain_main(["--workdir", "runs/x", "--prompt", "hi", "--out", str(out), "--top-k", "5"]) == 0
    assert calls[-1][2]["sampling"].top_k == 5
    assert '"workdir":"runs/synthetic"' in out.read_text() and (tmp_path / "png" / "tokens.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# The browser.


def _chromium() -> str | None:
    for path in (os.environ.get("LLM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if path and os.path.exists(path):
            return path
    return None


def _no_browser(reason: str):
    if os.environ.get("LLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LLM_REQUIRE_BROWSER=1: the browser tests must run here; .ci/run installs Debian's "
                    "chromium with apt-get and playwright with the test extra)", pytrace=False)
    pytest.skip(f"{reason}; set LLM_REQUIRE_BROWSER=1 to make this a failure")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("the playwright package is not installed (pip install -e '.[test]')")
    path = _chromium()
    if path is None:
        _no_browser("no Chromium at /usr/bin/chromium (apt-get install chromium), nor $LLM_CHROMIUM")
    # --no-sandbox: Chromium refuses to run as root with its sandbox, and containers (CI) often lack the user
    # namespaces it needs otherwise; the pages opened here are the tests' own.
    args = ["--no-sandbox"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=args)
        yield b
        b.close()


class Page:
    """A browser page that records console errors and refuses every request off this machine."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.errors, self.external = [], []
        self.context.route(re.compile(r"^(?!file:|http://127\.0\.0\.1[:/]|data:|about:).*"), self._block)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _block(self, route):
        self.external.append(route.request.url)
        route.abort()

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.close()


def _weights(pg, selector="#tokens .token"):
    return [None if w is None else float(w) for w in pg.eval_on_selector_all(
        selector, "els => els.map(e => e.getAttribute('data-weight'))")]


def _set_range(pg, selector, value):
    pg.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                        str(value))


def _bars(pg):
    return pg.eval_on_selector_all("#prediction .bar", "els => els.map(e => [Number(e.dataset.id), "
                                                       "Number(e.dataset.prob)])")


def test_page_in_the_browser(page, tmp_path):
    T, L, H = 6, 2, 3
    data = synthetic_data(words=["a", "</script>", "\ufffd", "b c", "\n", "d"], L=L, H=H, window=3)
    assert len(data["tokens"]) == T
    path = tmp_path / "explain.html"
    path.write_text(render_html(data), encoding="utf-8")
    pg = page.page
    pg.goto(path.as_uri())
    pg.wait_for_selector("body[data-rendered='1']")

    # Header, tokens, tokenizers, the partial token's bytes.
    assert pg.inner_text("#model .fact[data-key=step]").endswith("123")
    assert pg.is_visible("#model-note") and "recomputed" in pg.inner_text("#model-note")
    assert pg.locator("#tokens .token").count() == T
    assert pg.get_attribute("#tokens .token[data-index='1']", "data-id") == "101"
    assert "</script>" in pg.inner_text("#tokens .token[data-index='1']")
    assert "e2 82" in pg.inner_text("#tokens .token[data-index='2']")
    assert pg.locator("#tokenizers .tokenizer[data-name=bpe] .piece").count() == T
    assert pg.is_hidden("#prompt-form")

    # Attention: L x H small maps with their entropy; click one to enlarge it.
    assert pg.locator(".head-map").count() == L * H
    ent = data["attention"]["entropy"][1][2]
    assert pg.inner_text(".head-map[data-layer='1'][data-head='2'] .entropy") == f"H={ent:.2f}"
    pg.click(".head-map[data-layer='1'][data-head='2']")
    assert pg.get_attribute("#enlarged", "data-layer") == "1" and pg.get_attribute("#enlarged", "data-head") == "2"
    assert pg.locator(".head-map.selected").count() == 1
    assert pg.locator("#enlarged .row-label").count() == T and pg.locator("#enlarged .col-label").count() == T
    size = pg.eval_on_selector("#enlarged-map", "c => [c.width, c.height]")
    assert size[0] == size[1] and size[0] >= T * 20

    # Hover a token: the strip shows its row of the enlarged head's weights; masked keys are marked.
    weights = data["attention"]["weights"]
    mask = data["attention"]["mask"]
    pg.hover("#tokens .token[data-index='4']")
    assert pg.get_attribute("#tokens", "data-query") == "4" and pg.get_attribute("#enlarged", "data-query") == "4"
    assert _weights(pg) == pytest.approx(weights[1][2][4], abs=1e-12)
    masked = pg.eval_on_selector_all("#tokens .token", "els => els.map(e => e.dataset.masked)")
    assert masked == ["0" if m else "1" for m in mask[4]] and masked[0] == "1" and masked[5] == "1"  # window 3
    # ... and a row label of the enlarged map, and a cell of its canvas.
    pg.hover("#enlarged .row-label[data-index='3']")
    assert _weights(pg) == pytest.approx(weights[1][2][3], abs=1e-12)
    assert _weights(pg, "#enlarged .col-label") == pytest.approx(weights[1][2][3], abs=1e-12)
    box = pg.locator("#enlarged-map").bounding_box()
    pg.mouse.move(box["x"] + box["width"] * 4.5 / T, box["y"] + box["height"] * 5.5 / T)
    assert pg.get_attribute("#enlarged", "data-query") == "5"
    assert "masked" not in pg.inner_text("#enlarged-readout")
    pg.mouse.move(box["x"] + box["width"] * 5.5 / T, box["y"] + box["height"] * 0.5 / T)
    assert "masked" in pg.inner_text("#enlarged-readout")
    # Another head: the hovered row follows it.
    pg.click(".head-map[data-layer='0'][data-head='1']")
    pg.hover("#tokens .token[data-index='2']")
    assert _weights(pg) == pytest.approx(weights[0][1][2], abs=1e-12)

    # The prediction: temperature, top-k, top-p re-rank and renormalise.
    logits = [t["logit"] for t in data["prediction"]["top"]]
    best = data["prediction"]["top"][0]["id"]
    bars = _bars(pg)
    assert len(bars) == len(logits) and bars[0][0] == best
    assert bars[0][1] == pytest.approx(softmax(logits).max(), rel=1e-9)
    assert sum(p for _, p in bars) == pytest.approx(1, abs=1e-9)
    for temperature in (0.5, 2.0):
        _set_range(pg, "#temperature", temperature)
        assert _bars(pg)[0][1] == pytest.approx(softmax(logits, temperature).max(), rel=1e-9)
        assert [p for _, p in _bars(pg)] == pytest.approx(np.sort(softmax(logits, temperature))[::-1], rel=1e-9)
    assert pg.inner_text("#temperature-value") == "2.00"
    _set_range(pg, "#top-k", 1)
    assert _bars(pg) == [[best, 1.0]]
    _set_range(pg, "#top-k", 3)
    assert [p for _, p in _bars(pg)] == pytest.approx(nucleus(logits, 2.0, 3, 1.0), rel=1e-9)
    _set_range(pg, "#top-k", 0)
    _set_range(pg, "#top-p", 0.6)
    expected = nucleus(logits, 2.0, 0, 0.6)
    assert 1 < len(expected) < len(logits)
    assert [p for _, p in _bars(pg)] == pytest.approx(expected, rel=1e-9)
    _set_range(pg, "#top-p", 1)
    _set_range(pg, "#temperature", 0)
    assert _bars(pg) == [[best, 1.0]]
    _set_range(pg, "#temperature", 1)

    # Embeddings: click a prompt token or a point -> its neighbours; the positions' heat-map.
    pg.click("#tokens .token[data-index='3']")
    assert pg.get_attribute("#neighbors", "data-for") == "103"
    ids = [int(x) for x in pg.eval_on_selector_all("#neighbors .neighbor", "els => els.map(e => e.dataset.id)")]
    assert ids == [n for n, _ in data["embeddings"]["neighbors"]["103"]]
    assert pg.locator("#embedding-plot .point").count() == len(data["embeddings"]["ids"])
    assert pg.locator("#embedding-plot .point.neighbor").count() == 8
    pg.click("#embedding-plot .point[data-id='105']", force=True)
    assert pg.get_attribute("#neighbors", "data-for") == "105"
    assert pg.get_attribute("#embedding-plot .point.selected", "data-id") == "105"
    assert pg.is_visible("#positions-map") and pg.get_attribute("#positions-map", "data-kind") == "learned"

    pg.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
    assert (tmp_path / "explain.png").stat().st_size > 10_000
    assert page.errors == [] and page.external == []


def test_page_without_position_vectors_and_with_captured_weights(page, tmp_path):
    data = synthetic_data(T=4, L=1, H=1, position="rope", weights_source="captured")
    path = tmp_path / "p.html"
    path.write_text(render_html(data), encoding="utf-8")
    page.page.goto(path.as_uri())
    page.page.wait_for_selector("body[data-rendered='1']")
    assert page.page.is_hidden("#model-note") and page.page.is_hidden("#positions-map")
    assert "rope" in page.page.inner_text("#positions-caption")
    assert page.errors == []


def test_served_page(page, tmp_path):
    server, thread = _start(explain_fn=words_explain_fn, max_prompt_chars=40)
    try:
        pg = page.page
        pg.goto(server.url)
        pg.wait_for_selector("body[data-rendered='1']")
        assert pg.is_visible("#prompt-form") and pg.input_value("#prompt-input") == DEFAULT_PROMPT
        assert pg.locator("#tokens .token").count() == len(DEFAULT_PROMPT.split())

        pg.fill("#prompt-input", "one two three four five six seven")
        pg.click("#explain-button")
        pg.wait_for_selector("body[data-rendered='2']")
        texts = pg.eval_on_selector_all("#tokens .token .token-text", "els => els.map(e => e.textContent)")
        assert texts == ["one", "two", "three", "four", "five", "six", "seven"]
        assert pg.locator(".head-map").count() == 4 and pg.is_hidden("#error")
        pg.hover("#tokens .token[data-index='6']")
        expected = words_explain_fn(None, "one two three four five six seven")["attention"]["weights"][0][0][6]
        assert _weights(pg) == pytest.approx(expected, abs=1e-12)

        pg.fill("#prompt-input", "x" * 41)
        pg.click("#explain-button")
        pg.wait_for_selector("#error:not([hidden])")
        assert "at most 40" in pg.inner_text("#error")
        assert pg.locator("#tokens .token").count() == 7  # the last good prompt stays

        pg.fill("#prompt-input", "a bad one")
        pg.press("#prompt-input", "Control+Enter")
        pg.wait_for_function("document.querySelector('#error').textContent.includes('cannot take')")

        pg.fill("#prompt-input", "all good")
        pg.click("#explain-button")
        pg.wait_for_selector("body[data-rendered='3']")
        assert pg.is_hidden("#error") and pg.locator("#tokens .token").count() == 2
        pg.screenshot(path=str(tmp_path / "served.png"), full_page=True)
        assert [e for e in page.errors if "400" not in e] == []  # the browser logs the 400 answers
        assert page.external == []
    finally:
        _stop(server, thread)


def test_served_page_when_the_default_prompt_fails(page):
    def explain_fn(run, prompt):
        if prompt == DEFAULT_PROMPT:
            raise NotAPrompt("the default prompt has characters this tokenizer lacks")
        return words_explain_fn(run, prompt)

    server, thread = _start(explain_fn=explain_fn)
    try:
        pg = page.page
        pg.goto(server.url)
        pg.wait_for_selector("#error:not([hidden])")
        assert "lacks" in pg.inner_text("#error") and pg.is_hidden("#content")
        pg.fill("#prompt-input", "hello there")
        pg.click("#explain-button")
        pg.wait_for_selector("body[data-rendered='1']")
        assert pg.is_visible("#content") and pg.locator("#tokens .token").count() == 2 and pg.is_hidden("#error")
        assert page.errors == []
    finally:
        _stop(server, thread)


def test_page_of_a_real_model(page, tmp_path):
    """explain_data of a tiny (untrained) model, sliding window and a multi-byte prompt: the page draws it all."""
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from ml_collections import ConfigDict

    from llm.explain.data import explain_data
    from llm.model import ModelConfig, Transformer
    from llm.runs import LoadedRun
    from llm.tokenizers import ByteTokenizer

    tok = ByteTokenizer()
    cfg = ModelConfig(max_len=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, window=4, position="learned",
                      vocab_size=tok.vocab_size, attention_impl="reference")
    model = Transformer(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
    data = explain_data(LoadedRun(ConfigDict(), model, params, tok, 7), "héllo €!")
    T = len(data["tokens"])
    assert any(t["partial"] for t in data["tokens"])
    path = tmp_path / "real.html"
    path.write_text(render_html(data), encoding="utf-8")
    pg = page.page
    pg.goto(path.as_uri())
    pg.wait_for_selector("body[data-rendered='1']")
    assert pg.locator("#tokens .token.partial").count() == sum(t["partial"] for t in data["tokens"])
    assert pg.locator(".head-map").count() == 8
    pg.hover(f"#tokens .token[data-index='{T - 1}']")
    w = _weights(pg)
    assert w == pytest.approx(data["attention"]["weights"][0][0][T - 1], abs=1e-12)
    assert math.isclose(sum(w), 1, abs_tol=1e-3)
    assert pg.eval_on_selector_all("#tokens .token", "els => els.filter(e => e.dataset.masked === '1').length") \
        == T - 4  # window 4
    assert len(_bars(pg)) == len(data["prediction"]["top"])
    pg.screenshot(path=str(tmp_path / "real.png"), full_page=True)
    assert page.errors == [] and page.external == []
