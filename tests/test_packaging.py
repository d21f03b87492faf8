"""Packaging: the cibuildwheel configuration, the build scripts, the wheel and the installed core.

Each check runs where what it needs is there and skips otherwise: the configuration checks need the
source tree (FLASHRNN_SOURCE_DIR, or this file's parent) and cibuildwheel; the wheel checks need
FLASHRNN_WHEEL; the installed-core checks run when FLASHRNN_EXPECT_INSTALLED=1 (ci/test.sh and
cibuildwheel's test step set these)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flashrnn

SOURCE = Path(os.environ.get("FLASHRNN_SOURCE_DIR", Path(__file__).resolve().parents[1]))
WHEEL = os.environ.get("FLASHRNN_WHEEL")
MAX_WHEEL_BYTES = 100 * 1024 * 1024
PYTHONS = ["cp310", "cp311", "cp312", "cp313"]


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    path = SOURCE / "pyproject.toml"
    if not path.is_file():
        pytest.skip(f"no pyproject.toml at {SOURCE}")
    return tomllib.loads(path.read_text())


def _source_file(relative: str) -> Path:
    path = SOURCE / relative
    if not path.is_file():
        pytest.skip(f"{relative} is not here (not a source tree: {SOURCE})")
    return path


def test_cibuildwheel_builds_exactly_cpython_310_to_313_manylinux_x86_64():
    """cibuildwheel reads the configuration (it rejects unknown keys) and selects these wheels."""
    exe = shutil.which("cibuildwheel")
    if exe is None:
        pytest.skip("cibuildwheel is not installed")
    _pyproject()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    out = subprocess.run([exe, "--print-build-identifiers", "--platform", "linux"], cwd=SOURCE, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"{py}-manylinux_x86_64" for py in PYTHONS]


def test_cibuildwheel_configuration():
    cfg = _pyproject()["tool"]["cibuildwheel"]
    assert cfg["manylinux-x86_64-image"] == "manylinux_2_28"
    assert cfg["archs"] == ["x86_64"]
    # The kernels compile once, in before-all; every Python's build links that core.
    assert cfg["before-all"] == "bash ci/build_wheel.sh core"
    env = cfg["environment"]
    assert env["FLASHRNN_CUDA_ARCHS"] == "80;86;90"
    assert env["FLASHRNN_PREBUILT_CORE"] == env["FLASHRNN_CORE_DIR"] + "/libflashrnn_core.a"
    assert cfg["config-settings"]["cmake.define.FLASHRNN_REQUIRE_CUDA"] == "ON"
    # The driver is the user's: auditwheel must not copy it into the wheel.
    assert "--exclude libcuda.so.1" in cfg["repair-wheel-command"]
    assert "not gpu" in cfg["test-command"]
    assert cfg["test-environment"]["FLASHRNN_EXPECT_ARCHS"] == "80-real,86-real,90-real,90-virtual"


def test_pyproject_keeps_the_source_build_and_test_markers():
    project = _pyproject()
    assert project["build-system"]["build-backend"] == "scikit_build_core.build"
    assert project["tool"]["scikit-build"]["wheel"]["packages"] == ["python/flashrnn"]
    markers = " ".join(project["tool"]["pytest"]["ini_options"]["markers"])
    assert "gpu:" in markers and "slow:" in markers


@pytest.mark.parametrize("script", ["ci/build_wheel.sh", "ci/test.sh", "ci/device_wheel_check.sh", ".ci/run"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(_source_file(script))], check=True)


def test_repair_in_the_script_matches_the_configuration():
    script = _source_file("ci/build_wheel.sh").read_text()
    assert "auditwheel repair --exclude libcuda.so.1" in script


def test_workflow_builds_wheels_and_sdist_on_tags_and_uploads_them():
    text = _source_file(".github/workflows/wheels.yml").read_text()
    triggers = text.split("\njobs:")[0]
    assert re.search(r"^\s+tags:\s*\[\"v\*\"\]", triggers, re.M), "the workflow does not run on tags"
    assert "pypa/cibuildwheel@" in text and "ci/build_wheel.sh sdist" in text
    assert text.count("actions/upload-artifact@") >= 2
    assert "bash ci/test.sh" in text
    # The action's cibuildwheel is the one ci/test.sh checks this configuration with.
    action = re.search(r"pypa/cibuildwheel@v([\d.]+)", text).group(1)
    assert f'FLASHRNN_CIBUILDWHEEL_VERSION:-{action}}}' in _source_file("ci/test.sh").read_text()


def _wheel() -> Path:
    if not WHEEL:
        pytest.skip("FLASHRNN_WHEEL is not set (ci/test.sh sets it)")
    return Path(WHEEL)


def test_wheel_size_and_contents():
    wheel = _wheel()
    assert wheel.stat().st_size <= MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size} bytes"
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if re.fullmatch(r"flashrnn/_C\.cpython-\d+-x86_64-linux-gnu\.so", n)], names
    assert "flashrnn/__init__.py" in names
    assert not [n for n in names if n.endswith((".a", ".o", ".cu", ".cuh"))], names
    # Nothing vendored by auditwheel: the CUDA runtime is inside _C, the driver stays the user's.
    assert not [n for n in names if ".libs/" in n], names


def test_wheel_core_needs_no_cuda_library(tmp_path):
    elffile = pytest.importorskip("elftools.elf.elffile")
    wheel = _wheel()
    with zipfile.ZipFile(wheel) as z:
        module = next(n for n in z.namelist() if n.startswith("flashrnn/_C") and n.endswith(".so"))
        path = Path(z.extract(module, tmp_path))
    with path.open("rb") as f:
        dynamic = elffile.ELFFile(f).get_section_by_name(".dynamic")
        needed = [t.needed for t in dynamic.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
    assert not [n for n in needed if re.match(r"lib(cu|nv)", n)], needed
    assert set(needed) <= {"libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6", "libdl.so.2",
                           "librt.so.1", "libpthread.so.0", "ld-linux-x86-64.so.2"}, needed


def test_auditwheel_show_lists_no_cuda_library():
    wheel = _wheel()
    exe = shutil.which("auditwheel")
    if exe is None:
        pytest.skip("auditwheel is not installed")
    out = subprocess.run([exe, "show", str(wheel)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "manylinux_" in out.stdout
    assert not re.search(r"lib(cu|nv)\w*\.so", out.stdout), out.stdout


installed = pytest.mark.skipif(os.environ.get("FLASHRNN_EXPECT_INSTALLED") != "1",
                               reason="checks an installed wheel (FLASHRNN_EXPECT_INSTALLED=1)")


@installed
def test_imported_from_the_installed_wheel_not_the_source_tree():
    path = Path(flashrnn.__file__).resolve()
    assert "site-packages" in path.parts, path
    assert not (path.parents[2] / "CMakeLists.txt").exists(), path


@installed
def test_installed_core_has_the_cuda_kernels_for_every_arch():
    info = flashrnn.build_info()
    assert info["with_cuda"], info
    assert ",".join(info["cuda_archs"]) == os.environ["FLASHRNN_EXPECT_ARCHS"], info
    assert info["version"] == flashrnn.__version__
    assert info["fused_head_dims"]["bfloat16"], info


@installed
def test_python_m_flashrnn_info_reports_the_build():
    out = subprocess.run([sys.executable, "-m", "flashrnn", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"flashrnn {flashrnn.__version__}" in out.stdout
    for arch in flashrnn.build_info()["cuda_archs"]:
        assert arch in out.stdout, out.stdout


def test_build_without_cuda_says_so_and_the_cuda_backends_explain(tmp_path):
    """The nvcc-missing branch (forced with FLASHRNN_WITH_CUDA=OFF): the build succeeds, warns
    loudly, and the CUDA backends raise an error that says the package was built without CUDA."""
    try:
        import cmake as cmake_package  # PyPI's cmake, as pip's build isolation uses
        cmake = str(Path(cmake_package.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        cmake = shutil.which("cmake")
    try:
        import pybind11
    except ImportError:
        pybind11 = None
    if cmake is None or pybind11 is None or shutil.which("c++") is None:
        pytest.skip("needs cmake, pybind11 and a C++ compiler (not in the toolchain-free CI venv)")
    version = re.search(r"(\d+)\.(\d+)", subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout)
    if version is None or tuple(map(int, version.groups())) < (3, 26):
        pytest.skip(f"CMakeLists.txt needs CMake >= 3.26; {cmake} is older")
    root = Path(__file__).resolve().parents[1]
    if not (root / "CMakeLists.txt").exists():
        pytest.skip("needs the source tree")
    build = tmp_path / "build"
    configure = subprocess.run(
        [cmake, "-S", str(root), "-B", str(build), "-DFLASHRNN_WITH_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    assert "building WITHOUT the CUDA core" in configure.stderr
    built = subprocess.run([cmake, "--build", str(build), "--target", "_C"], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    package = tmp_path / "flashrnn"
    shutil.copytree(root / "python" / "flashrnn", package, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    for so in build.glob("_C*.so"):
        shutil.copy(so, package)
    probe = ("import flashrnn, torch\n"
             "assert flashrnn.build_info()['with_cuda'] is False\n"
             "from flashrnn import _core\n"
             "try:\n    _core.require_cuda_core('cuda_fused')\nexcept RuntimeError as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "built without CUDA" in run.stdout
