"""Runs written by earlier versions still resume and sample.

tests/runs/data/legacy_run is a run made by commit 79fb233 (before the package was reorganised into llm/training,
llm/runs, ...): the config below, stopped after 3 of its 6 steps (`train(config, workdir, stop_after=3)`), with
its checkpoint at step 3, config.json, tokenizer.json, manifest.json and metrics.jsonl as that version wrote them.
Today's code must resume it to the parameters an unbroken run of today's code reaches, and sample from it.

The checkpoint was written on an Intel processor with AMX; CI runs on others (AMD with AVX2 only), whose float
rounding differs in the last bits, and Adam carries such differences on. So the comparison across processors is
within a float tolerance (measured on an AMD EPYC: 1.8e-7 at step 3, 8.7e-7 at step 6), chosen far below what a
resume that went wrong changes: steps 4-6 move the parameters by up to 4e-3, and a lost optimizer state, another
batch or another learning-rate step moves them by about as much. That a resume on one processor continues bit for
bit is tested on runs written by today's code (tests/training/test_train.py, tests/e2e/test_preemption.py).
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_corpus

from llm.cli import main
from llm.config import get_base_config
from llm.runs import load_run
from llm.training import train

LEGACY = Path(__file__).with_name("data") / "legacy_run"
QUIET = dict(log=lambda *_: None)


# Across processors: 20x the largest difference measured, 200x below the update of steps 4-6.
ATOL = 2e-5


def max_difference(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def legacy_config(tmp: Path):
    c = get_base_config()
    c.data.corpus, c.data.cache_dir = str(tmp / "corpus.txt"), str(tmp / "cache")
    c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.max_len = 1, 16, 2, 16
    c.train.steps, c.train.batch_size, c.train.eval_every, c.train.checkpoint_every = 6, 4, 3, 3
    c.train.eval_batches, c.train.progress, c.sample.num_samples = 1, False, 0
    return c


@pytest.mark.slow
def test_a_legacy_run_resumes_and_samples(tmp_path, capsys):
    make_corpus(tmp_path / "corpus.txt")  # the same generated text the legacy run trained on
    shutil.copytree(LEGACY, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    saved["data"]["corpus"], saved["data"]["cache_dir"] = str(tmp_path / "corpus.txt"), str(tmp_path / "cache")
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))

    messages = []
    resumed = train(legacy_config(tmp_path), tmp_path / "run", log=messages.append)
    assert any("resumed from" in m and "at step 3" in m for m in messages), messages
    assert resumed.step == 6
    train(legacy_config(tmp_path), tmp_path / "fresh", **QUIET)
    resumed, fresh = load_run(tmp_path / "run").params, load_run(tmp_path / "fresh").params
    legacy_3, fresh_3 = load_run(LEGACY, "3").params, load_run(tmp_path / "fresh", "3").params
    assert max_difference(legacy_3, fresh_3) < ATOL  # both versions compute the same first steps
    assert max_difference(resumed, fresh) < ATOL  # and the legacy state continues as today's does
    assert max_difference(resumed, legacy_3) > 100 * ATOL  # the tolerance is far below what steps 4-6 do

    assert main(["sample", "--workdir", str(LEGACY), "--prompt", "the", "--max-new-tokens", "4", "--top-k", "0"]) == 0
    assert "--- sample 1 (step 3) ---\nthe" in capsys.readouterr().out
