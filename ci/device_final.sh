#!/usr/bin/env bash
# The full device check in two parts (each fits one 10-minute device call; logs under $OUT):
#   part 1: every GPU test (pytest -m gpu, 4 workers; DDP tests need 2 GPUs), compute-sanitizer
#           memcheck / racecheck / synccheck on a small case of every cell, the full benchmark
#   part 2: DDP tokens/s on 1 and 2 GPUs, the wheel path (ci/device_wheel_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/python PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/flashrnn-out}; mkdir -p "$OUT"
part=${1:-1}
if [[ $part == 1 ]]; then
  nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee "$OUT/gpu.txt"
  TEST_TIMEOUT=${TEST_TIMEOUT:-270} TEST_PATHS="${TEST_PATHS:-tests}" \
    bash ci/device_check.sh tests -n 4 2>&1 | grep -E "passed|failed|FAILED|Error" | head -40
  for tool in memcheck racecheck synccheck; do
    timeout $([[ $tool == racecheck ]] && echo 240 || echo 150) compute-sanitizer --tool $tool --kernel-name kns=flashrnn --error-exitcode 9 \
      python3 ci/sanitize_cases.py > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool: exit $? ($(grep -c ': ok' "$OUT/sanitizer_$tool.log") of 60 cases ok; $(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log"))"
  done
  timeout 200 python3 benchmarks/bench_kernels.py --suite full --out "$OUT/bench.md" > "$OUT/bench.log" 2>&1
  sed -n '/^| kernel/,$p' "$OUT/bench.md"
else
  if [[ $(nvidia-smi -L | wc -l) -ge 2 ]]; then
    for n in 1 2; do
      timeout 90 python3 -m torch.distributed.run --standalone --nproc_per_node=$n examples/train_ddp.py \
        --benchmark --steps 20 --batch 64 --seq 512 2>&1 | grep tokens/s | tee -a "$OUT/ddp.txt"
    done
  fi
  timeout 300 bash ci/device_wheel_check.sh > "$OUT/wheel.log" 2>&1; echo "wheel check: exit $?"
  grep -E "device_wheel_check|passed|failed|core:|archs|runs on it" "$OUT/wheel.log" | tail -25
fi
exit 0
