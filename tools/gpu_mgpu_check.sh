#!/usr/bin/env bash
# GPU check for the Mosaic GPU (Hopper) flash-attention forward (one H200, jax 0.11 + CUDA, no network).
#
#   OUT=/some/dir bash tools/gpu_mgpu_check.sh      # from the repo root; at most DEADLINE_S (default 200 s)
#
# Steps, each time-boxed and each run even if an earlier one failed:
#   1. jax.devices() and the device's compute capability
#   2. pytest -m gpu -k mgpu tests/test_flash_attention.py   (mgpu forward and mgpu + Triton-backward grads
#      vs the reference: 2x2048x16x128 bf16 causal / non-causal, hd64 GQA; LLM_FLASH_MGPU opt-in + fallback)
#   3. python3 -m benchmarks.attention --mgpu-suite          (5-setting mgpu forward autotune at
#      bf16/hd128/causal/8192, then mgpu vs Triton vs cuDNN, fwd and fwd+bwd, causal and not; TARGET line)
#   4. copy benchmarks/results/attention_gpu_mgpu.* to $OUT
# Everything printed is also in $OUT/gpu_mgpu_check.log. The benchmark writes its JSON/markdown after every
# case, so a step cut short by its time box still leaves the cases it finished.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_mgpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_mgpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

START=$(date +%s)
DEADLINE_S=${DEADLINE_S:-200}
PY=python3
FAILED=()

# step NAME LIMIT_S CMD...: run CMD under `timeout`, capped by what is left of the deadline.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE_S - ($(date +%s) - START) - 5))
  if ((left < 10)); then
    echo "=== [$name] skipped: ${left}s left of the ${DEADLINE_S}s deadline"
    FAILED+=("$name(skipped)")
    return 0
  fi
  ((limit > left)) && limit=$left
  echo
  echo "=== [$name] start at +$(($(date +%s) - START))s, limit ${limit}s: $*"
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "=== [$name] TIMED OUT after ${limit}s"
  echo "=== [$name] rc=$rc at +$(($(date +%s) - START))s"
  ((rc != 0)) && FAILED+=("$name(rc=$rc)")
  return 0
}

# Carried wheels (e.g. ml_collections) install into /tmp/site; without them, just the repo on the path.
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD \
    || { echo "wheel install failed; continuing with the image's packages"; export PYTHONPATH=$PWD; }
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

step jax-devices 30 $PY -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__); \
print(jax.devices()); d = jax.devices()[0]; print(d.device_kind, getattr(d, 'compute_capability', '?')); \
from jax._src.lib import cuda_versions as c; print('cuda runtime', c and c.cuda_runtime_get_version())"
step pytest-mgpu 75 $PY -m pytest -q -m gpu -k mgpu -p no:cacheprovider -rs tests/test_flash_attention.py
step benchmark-mgpu 150 $PY -m benchmarks.attention --mgpu-suite

cp -v benchmarks/results/attention_gpu_mgpu.* "$OUT"/ 2>/dev/null || echo "no attention_gpu_mgpu.* files to copy"
grep -h "TARGET" "$OUT"/attention_gpu_mgpu.md 2>/dev/null || echo "TARGET: no result"
echo
echo "=== done in $(($(date +%s) - START))s; failed or cut short: ${FAILED[*]:-none}"
