#!/usr/bin/env bash
# A short GPU check (about 6 minutes on an H100/H200): CUDA tests, engine benchmarks, the target
# path and start-up on the GPU machine.  The full set with training and verify: scripts/gpu-check.sh.
#   scripts/gpu-check-quick.sh [LOGDIR]
set -uo pipefail
out=${1:-gpu-logs}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail "$out/install.log"; exit 1; }
echo "== GPU tests"
$PY -m pytest -q -p no:cacheprovider tests/simulate/test_cuda.py tests/core/test_targets.py \
  tests/simulate/test_engine.py -k "cuda or init or targets or equals_plain" 2>&1 | tee "$out/tests.log" | tail -3
echo "== bench_simulate (64 nets)"
$PY -m benchmarks.bench_simulate --device cuda --seconds 1 --nets 64 --sizes 16,64,128 2>&1 | tee "$out/bench-64.md" | tail -8
echo "== bench_targets (cuda)"
$PY -m benchmarks.bench_targets --device cuda --size 64 --cells 8 2>&1 | tee "$out/targets.json" | grep -E "speed|\": \{"
echo "== simulate a spec text and a member on cuda"
COLUMNS=160 /usr/bin/time -f "wall %e s" advdim simulate --device cuda --sizes 16,32,64,128 --nets 64 \
  -f "3x16x16 > conv(16,k=3,dil=2,pad=circular) > relu > conv(16,k=3,s=2,pad=circular) > relu > flatten > dense(10)" \
  -f "strided(kernel=5,padding=zeros,dilation=2)" > "$out/simulate-targets.log" 2>&1
grep -E "slope|measured /|wall" "$out/simulate-targets.log" | cut -c1-160
echo "== start-up"
$PY -m benchmarks.bench_startup --reps 3 2>&1 | grep -E "ratio\"|met" | head -6
