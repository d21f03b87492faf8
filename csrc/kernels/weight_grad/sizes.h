// Host-side sizes of the weight-gradient scratch (shared by weight_grad.cuh and the launcher).
#pragma once
#include <cstdint>

namespace flashrnn::weight_grad {
constexpr int kTile = 64;          // dR tile (kTile x kTile outputs per CTA)
constexpr int64_t kTargetCtas = 512;  // about four waves of dR tiles on an H100

// dR tiles per problem: (Gr * D / 64) x (D / 64) x N.
inline int64_t r_tiles(int gates_r, int64_t heads, int64_t head_dim) {
  const int64_t t = (head_dim + kTile - 1) / kTile;
  return (gates_r * head_dim + kTile - 1) / kTile * t * heads;
}
// K (= T * B rows) splits of dR: enough CTAs to fill the GPU, each split >= 1024 rows. With one
// split the kernel writes dR directly; otherwise every split writes fp32 partial sums (at most
// kTargetCtas * 64 * 64 floats, 8 MB) that one more kernel adds in a fixed order.
inline int64_t r_splits(int64_t rows, int gates_r, int64_t heads, int64_t head_dim) {
  int64_t s = kTargetCtas / r_tiles(gates_r, heads, head_dim);
  if (s > rows / 1024) s = rows / 1024;
  return s < 1 ? 1 : s;
}
// Floats of weight-gradient scratch: with a split K, the db partials, then the dR partials.
inline int64_t scratch_floats(int64_t rows, int gates_r, int gates_b, int64_t heads, int64_t head_dim) {
  const int64_t splits = r_splits(rows, gates_r, heads, head_dim);
  return splits > 1 ? splits * (gates_b + gates_r * head_dim) * heads * head_dim : 0;
}
}  // namespace flashrnn::weight_grad
