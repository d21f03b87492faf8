// The list of cells. Adding a cell: one header in this folder, one include and one line in
// FLASHRNN_FOR_EACH_CELL below, one entry in python/flashrnn/_cells.py.
#pragma once

#include <concepts>

#include "elman.cuh"
#include "gru.cuh"
#include "lstm.cuh"
#include "slstm.cuh"

namespace flashrnn::cells {

// What the generic kernels need from a cell; see elman.cuh for the smallest example.
template <class C>
concept Cell = requires {
  { C::kGatesR } -> std::convertible_to<int>;
  { C::kGatesW } -> std::convertible_to<int>;
  { C::kGatesB } -> std::convertible_to<int>;
  { C::kStates } -> std::convertible_to<int>;
  { C::kSaved } -> std::convertible_to<int>;
} && C::kGatesR <= C::kGatesB && C::kGatesW <= C::kGatesB;

}  // namespace flashrnn::cells

// X(CellType, CellKind enumerator)
#define FLASHRNN_FOR_EACH_CELL(X)      \
  X(::flashrnn::cells::Lstm, kLstm)    \
  X(::flashrnn::cells::Gru, kGru)      \
  X(::flashrnn::cells::Elman, kElman)  \
  X(::flashrnn::cells::Slstm, kSlstm)
