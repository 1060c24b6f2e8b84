"""Running the API: `build_app` wires a loaded run to an engine, a scheduler and the app; `serve` runs it under
uvicorn until SIGTERM/SIGINT (uvicorn then stops accepting and finishes in-flight requests; the app's lifespan
drains the scheduler)."""

from __future__ import annotations

from fastapi import FastAPI

from llm.runs import LoadedRun
from llm.serving.app import Limits, make_app
from llm.serving.engine import SlotEngine
from llm.serving.scheduler import Scheduler


def build_app(run: LoadedRun, *, model_name: str, max_batch: int = 16, max_queue: int = 64,
              limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    engine = SlotEngine(run.model, run.params, max_batch)
    scheduler = Scheduler(engine, run.tokenizer, max_queue=max_queue)
    app = make_app(run, scheduler, model_name=model_name, limits=limits, api_key=api_key)
    app.state.scheduler = scheduler
    return app


def warm_up(app: FastAPI, run: LoadedRun) -> None:
    """Compile the step, the sampler and the smallest prefill before the first request."""
    import numpy as np

    engine = app.state.scheduler.engine
    logits = engine.prefill(0, np.zeros(1, np.int32))
    n = engine.slots
    engine.choose(logits[None], np.zeros((1, 2), np.uint32), np.zeros(1), np.zeros(1), np.ones(1))
    logits = engine.step(np.zeros(n, np.int32))
    engine.choose(logits, np.zeros((n, 2), np.uint32), np.zeros(n), np.zeros(n), np.ones(n))


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
