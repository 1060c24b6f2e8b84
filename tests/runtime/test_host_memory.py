"""llm.runtime.host_memory: after keep_freed_host_memory(), repeated train steps stop page-faulting their buffers
(both glibc's thresholds and, for blocks over 64 MiB, running programs on the calling thread)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# One process per setting: glibc's thresholds cannot be put back once set.
SCRIPT = r"""
import resource, sys
import jax
from llm.runtime.host_memory import keep_freed_host_memory
tuned = keep_freed_host_memory()
from llm.model import ModelConfig, Transformer
from llm.state.optimizers import make_optimizer
from llm.config import get_base_config
from llm.training.steps import make_train_step
from llm.state.train_state import create_train_state
c = get_base_config()
# nanoGPT's baby shape at batch 16: ~65 MB of temporaries a step, one block larger than a thread arena's heap
cfg = ModelConfig(vocab_size=65, max_len=64, d_model=128, n_layers=4, n_heads=4)
model = Transformer(cfg)
tx, lr = make_optimizer(c.optim, 100)
state = jax.jit(create_train_state, static_argnums=(0, 1, 3))(model, tx, jax.random.PRNGKey(0), 64)
x = jax.random.randint(jax.random.PRNGKey(1), (16, 64), 0, 65)
step = make_train_step(model, tx, lr, 1, jax.random.PRNGKey(2))
for _ in range(4):  # the heap grows to its steady size (measured: by the second step)
    state, m = step(state, x, x); jax.block_until_ready(m)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    state, m = step(state, x, x); jax.block_until_ready(m)
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
"""


def _faults_per_step(defaults: bool) -> tuple[bool, float]:
    env = {**os.environ, "LLM_MALLOC_DEFAULTS": "1" if defaults else "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return out[-2] == "True", float(out[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_train_steps_stop_page_faulting():
    tuned, faults = _faults_per_step(defaults=False)
    untuned, default_faults = _faults_per_step(defaults=True)
    assert tuned and not untuned
    # glibc's defaults hand the step's freed buffers back to the kernel: thousands of fresh pages per step
    # (measured here: ~18,000); tuned, none.
    assert default_faults > 1000, default_faults
    assert faults < 50, faults
