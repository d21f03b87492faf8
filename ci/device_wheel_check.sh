#!/usr/bin/env bash
# The wheel path on the GPU machine (no registry there): build a wheel for its Python with
# ci/build_wheel.sh (core for FLASHRNN_CUDA_ARCHS=90, then the binding), install it into a fresh
# venv whose PATH has no nvcc, cmake or C/C++ compiler, with that machine's torch (2.11) visible,
# and run `python -m flashrnn info`, the installed-core checks and the `pytest -m gpu` smoke tests
# from outside the source tree. A wheel built elsewhere for the same Python (e.g. here with
# `ci/build_wheel.sh wheel python3.12`, carried in .whl/) is tested the same way: one build,
# several torch versions. Logs go to $OUT.
#   here:   bash ci/device_wheel_check.sh fetch   # build tools as wheels into .whl/ (carry it)
#   there:  bash ci/device_wheel_check.sh         # FLASHRNN_GPU_SMOKE='' runs every gpu test
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ${1:-} == fetch ]]; then
  # scikit-build-core and what it needs, for Python 3.12 (the GPU machine's); all pure Python.
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    "scikit-build-core==1.1.2" "pathspec==1.1.1" "packaging==26.4" "pybind11==3.1.0"
  exit
fi

unset PYTHONPATH  # ci/device_final.sh points it at python/: the wheel must be what is imported
OUT=${OUT:-/tmp/flashrnn-out}; mkdir -p "$OUT"
LOG=$OUT/wheel_check.log
WORK=/tmp/flashrnn-wheel-check
rm -rf "$WORK"; mkdir -p "$WORK/run"
PY=$(command -v python3)
SMOKE=${FLASHRNN_GPU_SMOKE-zero_initial_states or fused_agrees_with_alternating or layouts_and_noncontiguous or cuda_graph_capture or cuda_error_becomes}
export FLASHRNN_CUDA_ARCHS=${FLASHRNN_CUDA_ARCHS:-90}
export FLASHRNN_NO_BUILD_ISOLATION=1 FLASHRNN_CORE_DIR=$WORK/core FLASHRNN_DIST=$WORK/dist
status=0
note() { echo "[device_wheel_check] $*" | tee -a "$LOG"; }

note "$("$PY" -V) at $PY; torch $("$PY" -c 'import torch; print(torch.__version__)'); $(nvcc --version 2>/dev/null | tail -1); $(cmake --version | head -1)"
# Build tools: scikit-build-core and pybind11 from the carried wheels where the image lacks them.
if ! "$PY" -c 'import scikit_build_core, pybind11' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target "$WORK/buildsite" $(ls .whl/*.whl | grep -v /flashrnn-) >>"$LOG" 2>&1 ||
    { note "scikit-build-core/pybind11 missing and not carried: run 'bash ci/device_wheel_check.sh fetch' here, carry .whl"; exit 1; }
  export PYTHONPATH=$WORK/buildsite
fi

start=$SECONDS
timeout 300 bash ci/build_wheel.sh core >>"$LOG" 2>&1 || { note "core build failed"; tail -30 "$LOG"; exit 1; }
note "core (archs $FLASHRNN_CUDA_ARCHS) built in $((SECONDS - start)) s"
start=$SECONDS
timeout 200 bash ci/build_wheel.sh wheel "$PY" >>"$LOG" 2>&1 || { note "wheel build failed"; tail -30 "$LOG"; exit 1; }
note "wheel built in $((SECONDS - start)) s: $(cd "$WORK/dist" && ls -s --block-size=K ./*.whl)"
unset PYTHONPATH
USER_PATH=$(bash ci/build_wheel.sh user-path "$WORK/user-path")
cp -r tests pyproject.toml "$WORK/run/"

# check NAME WHEEL ARCHS: fresh venv + this machine's torch, no toolchain on PATH, then the tests.
check() {
  local name=$1 wheel=$2 archs=$3 venv=$WORK/venv-$1 site
  note "== $name: $(basename "$wheel")"
  # --without-pip: the image's Python may lack ensurepip; the outer pip installs into the venv.
  "$PY" -m venv --system-site-packages --without-pip "$venv"
  # python3 may itself be a venv (/opt/torch/.venv): its packages (torch, pytest) are not the
  # "system" ones, so link them in; the new venv's own site-packages come first.
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/_device_python.pth"
  "$PY" -m pip install -q --no-index --no-deps --target "$site" "$wheel" >>"$LOG" 2>&1 || { note "install failed"; return 1; }
  local env=(env -u CUDACXX -u CUDA_HOME -u CUDA_PATH -u PYTHONPATH PATH="$venv/bin:$USER_PATH"
             FLASHRNN_EXPECT_INSTALLED=1 FLASHRNN_EXPECT_ARCHS="$archs" FLASHRNN_WHEEL="$wheel")
  (cd "$WORK/run" &&
    "${env[@]}" bash -c 'for t in nvcc cmake cc c++; do command -v $t && exit 1; done; exit 0' &&
    "${env[@]}" python -m flashrnn info &&
    "${env[@]}" python -m pytest -q -p no:cacheprovider tests/test_packaging.py -k "installed or wheel" &&
    timeout "${GPU_TEST_TIMEOUT:-240}" "${env[@]}" python -m pytest -m gpu -q -p no:cacheprovider -rf \
      tests/test_gpu.py ${SMOKE:+-k "$SMOKE"}) 2>&1 | tee -a "$LOG" "$OUT/wheel_$name.log"
  local rc=${PIPESTATUS[0]}
  note "$name: exit $rc"
  return "$rc"
}

check built-here "$(ls "$WORK"/dist/flashrnn-*.whl)" "90-real,90-virtual" || status=1
tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
for carried in .whl/flashrnn-*-"$tag"-*.whl; do
  [[ -f $carried ]] || continue
  check carried "$ROOT/$carried" "${FLASHRNN_CARRIED_ARCHS:-80-real,86-real,90-real,90-virtual}" || status=1
done
note "done: exit $status"
exit $status
