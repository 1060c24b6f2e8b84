"""Context parallelism: attention with the sequence split over 2, 4 and 8 simulated CPU devices (ring and
all-gather, balanced and contiguous layouts), and a model's loss and gradients under meshes that add data, fsdp and
tensor axes, equal to one device's. Training runs under such meshes (and a resume across context sizes) are in
tests/e2e/test_sharding.py."""

import numpy as np
import pytest
from conftest import tiny_config

from llm.config import resolve
from llm.errors import ConfigError
from llm.parallel.context.attention import Layout


@pytest.mark.slow  # 8 simulated devices in a subprocess (conftest's eight_devices)
def test_attention_over_split_sequences_equals_the_whole(eight_devices):
    results = eight_devices["context:ops"]
    assert len(results) == 10
    for r in results:
        # float32 sums in another order; the outputs and gradients are O(1).
        assert r["out"] < 2e-6, r
        for grad in ("dq", "dk", "dv"):
            assert r.get(grad, 0.0) < 5e-6, r
    assert sum("dq" in r for r in results) == 9  # all but the soft-capped case check gradients


@pytest.mark.slow
def test_model_loss_and_gradients_under_context_meshes_equal_one_device(eight_devices):
    results = eight_devices["context:model"]
    assert {r["case"].split()[0] for r in results} == {"1,1,8,1", "1,1,4,1", "2,1,2,2", "1,2,4,1", "1,2,2,2"}
    for r in results:
        np.testing.assert_allclose(r["loss"], r["want_loss"], rtol=1e-6, err_msg=r["case"])
        assert r["grad_error"] < 1e-6 * max(1.0, r["grad_scale"]), r


def test_balanced_layout_pairs_mirrored_chunks():
    layout = Layout("context", 4, balanced=True)
    order = layout.order(16)  # 8 chunks of 2 slots: device d holds chunks d and 7 - d
    assert order.tolist() == [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9]
    assert Layout("context", 4, balanced=False).order(16).tolist() == list(range(16))
    # Causal work per device (visible (query, key) pairs) is equal when balanced, skewed when not.
    for balanced, spread in ((True, 0), (False, 48)):
        slots = Layout("context", 4, balanced=balanced).order(16).reshape(4, 4)
        work = [int(sum(s + 1 for s in device)) for device in slots]
        assert max(work) - min(work) == spread, work
    with pytest.raises(ValueError, match="does not split into 8 equal chunks"):
        layout.order(20)


@pytest.mark.parametrize("overrides, size, message", [
    ({"mesh.rules": {"length": ""}}, 2, "set mesh.rules.length='context'"),
    ({}, 3, "sequences of 32 tokens do not split into 6 equal chunks"),
    ({"model.short_conv": 3}, 2, "which model.short_conv cannot take"),
    ({"model.mixer": "gla"}, 2, "which the gla mixer cannot take"),
])
def test_context_split_config_errors(tmp_path, overrides, size, message):
    config = tiny_config(tmp_path)  # max_len 32
    for key, value in overrides.items():
        section, name = key.split(".")
        if isinstance(value, dict):
            for k, v in value.items():
                config[section][name][k] = v
        else:
            config[section][name] = value
    config.mesh.data, config.mesh.context = 1, size
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(config, n_devices=size)
    config.mesh.context_balance = False
    config.mesh.rules.length = "context"
    if "split into" not in message:
        assert resolve(config, n_devices=size).mesh.context == size  # contiguous chunks take any layer
