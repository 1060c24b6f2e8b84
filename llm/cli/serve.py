"""`llm serve --workdir RUN [--host 127.0.0.1] [--port 8000] [--checkpoint latest|best|STEP] [--max-batch N]
[--api-key KEY]`: an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions) over the run,
with continuous batching (llm/serving/)."""

from __future__ import annotations

import os
from pathlib import Path

from llm.cli.parsing import Parser
from llm.errors import ConfigError


def main(argv: list[str]) -> int:
    p = Parser(prog="llm serve", description="Serve a trained run over an OpenAI-compatible HTTP API.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="decode slots: requests generated together")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get HTTP 429")
    p.add_argument("--max-tokens", type=int, default=1024, help="the most new tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="default: the model's context less one")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--api-key", default=os.environ.get("LLM_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLM_SERVE_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the workdir's name)")
    a = p.parse(argv)
    if a is None:
        return 0
    for name in ("max_batch", "max_queue", "max_tokens", "max_body_bytes"):
        if getattr(a, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not 0 <= a.port < 65536:
        raise ConfigError(f"--port must be in [0, 65535], got {a.port}")
    from llm.runs import load_run
    from llm.serving.app import Limits
    from llm.serving.server import build_app, serve, warm_up

    run = load_run(a.workdir, a.checkpoint)
    name = a.model_name or Path(a.workdir).resolve().name
    limits = Limits(max_tokens=a.max_tokens, max_prompt_tokens=a.max_prompt_tokens, max_body_bytes=a.max_body_bytes)
    app = build_app(run, model_name=name, max_batch=a.max_batch, max_queue=a.max_queue, limits=limits,
                    api_key=a.api_key)
    warm_up(app, run)
    print(f"llm serve: {a.workdir} (step {run.step}) as model {name!r} on http://{a.host}:{a.port}/v1", flush=True)
    serve(app, host=a.host, port=a.port)
    return 0
