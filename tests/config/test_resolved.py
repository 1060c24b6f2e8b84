"""The resolved run (llm/config/resolved.py): a fine-tune's source merged before any check, the data spec, the
sequence length and the mesh resolved once, and what every job reads."""

import subprocess
import sys

import pytest
from conftest import cpu_devices_env, tiny_config

from llm.config import resolve
from llm.errors import ConfigError
from llm.training import train

QUIET = dict(log=lambda *_: None)


def test_resolving_copies_merges_and_reads_the_data(tmp_path):
    config = tiny_config(tmp_path, **{"train.seq_len": 16})
    run = resolve(config)
    assert (run.data.kind, run.seq_len, run.layer_mixers, run.mesh) == ("text", 16, ("attention",), None)
    config.train.seq_len = 8
    assert run.config.train.seq_len == 16  # a private copy: the caller's later changes do not reach it
    with pytest.raises(ValueError, match="vocabulary is not known"):
        _ = run.model
    assert run.with_vocab(40).model.vocab_size == 40
    config.model.vocab_size = 30
    with pytest.raises(ConfigError, match=r"model.vocab_size=30 is smaller than the tokenizer's vocabulary \(40\)"):
        resolve(config).with_vocab(40)


def test_a_fine_tune_takes_its_source_architecture_before_the_checks(tmp_path):
    """The merged model is what the mesh check sees: a GLA source under the balanced context layout is refused
    as a GLA run is, whatever the fine-tune's own config says its mixer is."""
    source = tiny_config(tmp_path, **{"model.mixer": "gla", "train.steps": 2, "train.eval_every": 2,
                                      "train.checkpoint_every": 2, "sample.num_samples": 0})  # one layer
    train(source, tmp_path / "gla", **QUIET)

    config = tiny_config(tmp_path, **{"mesh.data": 1, "mesh.context": 2, "model.n_layers": 2})
    config.finetune.init_from = str(tmp_path / "gla")
    from llm.training.finetune import load_source

    run = resolve(config, source=load_source(str(tmp_path / "gla")).model)
    assert run.layer_mixers == ("gla",) and config.model.mixer == "attention"  # the fine-tune's config says 2 layers
    with pytest.raises(ConfigError, match="which the gla mixer cannot take"):
        resolve(config, source=load_source(str(tmp_path / "gla")).model, n_devices=2)

    # The same through `llm train` on two devices: refused with exit 2 before the workdir exists.
    flags = [f"--config.data.corpus={tmp_path / 'corpus.txt'}", f"--config.data.cache_dir={tmp_path / 'cache'}",
             "--config.model.n_layers=2", "--config.model.d_model=32", "--config.model.max_len=32",
             "--config.mesh.data=1", "--config.mesh.context=2", f"--config.finetune.init_from={tmp_path / 'gla'}"]
    proc = subprocess.run([sys.executable, "-m", "llm.cli", "train", "--workdir", str(tmp_path / "ft"), *flags],
                          capture_output=True, text=True, env=cpu_devices_env(2), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "which the gla mixer cannot take" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ft").exists()
