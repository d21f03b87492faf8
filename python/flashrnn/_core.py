"""Loads the compiled core (flashrnn._C) and answers what it can do."""
from __future__ import annotations

import functools

import pathlib
import sysconfig

try:
    from . import _C
    _IMPORT_ERROR: str | None = None
except ImportError as error:  # a source tree without a build, or a broken install
    _C = None
    _here = pathlib.Path(__file__).parent
    _built = [p.name for p in _here.glob("_C*") if p.suffix in (".so", ".pyd")]
    _wanted = "_C" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    if not _built:
        _IMPORT_ERROR = f"no compiled core in {_here} (a source checkout that was not built?)"
    elif _wanted not in _built:
        _IMPORT_ERROR = f"the compiled core in {_here} ({', '.join(_built)}) is for another Python; this one needs {_wanted}"
    else:
        _IMPORT_ERROR = str(error)


@functools.cache
def build_info() -> dict:
    """Version, CUDA archs and fused head-dim buckets of the installed core."""
    if _C is None:
        return {"version": None, "with_cuda": False, "cuda_archs": [], "cuda_runtime_version": 0,
                "fused_head_dims": {}, "import_error": _IMPORT_ERROR}
    return dict(_C.build_info())


def has_cuda_core() -> bool:
    return bool(build_info()["with_cuda"])


def require_cuda_core(backend: str):
    """The core module, or a RuntimeError that says why the CUDA backends are unavailable."""
    if _C is None:
        raise RuntimeError(f"flashrnn: backend={backend!r} needs the compiled core flashrnn._C, which "
                           f"could not be imported ({_IMPORT_ERROR}); use backend='vanilla'")
    if not has_cuda_core():
        raise RuntimeError(f"flashrnn: backend={backend!r} is not available: this flashrnn was built "
                           "without CUDA (nvcc was not found when the package was built); use "
                           "backend='vanilla' or reinstall with nvcc on PATH")
    return _C
