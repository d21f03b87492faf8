"""flashrnn: fast LSTM, GRU, Elman and sLSTM recurrences for PyTorch (ahead-of-time compiled)."""
__version__ = "0.1.0"

from . import _ops  # noqa: F401  (registers torch.ops.flashrnn.*)
from ._cells import CELLS
from ._core import build_info, has_cuda_core
from .api import FlashRNNConfig, flashrnn

__all__ = ["flashrnn", "FlashRNNConfig", "build_info", "has_cuda_core", "CELLS", "__version__"]
