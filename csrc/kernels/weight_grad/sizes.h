// Host-side sizes of the weight-gradient scratch (shared by weight_grad.cuh and the launcher).
#pragma once
#include <cstdint>

namespace flashrnn::weight_grad {
// Rows of the db partial sums: enough parts to fill the GPU, each a few hundred rows.
inline int64_t bias_parts(int64_t rows) {
  const int64_t parts = rows / 256;
  return parts < 1 ? 1 : (parts > 64 ? 64 : parts);
}
}  // namespace flashrnn::weight_grad
