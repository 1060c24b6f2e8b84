"""`llm explain --serve`: the explorer page on a local web server, with a prompt box.

    GET  /                   the page for the default prompt (or for ?prompt=TEXT)
    POST /api/explain        {"prompt": TEXT} -> the explain data (llm/explain/SCHEMA.md) as JSON;
                             400 {"error": "..."} for a missing, empty, too long or unusable prompt

The server binds to 127.0.0.1 unless told otherwise; it runs the model for every request (one at a time) and
answers only requests whose Host is this machine when bound to a loopback address (a web page elsewhere cannot
drive it through DNS rebinding), and API calls only with a JSON content type (no cross-site form posts).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from llm.explain.page import render_html, to_json

DEFAULT_PROMPT = "The meaning of life is"
API_PATH = "/api/explain"


class BadPrompt(ValueError):
    """A request the page should show as an error (HTTP 400)."""


def _default_explain_fn(run, prompt: str) -> dict:
    from llm.explain.data import explain_data  # lazily: it needs jax and the model

    return explain_data(run, prompt)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ExplainServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the run, the data function and the limits; see `make_server`."""

    daemon_threads = True

    def __init__(self, address, handler, *, run, explain_fn, max_prompt_chars: int, default_prompt: str,
                 quiet: bool):
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self.run = run
        self.explain_fn = explain_fn
        self.max_prompt_chars = max_prompt_chars
        self.default_prompt = default_prompt
        self.quiet = quiet
        self.loopback = _is_loopback(host)
        self.lock = threading.Lock()  # one model computation at a time
        self._default_page = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def check_prompt(self, prompt) -> str:
        if not isinstance(prompt, str):
            raise BadPrompt(f"the prompt must be a string, not {type(prompt).__name__}")
        if not prompt:
            raise BadPrompt("the prompt is empty; type some text")
        if len(prompt) > self.max_prompt_chars:
            raise BadPrompt(f"the prompt has {len(prompt)} characters; this server takes at most "
                            f"{self.max_prompt_chars} (llm explain --serve ... max_prompt_chars)")
        if "\x00" in prompt:
            raise BadPrompt("the prompt contains a NUL character")
        return prompt

    def explain(self, prompt) -> dict:
        """The data for a prompt; BadPrompt for a prompt the user must change."""
        prompt = self.check_prompt(prompt)
        with self.lock:
            try:
                return self.explain_fn(self.run, prompt)
            except ValueError as e:  # PromptError, DataError, ConfigError: one-line user-facing messages
                raise BadPrompt(" ".join(str(e).split())[:500] or type(e).__name__) from None

    def page(self, prompt: str | None) -> str:
        api = API_PATH
        if prompt is None:
            with self.lock:
                cached = self._default_page
            if cached is not None:
                return cached
        try:
            data = self.explain(self.default_prompt if prompt is None else prompt)
        except BadPrompt as e:
            return render_html(None, api=api, error=str(e), max_prompt_chars=self.max_prompt_chars)
        html = render_html(data, api=api, max_prompt_chars=self.max_prompt_chars)
        if prompt is None:
            with self.lock:
                self._default_page = html
        return html


class Handler(BaseHTTPRequestHandler):
    server: ExplainServer
    server_version = "llm-explain"
    max_body = 64 * 1024

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, to_json(value).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        return host == "localhost" or _is_loopback(host)

    def _guard(self) -> bool:
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "this server answers requests to localhost only")
            return False
        return True

    def do_GET(self):
        if not self._guard():
            return
        url = urlsplit(self.path)
        if url.path != "/":
            self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}; open /")
            return
        prompts = parse_qs(url.query, keep_blank_values=True).get("prompt")
        try:
            html = self.server.page(prompts[-1] if prompts else None)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error; see the server's log\n",
                       "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, html.encode("utf-8"), "text/html; charset=utf-8")

    do_HEAD = do_GET

    def do_POST(self):
        if not self._guard():
            return
        if urlsplit(self.path).path != API_PATH:
            self._error(HTTPStatus.NOT_FOUND, f"no API {self.path}; POST {API_PATH}")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 'send JSON: Content-Type application/json, {"prompt": ...}')
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return
        limit = min(self.max_body, 4 * self.server.max_prompt_chars + 1024)
        if length < 0 or length > limit:
            self.close_connection = True  # the body is not read
            self._error(HTTPStatus.BAD_REQUEST, f"the request has {length} bytes; at most {limit} (the prompt may "
                                                f"have at most {self.server.max_prompt_chars} characters)")
            return
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._error(HTTPStatus.BAD_REQUEST, 'the request is not JSON; send {"prompt": "..."}')
            return
        if not isinstance(body, dict) or "prompt" not in body:
            self._error(HTTPStatus.BAD_REQUEST, 'send {"prompt": "..."}')
            return
        try:
            data = self.server.explain(body["prompt"])
        except BadPrompt as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
            return
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(e).__name__}); see the server's log")
            return
        self._json(HTTPStatus.OK, data)


def make_server(run, host: str = "127.0.0.1", port: int = 8000, *, max_prompt_chars: int = 512,
                explain_fn: Callable[[object, str], dict] | None = None, default_prompt: str = DEFAULT_PROMPT,
                quiet: bool = False) -> ExplainServer:
    """A bound, not yet serving server (call serve_forever(), then shutdown() and server_close()).

    port 0 picks a free port (see `server.server_address` / `server.url`). explain_fn(run, prompt) -> data
    defaults to llm.explain.data.explain_data; its ValueErrors (PromptError, ...) become HTTP 400 messages.
    """
    if max_prompt_chars < 1:
        raise ValueError(f"max_prompt_chars must be >= 1, got {max_prompt_chars}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return ExplainServer((host, port), Handler, run=run, explain_fn=explain_fn or _default_explain_fn,
                         max_prompt_chars=max_prompt_chars, default_prompt=default_prompt, quiet=quiet)


def serve(run, host: str = "127.0.0.1", port: int = 8000, max_prompt_chars: int = 512, *,
          default_prompt: str = DEFAULT_PROMPT, explain_fn=None) -> None:
    """Serve the explorer until interrupted (Ctrl-C); prints the URL."""
    run_server(make_server(run, host, port, max_prompt_chars=max_prompt_chars, explain_fn=explain_fn,
                           default_prompt=default_prompt))


def run_server(server: ExplainServer) -> None:
    """Print the server's URL and serve until interrupted (Ctrl-C); the socket is closed after."""
    print(f"llm explain: serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("llm explain: stopped", file=sys.stderr)
    finally:
        server.server_close()
