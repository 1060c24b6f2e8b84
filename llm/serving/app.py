"""The OpenAI-compatible HTTP API over a `Scheduler`: /v1/models, /v1/completions, /v1/chat/completions, with
server-sent events for `stream: true` and OpenAI-style JSON errors (design: llm/serving/__init__.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.config.sampling import SEED_BOUND
from llm.data.records.sft import ChatTemplate
from llm.errors import PromptError
from llm.inference.chat import ChatSession
from llm.inference.logprobs import token_logprobs
from llm.runs import LoadedRun
from llm.serving.engine import TOP_LOGPROBS
from llm.serving.scheduler import NotAccepting, QueueFull, Scheduler
from llm.serving.scheduler import Request as Job


@dataclasses.dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024  # the most new tokens a request may ask for (also caps the default)
    max_prompt_tokens: int | None = None  # None: the model's context less one
    max_body_bytes: int = 1 << 20
    max_n: int = 8
    max_stop: int = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


class _Body(BaseModel):
    # A field the server does not implement is refused by name (a 400), never dropped: a client sending `echo` or
    # `presence_penalty` would otherwise get numbers computed without it.
    model_config = ConfigDict(strict=True, extra="forbid")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's: vLLM's extension, sent as extra_body
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]  # text(s), or token ids (one prompt or a list of them)
    logprobs: int | None = None
    echo: bool = False  # the prompt before the completion, its tokens' log-probabilities too (the first's null)


class TokenizeBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str
    add_special_tokens: bool = False  # this server's tokenizers add none either way (no BOS)


class DetokenizeBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    tokens: list[int]


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


def make_app(run: LoadedRun, scheduler: Scheduler, *, model_name: str, limits: Limits | None = None,
             api_key: str | None = None) -> FastAPI:
    """The app; its lifespan starts the scheduler's thread and, at shutdown, drains and stops it."""
    limits = limits or Limits()
    service = Service(run, scheduler, model_name, limits)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if not scheduler.running():
            scheduler.start()
        yield
        await asyncio.to_thread(scheduler.drain, 30.0)
        scheduler.stop()

    app = FastAPI(title="llm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON", code="invalid_json")
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "extra_forbidden":
            return error_response(400, f"{where}: this server does not implement it; leave it out",
                                  param=where, code="unsupported_parameter")
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else
                              "server_error")

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
            return error_response(413, f"the body is larger than {limits.max_body_bytes} bytes",
                                  code="body_too_large")
        return await call_next(request)

    async def _auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and secrets.compare_digest(given[7:].encode(), api_key.encode())):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")

    auth = [Depends(_auth)]

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{name}", dependencies=auth)
    async def model(name: str):
        if name != model_name:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {model_name!r}",
                           param="model", code="model_not_found")
        return _model_card(model_name, created)

    _add_tokenizer_routes(app, service, auth)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionBody, request: Request):
        return await service.completions(body, request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatBody, request: Request):
        return await service.chat_completions(body, request)

    return app


def _add_tokenizer_routes(app: FastAPI, service: Service, auth) -> None:
    """The tokenizer endpoints lm-evaluation-harness's API models call (tokenizer_backend=remote), at the root."""

    @app.post("/tokenize", dependencies=auth)
    async def tokenize(body: TokenizeBody):
        tokens = [int(t) for t in service.tokenizer.encode(body.prompt)]
        return {"tokens": tokens, "count": len(tokens), "max_model_len": service.max_len}

    @app.post("/detokenize", dependencies=auth)
    async def detokenize(body: DetokenizeBody):
        return {"prompt": service.text(service.check_ids(body.tokens, "tokens"))}

    @app.get("/tokenizer_info", dependencies=auth)
    async def tokenizer_info():
        eos = service.tokenizer.eos_id
        return {"eos_token": None if eos is None else service.token_text(eos), "bos_token": None,
                "pad_token": None, "chat_template": None, "model_max_length": service.max_len}


class Service:
    """What the endpoints do, for one model: check a request, encode its prompt, run its choices through the
    scheduler, and shape the OpenAI responses."""

    def __init__(self, run: LoadedRun, scheduler: Scheduler, model_name: str, limits: Limits):
        self.scheduler, self.model_name, self.limits, self.run = scheduler, model_name, limits, run
        self.tokenizer, self.max_len = run.tokenizer, run.model.cfg.max_len
        self.chat = ChatSession(run, ChatTemplate())
        self.max_prompt = min(limits.max_prompt_tokens or self.max_len - 1, self.max_len - 1)

    def check(self, body: _Body, max_tokens: int | None, default_max: int) -> dict:
        if body.model != self.model_name:
            raise ApiError(404, f"the model {body.model!r} does not exist; this server has {self.model_name!r}",
                           param="model", code="model_not_found")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        problems = [("temperature", not 0 <= temperature <= 2, "must be in [0, 2]"),
                    ("top_p", not 0 < top_p <= 1, "must be in (0, 1]"),
                    ("top_k", body.top_k is not None and body.top_k < 0, "must be >= 0 (0: off)"),
                    ("n", not 1 <= body.n <= self.limits.max_n, f"must be in [1, {self.limits.max_n}]"),
                    ("max_tokens", max_tokens is not None and not 1 <= max_tokens <= self.limits.max_tokens,
                     f"must be in [1, {self.limits.max_tokens}]"),
                    ("stop", len(stop) > self.limits.max_stop or any(not s for s in stop),
                     f"at most {self.limits.max_stop} non-empty strings"),
                    ("seed", body.seed is not None and not -SEED_BOUND <= body.seed < SEED_BOUND,
                     "must lie in [-2**62, 2**62)")]
        for name, bad, rule in problems:
            if bad:
                raise ApiError(400, f"{name} {rule}", param=name)
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        return dict(temperature=float(temperature), top_p=float(top_p), top_k=body.top_k or 0, seed=seed,
                    stop=tuple(stop), max_tokens=min(max_tokens or default_max, self.limits.max_tokens))

    def encode(self, text_or_messages, param: str) -> np.ndarray:
        try:
            if isinstance(text_or_messages, str):
                ids = self.tokenizer.encode(text_or_messages)
            else:
                ids = self.chat.prompt_ids(text_or_messages)
        except PromptError as e:
            raise ApiError(400, str(e), param=param) from None
        except ValueError as e:
            raise ApiError(400, f"the {param} cannot be encoded: {e}", param=param) from None
        return self.check_length(np.asarray(ids, np.int32).reshape(-1), param)

    def check_length(self, ids: np.ndarray, param: str) -> np.ndarray:
        if ids.size == 0:
            raise ApiError(400, f"the {param} is empty: it needs at least one token", param=param)
        if ids.size > self.max_prompt:
            raise ApiError(400, f"the {param} takes {ids.size} tokens; this server takes at most {self.max_prompt} "
                           f"(the model's context is {self.max_len}, one token at least is left to generate)",
                           param=param, code="context_length_exceeded")
        return ids

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        vocab = self.tokenizer.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"{param}: token id {bad[0]} is not in this model's vocabulary [0, {vocab})",
                           param=param)
        return ids

    def prompt_ids(self, prompt) -> list[np.ndarray]:
        """The prompts of a completion request: a text, texts, a token id list or token id lists."""
        if isinstance(prompt, str) or (prompt and all(isinstance(x, int) for x in prompt)):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt: give a string, a non-empty list of strings, or token ids", param="prompt")
        return [self.encode(p, "prompt") if isinstance(p, str) else
                self.check_length(np.asarray(self.check_ids(p, "prompt"), np.int32), "prompt") for p in prompt]

    async def echoed(self, prompts: list[np.ndarray], top: int) -> list[dict]:
        """Each prompt's own logprobs entries (tokens, token_logprobs, top_logprobs; the first token's null)."""
        rows = [p.tolist() for p in prompts]
        scored = await asyncio.to_thread(token_logprobs, self.run.model, self.run.params,
                                         [r for r in rows if len(r) > 1], top=max(top, 1))
        out, k = [], 0
        for row in rows:
            logp, top_lp, top_ids = ([], [], []) if len(row) == 1 else (scored[k][0], scored[k][2], scored[k][3])
            k += len(row) > 1
            out.append({"tokens": [self.token_text(t) for t in row],
                        "token_logprobs": [None, *(float(v) for v in logp)],
                        "top_logprobs": [None, *({self.token_text(int(i)): float(v) for i, v in
                                                  zip(ids[:top], lps[:top])} for ids, lps in zip(top_ids, top_lp))]})
        return out

    async def run_jobs(self, request: Request, prompts: list[np.ndarray], settings: dict, n: int, stop_ids):
        """Submit n choices per prompt; an async iterator of (choice index, event), and the jobs (to cancel)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        stop = settings.pop("stop")
        try:
            for p, ids in enumerate(prompts):
                for i in range(n):
                    index = p * n + i
                    job = Job(ids, emit=lambda ev, index=index: loop.call_soon_threadsafe(events.put_nowait,
                                                                                          (index, ev)),
                              stop_ids=frozenset(stop_ids), stop=stop, **{**settings, "seed": settings["seed"] + i})
                    self.scheduler.submit(job)
                    jobs.append(job)
        except QueueFull as e:
            for job in jobs:
                job.cancel()
            raise ApiError(429, str(e), "rate_limit_error", code="queue_full") from None
        except NotAccepting as e:
            for job in jobs:
                job.cancel()
            raise ApiError(503, str(e), "server_error", code="shutting_down") from None
        return events, jobs

    async def events_of(self, request: Request, events: asyncio.Queue, jobs) -> AsyncIterator[tuple[int, tuple]]:
        left = len(jobs)
        try:
            while left:
                try:
                    index, ev = await asyncio.wait_for(events.get(), 0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if ev[0] == "error":
                    raise ApiError(500, ev[1], "server_error")
                if ev[0] == "done":
                    left -= 1
                yield index, ev
        finally:
            for job in jobs:
                job.cancel()

    async def collect(self, request: Request, events: asyncio.Queue, jobs):
        """A non-streamed response's pieces: each choice's text, finish reason and token infos, and the number of
        completion tokens of them all."""
        texts, finish, logs, done_tokens = [""] * len(jobs), [None] * len(jobs), [[] for _ in jobs], 0
        async for index, ev in self.events_of(request, events, jobs):
            if ev[0] == "token":
                texts[index] += ev[1]
                logs[index].append(ev[2])
            else:
                finish[index], done_tokens = ev[1], done_tokens + ev[2]
        return texts, finish, logs, done_tokens

    def text(self, ids) -> str:
        return self.tokenizer.decode(np.asarray(ids, np.int64))

    def token_text(self, t: int) -> str:
        return self.text([t])

    async def completions(self, body: CompletionBody, request: Request):
        settings = self.check(body, body.max_tokens, 16)
        if body.logprobs is not None and not 0 <= body.logprobs <= TOP_LOGPROBS:
            raise ApiError(400, f"logprobs must be in [0, {TOP_LOGPROBS}]", param="logprobs")
        if body.echo and body.stream:
            raise ApiError(400, "echo: this server does not stream an echoed prompt; set stream to false",
                           param="echo")
        prompts = self.prompt_ids(body.prompt)
        stop_ids = set() if self.tokenizer.eos_id is None else {self.tokenizer.eos_id}
        events, jobs = await self.run_jobs(request, prompts, settings, body.n, stop_ids)
        rid, n_choices = f"cmpl-{uuid.uuid4().hex}", len(jobs)
        usage_prompt = sum(len(p) for p in prompts) * body.n

        def logprob_entry(info):
            t, lp, top_lp, top_ids = info
            return self.token_text(t), lp, {self.token_text(i): v for i, v in zip(top_ids[: body.logprobs], top_lp)}

        def chunk(index, text, finish, lp=None):
            return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                    "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": finish}]}

        if body.stream:
            async def sse():
                async for index, ev in self.events_of(request, events, jobs):
                    if ev[0] == "token":
                        lp = None
                        if body.logprobs is not None:
                            tok, v, top = logprob_entry(ev[2])
                            lp = {"tokens": [tok], "token_logprobs": [v], "top_logprobs": [top], "text_offset": [0]}
                        yield _sse(chunk(index, ev[1], None, lp))
                    else:
                        yield _sse(chunk(index, "", ev[1]))
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")

        texts_out, finish, logs, done_tokens = await self.collect(request, events, jobs)
        echoes = await self.echoed(prompts, body.logprobs or 0) if body.echo and body.logprobs is not None else None
        choices = []
        for i in range(n_choices):
            lp, head = None, self.text(prompts[i // body.n]) if body.echo else ""
            if body.logprobs is not None:
                entries = [logprob_entry(info) for info in logs[i]]
                lp = {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
                      "top_logprobs": [e[2] for e in entries]}
                if echoes is not None:
                    lp = {k: echoes[i // body.n][k] + lp[k] for k in lp}
                lp["text_offset"] = [int(o) for o in np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1]]
            choices.append({"index": i, "text": head + texts_out[i], "logprobs": lp, "finish_reason": finish[i]})
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.model_name,
                "choices": choices, "usage": _usage(usage_prompt, done_tokens)}

    async def chat_completions(self, body: ChatBody, request: Request):
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                    for m in body.messages]
        prompt = self.encode(messages, "messages")
        settings = self.check(body, body.max_completion_tokens or body.max_tokens, self.max_len - len(prompt))
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= TOP_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be in [0, {TOP_LOGPROBS}]", param="top_logprobs")
        if self.chat.mode == "plain":  # as `llm self.chat`: a plain-completion answer ends at a newline
            settings["stop"] = ("\n", *settings["stop"])
        events, jobs = await self.run_jobs(request, [prompt], settings, body.n, self.chat.stop_ids)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        top_n = body.top_logprobs or 0

        def logprob_content(info):
            t, lp, top_lp, top_ids = info
            text, alternatives = self.token_text(t), [(self.token_text(i), v) for i, v in zip(top_ids[:top_n], top_lp)]
            return {"token": text, "logprob": lp, "bytes": list(text.encode()),
                    "top_logprobs": [{"token": a, "logprob": v, "bytes": list(a.encode())} for a, v in alternatives]}

        def chunk(index, delta, finish, lp=None):
            return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model_name,
                    "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        if body.stream:
            async def sse():
                for i in range(len(jobs)):
                    yield _sse(chunk(i, {"role": "assistant", "content": ""}, None))
                async for index, ev in self.events_of(request, events, jobs):
                    if ev[0] == "token":
                        lp = {"content": [logprob_content(ev[2])]} if body.logprobs else None
                        yield _sse(chunk(index, {"content": ev[1]}, None, lp))
                    else:
                        yield _sse(chunk(index, {}, ev[1]))
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")

        texts, finish, logs, done_tokens = await self.collect(request, events, jobs)
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": {"content": [logprob_content(x) for x in logs[i]]} if body.logprobs else None,
                    "finish_reason": finish[i]} for i in range(len(jobs))]
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": self.model_name,
                "choices": choices, "usage": _usage(len(prompt) * body.n, done_tokens)}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llm"}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"
