#!/usr/bin/env bash
# The GPU checks of issue 16 in one script, each part bounded by a timeout and run even when the
# previous one failed:
#   (a) the device tests, `pytest --device cuda -m "not slow" tests/test_device.py` -> $OUT/pytest_cuda.log
#   (b) benchmarks/bench_gpu.py (every GPU figure)           -> $OUT/gpu.md, $OUT/bench_gpu.log
#   plus $OUT/env.txt (nvidia-smi, torch build).
# Usage, from anywhere:  bash benchmarks/gpu_suite.sh [--small]
#   --small   tiny sizes (and pytest on the CPU when no GPU is present): checks the script on a CPU.
# Environment: OUT (default results/), PYTHON (default python3), PYTEST_TIMEOUT (s, default 120),
#   BENCH_TIMEOUT (s, default 300), BENCH_BUDGET (s after which no new benchmark section starts,
#   default 220). A wheel of torchattacks in .whl/ is installed to /tmp/site (no index, no deps).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-results}
PY=${PYTHON:-python3}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-120}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_BUDGET=${BENCH_BUDGET:-220}
SMALL=""
if [ "${1:-}" = "--small" ]; then SMALL="--small"; fi
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; then
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    else
        echo "gpu_suite: installing .whl/*.whl failed; the torchattacks comparison will be skipped"
    fi
fi

DEVICE=cuda
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cpu
    if [ -z "$SMALL" ]; then
        echo "gpu_suite: no CUDA device; running the small sizes on the CPU"
        SMALL="--small"
    fi
fi

{
    date -u
    nvidia-smi 2> /dev/null || echo "nvidia-smi not available"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'available', torch.cuda.is_available())"
    "$PY" -c "import torchattacks; print('torchattacks', torchattacks.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1

echo "== (a) device tests on $DEVICE (timeout ${PYTEST_TIMEOUT}s)"
start=$(date +%s)
timeout "$PYTEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider --device "$DEVICE" -m "not slow" \
    --durations=10 tests/test_device.py 2>&1 | tee "$OUT/pytest_cuda.log"
pytest_rc=${PIPESTATUS[0]}
echo "pytest exit $pytest_rc after $(($(date +%s) - start)) s" | tee -a "$OUT/pytest_cuda.log"

echo "== (b) bench_gpu.py $SMALL on $DEVICE (timeout ${BENCH_TIMEOUT}s, budget ${BENCH_BUDGET}s)"
start=$(date +%s)
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu.py $SMALL --device "$DEVICE" --budget-s "$BENCH_BUDGET" \
    --out "$OUT/gpu.md" 2>&1 | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}
echo "bench_gpu exit $bench_rc after $(($(date +%s) - start)) s" | tee -a "$OUT/bench_gpu.log"

echo "== gpu_suite: pytest exit $pytest_rc, bench_gpu exit $bench_rc; results in $OUT/"
[ "$pytest_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
