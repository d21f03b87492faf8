#!/usr/bin/env bash
# Builds flashrnn's wheels with the CUDA core compiled ONCE for all Pythons. cibuildwheel runs
# `core` in before-all and then builds one wheel per Python with FLASHRNN_PREBUILT_CORE set (see
# [tool.cibuildwheel] in pyproject.toml); ci/test.sh, ci/device_wheel_check.sh and the GitHub
# workflow call the same steps directly.
#
#   ci/build_wheel.sh toolkit              print the CUDA root; nvcc is looked for (CUDACXX, PATH,
#                                          CUDA_HOME, CUDA_PATH, /usr/local/cuda) and, if missing,
#                                          installed from PyPI's NVIDIA packages into $FLASHRNN_CUDA_PREFIX
#   ci/build_wheel.sh core                 compile the CUDA core once: $FLASHRNN_CORE_DIR/libflashrnn_core.a
#   ci/build_wheel.sh wheel [PYTHON...]    one wheel per Python into $FLASHRNN_DIST, linking that core
#   ci/build_wheel.sh repair WHEEL DEST    auditwheel repair, leaving out the driver (libcuda.so.1)
#   ci/build_wheel.sh sdist                the sdist into $FLASHRNN_DIST
#   ci/build_wheel.sh all [PYTHON...]      toolkit, core, wheel, sdist
#   ci/build_wheel.sh user-path DIR        print a PATH without nvcc, cmake, ninja or a C/C++ compiler
#
# Environment (defaults in brackets):
#   FLASHRNN_CUDA_ARCHS    SASS archs; PTX is added for the highest ["80;86;90"]
#   FLASHRNN_CORE_DIR      where the core goes [build/core]
#   FLASHRNN_DIST          where wheels and sdist go [dist]
#   FLASHRNN_CUDA_PREFIX   where a missing toolkit is installed [build/cuda-toolkit]
#   FLASHRNN_CUDA_PIP      the PyPI packages of that toolkit [CUDA 13.0, the version developed with]
#   FLASHRNN_CUDA_TOOLKIT=pip       always use that toolkit, even where another nvcc is found [auto]
#   FLASHRNN_NO_BUILD_ISOLATION=1   build wheels in the calling environment (offline machines)
#   PYTHON                 the Python that runs cmake's configure and the tools [python3]
set -euo pipefail
CALLER_PWD=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

: "${FLASHRNN_CUDA_ARCHS:=80;86;90}"
: "${FLASHRNN_CORE_DIR:=$ROOT/build/core}"
: "${FLASHRNN_DIST:=$ROOT/dist}"
: "${FLASHRNN_CUDA_PREFIX:=$ROOT/build/cuda-toolkit}"
# The toolkit of the development machines (nvcc 13.0.88), as PyPI packages. CUDA 13 needs driver >= 580.
: "${FLASHRNN_CUDA_PIP:=nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85}"
export FLASHRNN_CUDA_ARCHS

log() { echo "[build_wheel] $*" >&2; }

# A Python >= 3.10 for the tools: $PYTHON, python3, or one of the manylinux image's.
tool_python() {
  local py
  for py in "${PYTHON:-}" python3 /opt/python/cp312-cp312/bin/python /opt/python/cp311-cp311/bin/python; do
    [[ -n $py ]] && command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      command -v "$py"; return
    fi
  done
  log "no Python >= 3.10 found (set PYTHON)"; return 1
}

# The build tools (cmake >= 3.26, ninja, pybind11, build) in a venv of our own; offline
# (FLASHRNN_NO_BUILD_ISOLATION=1), the calling Python's packages and cmake/ninja from PATH.
# Sets TOOL_PY, CMAKE, NINJA.
tools() {
  if [[ ${FLASHRNN_NO_BUILD_ISOLATION:-0} == 1 ]]; then
    TOOL_PY=$(tool_python); CMAKE=$(command -v cmake); NINJA=$(command -v ninja)
    return
  fi
  local venv=$ROOT/build/tools-venv
  if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import pybind11, build' 2>/dev/null; then
    log "build tools -> $venv"
    "$(tool_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "cmake>=3.26" ninja "pybind11>=2.12" build
  fi
  TOOL_PY=$venv/bin/python CMAKE=$venv/bin/cmake NINJA=$venv/bin/ninja
}

# nvcc, in the order CMakeLists.txt looks for it, then the toolkit installed by this script.
find_nvcc() {
  local c
  for c in "${CUDACXX:-}" "$(command -v nvcc 2>/dev/null || true)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" \
           "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
    [[ -n $c && -x $c ]] && { echo "$c"; return; }
  done
  return 1
}

cmd_toolkit() {
  local nvcc=
  [[ ${FLASHRNN_CUDA_TOOLKIT:-auto} == pip ]] || nvcc=$(find_nvcc) || true
  if [[ -z $nvcc || ! -x $nvcc ]]; then
    # PyPI's wheels unpack to nvidia/cu13/{bin,include,lib,nvvm}; nvcc.profile looks for headers
    # and libraries under targets/x86_64-linux/, which the links below provide.
    local root=$FLASHRNN_CUDA_PREFIX/nvidia/cu13
    if [[ ! -x $root/bin/nvcc ]]; then
      log "installing the CUDA toolkit from PyPI into $FLASHRNN_CUDA_PREFIX"
      # shellcheck disable=SC2086
      "$(tool_python)" -m pip install -q --no-deps --target "$FLASHRNN_CUDA_PREFIX" $FLASHRNN_CUDA_PIP
    fi
    mkdir -p "$root/targets/x86_64-linux"
    ln -sfn ../../include "$root/targets/x86_64-linux/include"
    ln -sfn ../../lib "$root/targets/x86_64-linux/lib"
    ln -sfn lib "$root/lib64"
    [[ -e $root/lib/libcudart.so ]] || ln -sfn libcudart.so.13 "$root/lib/libcudart.so"
    nvcc=$root/bin/nvcc
  fi
  "$nvcc" --version | tail -2 >&2
  echo "$nvcc"
}

cmd_core() {
  local nvcc build=$ROOT/build/core-build-${FLASHRNN_CUDA_ARCHS//[;,]/-}
  nvcc=$(cmd_toolkit)
  tools
  log "core for archs $FLASHRNN_CUDA_ARCHS with $nvcc -> $FLASHRNN_CORE_DIR"
  mkdir -p "$ROOT/build"  # an ignored folder: absent in a fresh checkout or a copied tree
  # Configure every time: the source hash recorded beside the core is computed at configure time.
  # FLASHRNN_PREBUILT_CORE may be set for the wheels that follow (cibuildwheel): not for this build.
  env -u FLASHRNN_PREBUILT_CORE "$CMAKE" -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_MAKE_PROGRAM="$NINJA" -DCMAKE_CUDA_COMPILER="$nvcc" -DFLASHRNN_REQUIRE_CUDA=ON \
    -DFLASHRNN_PREBUILT_CORE= -DFLASHRNN_CUDA_ARCHS="$FLASHRNN_CUDA_ARCHS" \
    -DPython_EXECUTABLE="$TOOL_PY" -Dpybind11_DIR="$("$TOOL_PY" -m pybind11 --cmakedir)" >"$build.log" 2>&1 ||
    { tail -30 "$build.log"; exit 1; }
  "$CMAKE" --build "$build" --target flashrnn_core >>"$build.log" 2>&1 || { tail -40 "$build.log"; exit 1; }
  "$CMAKE" --install "$build" --component flashrnn_core --prefix "$FLASHRNN_CORE_DIR" >/dev/null
  ls -l "$FLASHRNN_CORE_DIR/libflashrnn_core.a" >&2
  grep -E "ARCHS|VERSION" "$FLASHRNN_CORE_DIR/flashrnn_core.cmake" >&2
}

cmd_wheel() {
  local core=$FLASHRNN_CORE_DIR/libflashrnn_core.a py
  [[ -f $core ]] || { log "no core at $core: run 'ci/build_wheel.sh core' first"; exit 1; }
  (($#)) || set -- "$(tool_python)"
  mkdir -p "$FLASHRNN_DIST"
  for py in "$@"; do
    log "wheel for $("$py" -c 'import sys; print(sys.version.split()[0])') with the prebuilt core"
    # A fresh build dir: nothing cached from another core or toolkit (the binding builds in seconds).
    local dir=build/wheel-$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')-prebuilt
    rm -rf "${ROOT:?}/$dir"
    local args=(--no-deps -w "$FLASHRNN_DIST" --config-settings=build-dir="$dir")
    [[ ${FLASHRNN_NO_BUILD_ISOLATION:-0} == 1 ]] && args+=(--no-build-isolation)
    # REQUIRE_CUDA: a wheel without the core is an error, never a silent CPU-only wheel.
    FLASHRNN_PREBUILT_CORE=$core "$py" -m pip wheel "${args[@]}" \
      --config-settings=cmake.define.FLASHRNN_REQUIRE_CUDA=ON "$ROOT"
  done
  ls -l "$FLASHRNN_DIST"/*.whl >&2
}

# The same flags as repair-wheel-command in pyproject.toml: the driver (libcuda.so.1) is the one
# CUDA library a wheel may need, and it comes from the user's system, never from the wheel.
cmd_repair() {
  local wheel=$1 dest=$2
  cd "$CALLER_PWD"
  auditwheel repair --exclude libcuda.so.1 --plat "${FLASHRNN_PLAT:-auto}" -w "$dest" "$wheel"
}

cmd_sdist() {
  tools
  mkdir -p "$FLASHRNN_DIST"
  if [[ ${FLASHRNN_NO_BUILD_ISOLATION:-0} == 1 ]]; then
    "$TOOL_PY" -m build --sdist --no-isolation -o "$FLASHRNN_DIST" "$ROOT"
  else
    "$TOOL_PY" -m build --sdist -o "$FLASHRNN_DIST" "$ROOT"
  fi
}

# A user's PATH: DIR/bin gets links to everything on PATH except the toolchain, which is left out.
cmd_user_path() {
  local bin=$1/bin d f name dirs
  rm -rf "$bin"; mkdir -p "$bin"
  IFS=: read -ra dirs <<<"$PATH"
  for d in "${dirs[@]}"; do
    [[ -d $d ]] || continue
    for f in "$d"/*; do
      name=${f##*/}
      [[ -x $f && ! -d $f && ! -e $bin/$name && ! -L $bin/$name ]] || continue
      case $name in
        nvcc | ptxas | cicc | fatbinary | nvlink | cudafe++ | cmake | ctest | cpack | ccmake | ninja | \
        cc | c++ | cpp | c89 | c99 | c89-* | c99-* | gcc | g++ | gcc-* | g++-* | cpp-* | clang* | icx | icpx | \
        *-linux-gnu-gcc* | *-linux-gnu-g++* | *-linux-gnu-cpp* | *-linux-gnu-c++*) continue ;;
      esac
      ln -s "$f" "$bin/$name"
    done
  done
  echo "$bin"
}

what=${1:-all}; shift || true
case $what in
  toolkit) cmd_toolkit ;;
  core) cmd_core ;;
  wheel) cmd_wheel "$@" ;;
  repair) cmd_repair "$@" ;;
  sdist) cmd_sdist ;;
  user-path) cmd_user_path "$@" ;;
  all) cmd_core; cmd_wheel "$@"; cmd_sdist ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
