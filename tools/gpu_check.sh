#!/usr/bin/env bash
# GPU check for the Pallas flash-attention kernel (one H200, jax 0.11 + CUDA, no network).
#
#   OUT=/some/dir bash tools/gpu_check.sh      # from the repo root
#
# Steps, each time-boxed and each run even if an earlier one failed; the whole script stays under
# DEADLINE_S (default 560 s):
#   1. nvidia-smi, jax.devices(), the CUDA runtime
#   2. pytest -m gpu tests/kernels/test_flash_attention.py   (compiled Triton and Mosaic-GPU kernels vs the reference)
#   3. pytest -m gpu on the other test files          (whatever else is marked gpu)
#   4. python3 -m benchmarks.attention --gpu-suite    (the Triton path: autotune, then vs cuDNN and XLA over
#                                                      lengths, head dims, causal / not)
#   5. python3 -m benchmarks.attention --mgpu-suite   (the Hopper forward: autotune, vs Triton and cuDNN; the
#                                                      TARGET line of the bf16/hd128/causal/8192 point)
#   6. python3 -m benchmarks.train --preset gpu       (Llama-style training steps: ms/step, MFU)
#   7. copy benchmarks/results/*gpu* to $OUT
# Everything printed is also in $OUT/gpu_check.log. The benchmark writes its JSON/markdown after every case,
# so a step cut short by its time box still leaves the cases it finished.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-560}
PY=python3
FAILED=()

# step NAME LIMIT_S CMD...: run CMD under `timeout`, capped by what is left of the deadline.
# (pytest's rc 5, "no tests collected", counts as success: other files may have no gpu tests.)
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - ($(date +%s) - START)))
  if ((left < 15)); then
    echo "=== [$name] skipped: ${left}s left of the ${DEADLINE_S}s deadline"
    FAILED+=("$name(skipped)")
    return 0
  fi
  ((limit > left)) && limit=$left
  echo
  echo "=== [$name] start at +$(($(date +%s) - START))s, limit ${limit}s: $*"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "=== [$name] TIMED OUT after ${limit}s"
  echo "=== [$name] rc=$rc at +$(($(date +%s) - START))s"
  ((rc != 0 && rc != 5)) && FAILED+=("$name(rc=$rc)")
  return 0
}

# (`-o addopts=`: the image may lack pytest-xdist, which pyproject's addopts ask for.)
# Carried wheels (e.g. ml_collections) install into /tmp/site; without them, just the repo on the path.
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD \
    || { echo "wheel install failed; continuing with the image's packages"; export PYTHONPATH=$PWD; }
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

step nvidia-smi 20 nvidia-smi
step jax-devices 60 $PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); \
print(jax.devices()); d = jax.devices()[0]; print(d.device_kind, getattr(d, 'compute_capability', '?')); \
from jax._src.lib import cuda_versions as c; print('cuda runtime', c and c.cuda_runtime_get_version())"
step pytest-flash 130 $PY -m pytest -o addopts= -x -q -m gpu -p no:cacheprovider -rs tests/kernels/test_flash_attention.py
step pytest-gpu-other 40 $PY -m pytest -o addopts= -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
  --ignore=tests/kernels/test_flash_attention.py tests/
step benchmark-triton 170 env LLM_FLASH_MGPU=0 $PY -m benchmarks.attention --gpu-suite
step benchmark-mgpu 100 $PY -m benchmarks.attention --mgpu-suite
step train-benchmark 135 $PY -m benchmarks.train --preset gpu --budget-s "${TRAIN_BUDGET_S:-110}"

cp -v benchmarks/results/*gpu* "$OUT"/ 2>/dev/null || echo "no benchmarks/results/*gpu* files to copy"
grep -h "TARGET" "$OUT"/attention_gpu*.md 2>/dev/null
echo
echo "=== done in $(($(date +%s) - START))s; failed or cut short: ${FAILED[*]:-none}"
