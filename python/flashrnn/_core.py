"""Loads the compiled core (flashrnn._C) and answers what it can do."""
from __future__ import annotations

import functools

try:
    from . import _C
    _IMPORT_ERROR: str | None = None
except ImportError as error:  # a source tree without a build, or a broken install
    _C = None
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
