"""The cell table: gate/state counts of every cell, shared by the Python layer and the core.

Gate bookkeeping (spec section 2): gates are ordered over the Gb "total" gates; R feeds the first
Gr of them, Wx the last Gw, and every gate has a bias. The codes match csrc/common/params.h.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    name: str
    code: int          # CellKind in csrc/common/params.h
    gates_r: int       # Gr: gates fed by R h_{t-1}
    gates_w: int       # Gw: gates fed by Wx (the last Gw of the Gb)
    gates_b: int       # Gb: all gates; each has a bias
    states: int        # S
    saved: int         # K: per-unit values saved for the backward pass
    state_names: tuple[str, ...]
    gate_names: tuple[str, ...]


CELLS: dict[str, CellSpec] = {
    "lstm": CellSpec("lstm", 0, 4, 4, 4, 2, 4, ("h", "c"), ("i", "f", "z", "o")),
    "gru": CellSpec("gru", 1, 3, 3, 4, 1, 4, ("h",), ("g", "r", "z", "n")),
    "elman": CellSpec("elman", 2, 1, 1, 1, 1, 1, ("h",), ("g",)),
    "slstm": CellSpec("slstm", 3, 4, 4, 4, 4, 5, ("h", "c", "n", "m"), ("i", "f", "z", "o")),
}
