"""The sampling parameters every way of generating shares: one type behind `llm sample`'s and `llm chat`'s flags,
the config's `sample` section and the explorer's controls; one set of fields, one set of rules (`problem`), one
meaning of "off". The sampling itself is llm/ops/sampling.py.
"""

from __future__ import annotations

import dataclasses
import math

from llm.errors import ConfigError

SEED_BOUND = 2**62  # seeds lie in [-2**62, 2**62): a chat samples answer i with seed + i, which must fit in 64 bits


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to draw tokens: temperature 0 is greedy; top_k 0 or None keeps every token; top_p 1 or None keeps the
    whole distribution (nucleus sampling below 1)."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 200
    seed: int = 0

    def problem(self, field: str) -> str | None:
        """What is wrong with `field`'s value, as the end of a sentence ('must be >= 1, got 0'), or None."""
        value = getattr(self, field)
        if field == "temperature" and not (math.isfinite(value) and value >= 0):
            return f"must be a number >= 0 (0 is greedy), got {value}"
        if field == "top_k" and value is not None and value < 0:
            return f"must be >= 0 (0: off), got {value}"
        if field == "top_p" and value is not None and not 0 < value <= 1:
            return f"must be in (0, 1] (1: off), got {value}"
        if field == "max_new_tokens" and value < 1:
            return f"must be >= 1, got {value}"
        if field == "seed" and not -SEED_BOUND <= value < SEED_BOUND:
            return f"must lie in [-2**62, 2**62), got {value}"
        return None

    def check(self, name=lambda field: field) -> SamplingParams:
        """Self, after checking every field; ConfigError naming the first bad one as `name(field)` (a flag such
        as '--top-k', or a config key such as 'sample.top_k')."""
        for field in dataclasses.fields(self):
            problem = self.problem(field.name)
            if problem:
                raise ConfigError(f"{name(field.name)} {problem}")
        return self

    @property
    def filters(self) -> dict[str, int | float | None]:
        """top_k and top_p with "off" spelt None, as `sample_logits` takes them (one compiled program per setting)."""
        return {"top_k": self.top_k or None, "top_p": None if self.top_p in (None, 1) else self.top_p}
