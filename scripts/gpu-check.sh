#!/usr/bin/env bash
# GPU checks and figures in one go, on a machine with a CUDA GPU and a Python that already has
# torch (CUDA build), numpy, scipy, sympy, matplotlib, pandas, pyarrow, typer, rich, hypothesis
# and pytest (no network needed: the package is installed without its dependencies).
#   scripts/gpu-check.sh [LOGDIR]
# Writes tests.log, schemes.md, bench.md, bench-large.md and simulate.log under LOGDIR.
set -uo pipefail
out=${1:-gpu-logs}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail "$out/install.log"; exit 1; }
echo "== GPU tests"
$PY -m pytest -q -p no:cacheprovider tests/simulate/test_cuda.py tests/simulate/test_engine.py 2>&1 | tee "$out/tests.log" | tail -5
echo "== schemes"
$PY -m benchmarks.bench_schemes --device cuda --nets 8,64,512 --seconds 0.5 2>&1 | tee "$out/schemes.md"
echo "== bench (8 nets x 4 inputs, naive loop on the GPU too)"
$PY -m benchmarks.bench_simulate --device cuda --seconds 1 2>&1 | tee "$out/bench.md"
echo "== bench (256 nets x 4 inputs, engine only)"
$PY -m benchmarks.bench_simulate --device cuda --seconds 1 --nets 256 --no-naive 2>&1 | tee "$out/bench-large.md"
echo "== advdim simulate --device cuda (default study)"
/usr/bin/time -v advdim simulate --device cuda --out "$out/sim" 2>&1 | tee "$out/simulate.log" \
  | grep -E "PASS|FAIL|n/a|Elapsed|Maximum resident" | head -60
echo "== advdim train --device cuda (default run)"
/usr/bin/time -v advdim train --device cuda 2>&1 | tee "$out/train.log" | grep -E "Elapsed|test" | tail -8
echo "== advdim verify --device cuda"
/usr/bin/time -v advdim verify --device cuda 2>&1 | tee "$out/verify.log" | grep -E "passed|failed|Elapsed|FAIL" | tail -8
