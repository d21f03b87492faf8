#!/usr/bin/env bash
# Runs on the lent GPU machine (see README "GPU tests and benchmarks"): imports the core (built
# here if the carried one does not load), runs the GPU tests and the benchmarks, writes logs to $OUT.
#   bash ci/device_check.sh [tests|bench|all] [extra pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}; shift || true
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashrnn-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
if ! python3 -c "import flashrnn, sys; sys.exit(0 if flashrnn.has_cuda_core() else 1)"; then
  echo "building the core for this machine's Python"
  cmake -S . -B /tmp/flashrnn-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHRNN_CUDA_ARCHS=90 \
    -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null &&
    ninja -C /tmp/flashrnn-build >"$OUT/build.log" 2>&1 && cp /tmp/flashrnn-build/_C*.so python/flashrnn/ ||
    { tail -30 "$OUT/build.log"; exit 1; }
fi
python3 -c "import flashrnn; print(flashrnn.build_info())"
status=0
if [[ $what == tests || $what == all ]]; then
  timeout ${TEST_TIMEOUT:-330} python3 -m pytest -m gpu -q -rf --tb=short -p no:cacheprovider "$@" ${TEST_PATHS:-tests} 2>&1 | tee "$OUT/gpu_tests.log"
  status=${PIPESTATUS[0]}
  grep -E "passed|failed" "$OUT/gpu_tests.log" | tail -1
fi
if [[ $what == bench || $what == all ]]; then
  timeout ${BENCH_TIMEOUT:-200} python3 benchmarks/bench_kernels.py --suite "${BENCH_SUITE:-quick}" --out "$OUT/bench.md" 2>&1 | tail -40
fi
exit $status
