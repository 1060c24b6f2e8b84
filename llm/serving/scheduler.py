"""Continuous batching: one decode thread owns a `SlotEngine`; requests wait in a bounded queue, join the running
batch in free slots and leave it at token granularity (design: llm/serving/__init__.py)."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from llm.serving.engine import SlotEngine, request_key
from llm.tokenizers import Tokenizer


class QueueFull(Exception):
    """Too many requests are waiting (HTTP 429)."""


class NotAccepting(Exception):
    """The server is draining or stopped (HTTP 503)."""


@dataclasses.dataclass
class Request:
    """One completion (one choice). `emit(event)` is called from the decode thread with
    ("token", text_delta, token_info) and finally ("done", finish_reason, n_completion_tokens) or
    ("error", message); it must be thread-safe (the front end wraps loop.call_soon_threadsafe)."""

    prompt: np.ndarray
    max_tokens: int
    emit: Callable[[tuple], None]
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()
    cancelled: bool = False
    # the decode thread's own state
    new: list[int] = dataclasses.field(default_factory=list)
    shown: str = ""
    key: np.ndarray | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """`submit(request)` from any thread; `start()`, `drain(timeout)`, `stop()`."""

    def __init__(self, engine: SlotEngine, tokenizer: Tokenizer, *, max_queue: int = 64, prefills_per_step: int = 4):
        self.engine, self.tokenizer = engine, tokenizer
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.prefills_per_step = prefills_per_step
        self.active: dict[int, Request] = {}
        self.accepting = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-serve-decode", daemon=True)
        n = engine.slots
        self._last = np.zeros(n, np.int32)
        self._keys = np.zeros((n, 2), np.uint32)
        self._temperature = np.zeros(n, np.float32)
        self._top_k = np.zeros(n, np.int32)
        self._top_p = np.ones(n, np.float32)
        self.steps = 0  # decode steps run (for tests and the benchmark: how full the batches were)
        self.stepped_rows = 0

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: Request) -> None:
        if not self.accepting or self._stop.is_set():
            raise NotAccepting("the server is shutting down")
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self.waiting.maxsize} requests are already waiting; retry later") from None

    def busy(self) -> bool:
        return bool(self.active) or not self.waiting.empty()

    def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting and wait until every admitted and waiting request is done; True if it emptied."""
        self.accepting = False
        end = None if timeout is None else time.monotonic() + timeout
        while self.busy() and self._thread.is_alive():
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        self.accepting = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # ---- the decode thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._admit()
                if not self.active:
                    continue
                self._step()
            except Exception as e:  # a bug: fail the requests in flight, keep serving the next ones
                for slot, r in list(self.active.items()):
                    r.emit(("error", f"internal error: {type(e).__name__}: {e}"))
                    del self.active[slot]
        for r in self.active.values():
            r.emit(("error", "the server stopped"))

    def _admit(self) -> None:
        admitted = 0
        while admitted < self.prefills_per_step and len(self.active) < self.engine.slots:
            try:  # nothing running: block briefly for work instead of spinning
                r = self.waiting.get(timeout=0.05) if not self.active and not admitted else self.waiting.get_nowait()
            except queue.Empty:
                return
            if r.cancelled:
                continue
            slot = next(s for s in range(self.engine.slots) if s not in self.active)
            logits = self.engine.prefill(slot, r.prompt)
            self._keys[slot] = request_key(r.seed)
            self._temperature[slot], self._top_k[slot], self._top_p[slot] = r.temperature, r.top_k, r.top_p
            self.active[slot] = r
            admitted += 1
            self._take(slot, r, logits[None], single=True)

    def _step(self) -> None:
        logits = self.engine.step(self._last)
        self.steps += 1
        self.stepped_rows += len(self.active)
        self._take(None, None, logits)

    def _take(self, slot, request, logits_NV, *, single: bool = False) -> None:
        """Choose the next token of `slot` (single: from its prefill logits [1, V]) or of every active slot."""
        rows = [slot] if single else sorted(self.active)
        if single:
            idx = np.array([slot])
            tokens, lps, top_lp, top_ids, keys = self.engine.choose(
                logits_NV, self._keys[idx], self._temperature[idx], self._top_k[idx], self._top_p[idx])
            picks = {slot: 0}
        else:
            tokens, lps, top_lp, top_ids, keys = self.engine.choose(
                logits_NV, self._keys, self._temperature, self._top_k, self._top_p)
            picks = {s: s for s in rows}
        for s, i in picks.items():
            r = self.active[s]
            self._keys[s] = keys[i]
            if r.cancelled:
                del self.active[s]
                continue
            info = (int(tokens[i]), float(lps[i]), top_lp[i].tolist(), top_ids[i].tolist())
            reason = self._advance(r, int(tokens[i]), info)
            if reason is not None:
                r.emit(("done", reason, len(r.new)))
                del self.active[s]
            else:
                self._last[s] = tokens[i]

    def _advance(self, r: Request, token: int, info) -> str | None:
        """Take `token` for `r`, emitting its text; the finish reason when `r` is done."""
        if token in r.stop_ids:
            return "stop"
        r.new.append(token)
        text = self.tokenizer.decode(np.asarray(r.new, np.int64))
        for s in r.stop:
            if s in text:
                self._emit_text(r, text[: text.index(s)], info, final=True)
                return "stop"
        done = len(r.new) >= r.max_tokens or len(r.prompt) + len(r.new) >= self.engine.max_len
        if not done:  # hold back a possible start of a stop string, and a character not yet whole
            hold = max((len(s) - 1 for s in r.stop), default=0)
            text = text.rstrip("\ufffd")
            self._emit_text(r, text[: len(text) - hold] if hold else text, info, final=False)
            return None
        self._emit_text(r, text, info, final=True)
        return "length"

    @staticmethod
    def _emit_text(r: Request, text: str, info, *, final: bool) -> None:
        delta = text[len(r.shown):] if len(text) > len(r.shown) and text.startswith(r.shown) else ""
        if delta or info is not None:
            r.emit(("token", delta, info))
        if delta:
            r.shown = text
