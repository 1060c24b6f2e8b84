"""Shared fixtures: a tiny experiment config and a small corpus, so tests share compiled programs."""

from pathlib import Path

import numpy as np
import pytest

from llm.config import get_base_config
from llm.host_memory import keep_freed_host_memory

keep_freed_host_memory()  # as `llm train` does: the suite's many small steps stop page-faulting their buffers

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_corpus(path: Path, n_chars: int = 30_000, seed: int = 0) -> Path:
    """A learnable text: words from a small vocabulary in a Markov-ish order, so loss falls fast."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "its", "bed", "while", "sun", "set"]
    out, w = [], 0
    while sum(len(x) + 1 for x in out) < n_chars:
        w = (w + rng.integers(1, 3)) % len(words)
        out.append(words[w])
    path.write_text(" ".join(out) + "\n")
    return path


def tiny_config(tmp: Path, **overrides):
    """A 2-layer, 32-wide character model on a generated corpus; a few steps take about a second."""
    c = get_base_config()
    c.data.corpus = str(make_corpus(tmp / "corpus.txt"))
    c.data.cache_dir = str(tmp / "cache")
    c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.max_len = 2, 32, 4, 32
    c.train.batch_size = 8
    c.train.steps = 20
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.progress = False
    c.optim.warmup_steps = 5
    c.optim.lr = 3e-3
    c.sample.num_samples = 1
    c.sample.max_new_tokens = 8
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


@pytest.fixture
def tiny(tmp_path):
    return tiny_config(tmp_path)
