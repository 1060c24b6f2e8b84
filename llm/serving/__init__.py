"""Serving a trained run: an OpenAI-compatible HTTP API (`llm serve`) over a continuously batched decoder.

Design
------
Three layers, each in its own module:

1. `engine.SlotEngine` — the model's side. A decode batch of N *slots*: the KV cache (and every other 'cache'
   variable: recurrent mixer states, short-conv histories) of N independent one-row caches stacked on a leading
   slot axis, each with its OWN scalar write index. The model is untouched: a request is prefilled alone with
   `llm chat`'s bucketed prefill program (right padding, index set back to the prompt's length) and its one-row
   cache is copied over the slot's row (a slot reset: nothing of the previous request survives, so no segment-id
   bookkeeping is needed to hide stale slots); a decode step vmaps the model's one-token decode over the slots, so
   each row writes at its own slot, attends with its own query offset and is fed its own position (JAX turns
   the per-row dynamic_update_slice into a scatter). `llm sample`'s single-index path is not changed at all.
   Two step programs per model (the step, the sampler) plus one prefill per prompt bucket: no recompiles as
   requests come and go.
2. `scheduler.Scheduler` — one decode thread owns the engine. Requests wait in a bounded queue (full: the front
   end answers 429; draining or stopped: 503). Each turn of the loop admits waiting requests into free slots
   (a few prefills per turn, so prefill is interleaved with decoding and running requests keep streaming), then
   runs one decode step for all slots and hands each active request its token. A request leaves its slot at
   token granularity: at a stop token, a stop string, max_tokens, a full context, or when it is cancelled (its
   client went away). Greedy rows are argmax of the same logits as `llm sample`'s (tests/serving/test_serve.py checks
   equality alone and batched); a sampled row draws with its own key, split per token as `stream_generate` does,
   so a seed gives the same text whatever else is in the batch.
   Results go back to the asyncio side through `loop.call_soon_threadsafe` onto a per-request asyncio queue.
3. `app.make_app` — FastAPI: /v1/models, /v1/completions, /v1/chat/completions (the run's chat template, or
   plain-completion mode as `llm chat` does), server-sent events for `stream: true`, OpenAI-style JSON errors for
   every bad request (4xx; the server never stops on one), an optional bearer key, limits on body size, prompt
   length and max_tokens. `llm serve` (llm/cli/serve.py) runs it under uvicorn on 127.0.0.1 unless told
   otherwise; SIGTERM makes uvicorn stop accepting, finish in-flight requests, then the scheduler drains and
   stops.
"""
