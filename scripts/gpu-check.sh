#!/usr/bin/env bash
# GPU checks and figures in one go, on a machine with a CUDA GPU and a Python that already has
# torch (CUDA build), numpy, scipy, sympy, matplotlib, pandas, pyarrow, typer, rich, hypothesis
# and pytest (no network needed: the package is installed without its dependencies; Dask is
# not needed).  Fashion-MNIST must be in its usual folder for the train / verify / image steps.
#   scripts/gpu-check.sh [LOGDIR]
# Writes install.log, tests.log, schemes.md, bench.md, bench-64.md, simulate.log, simulate-images.log,
# train.log and verify.log under LOGDIR.
set -uo pipefail
out=${1:-gpu-logs}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail "$out/install.log"; exit 1; }
timed() { /usr/bin/time -f "wall %e s, max RSS %M kB" "$@"; }
echo "== GPU tests"
$PY -m pytest -q -p no:cacheprovider tests/simulate/test_cuda.py tests/simulate/test_engine.py 2>&1 | tee "$out/tests.log" | tail -3
echo "== schemes"
$PY -m benchmarks.bench_schemes --device cuda --nets 8,64,512 --sizes 16,64,128 --seconds 0.3 2>&1 > "$out/schemes.md"
tail -3 "$out/schemes.md"
echo "== bench (8 nets x 4 inputs, naive loop on the GPU too)"
$PY -m benchmarks.bench_simulate --device cuda --seconds 1 2>&1 | tee "$out/bench.md"
echo "== bench (64 nets x 4 inputs)"
$PY -m benchmarks.bench_simulate --device cuda --seconds 1 --nets 64 2>&1 | tee "$out/bench-64.md"
echo "== advdim simulate --device cuda (default study)"
COLUMNS=160 timed advdim simulate --device cuda --out "$out/sim" > "$out/simulate.log" 2>&1
grep -cE "│ pass" "$out/simulate.log"; grep -E "FAIL|wall" "$out/simulate.log"
echo "== advdim simulate --device cuda --data fashion-mnist"
COLUMNS=160 timed advdim simulate --device cuda --data fashion-mnist -f dense -f strided -f avgpool \
  > "$out/simulate-images.log" 2>&1
grep -E "slope|wall" "$out/simulate-images.log" | cut -c1-150
echo "== advdim train --device cuda (default run)"
COLUMNS=160 timed advdim train --device cuda > "$out/train.log" 2>&1; tail -4 "$out/train.log"
echo "== advdim verify --device cuda"
COLUMNS=160 timed advdim verify --device cuda > "$out/verify.log" 2>&1; tail -3 "$out/verify.log"
