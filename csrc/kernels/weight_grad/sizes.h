// Host-side sizes of the weight-gradient scratch (shared by weight_grad.cuh and the launcher).
#pragma once
#include <cstdint>

namespace flashrnn::weight_grad {
constexpr int kTile = 64;          // dR tile (kTile x kTile outputs per CTA)
constexpr int64_t kTargetCtas = 512;  // about one wave of dR tiles on an H100 (132 SMs x 4 CTAs)
// Heads of the multi-CTA family (D >= 256) with a wave or more of tiles: about four waves. One wave
// and a bit leaves most SMs idle for the second (768 x 1: 576 tiles; B = 64 fwbw 22.9 -> 22.2 ms
// with 4 splits, B = 16 8.63 -> 8.46 ms). Heads up to 128 keep the single-wave target they were
// tuned with (a fifth of the partials' bytes).
constexpr int64_t kLargeHeadTargetCtas = 2048;

// dR tiles per problem: (Gr * D / 64) x (D / 64) x N.
inline int64_t r_tiles(int gates_r, int64_t heads, int64_t head_dim) {
  const int64_t t = (head_dim + kTile - 1) / kTile;
  return (gates_r * head_dim + kTile - 1) / kTile * t * heads;
}
// K (= T * B rows) splits of dR: enough CTAs to fill the GPU, each split >= 1024 rows. With one
// split the kernel writes dR directly; otherwise every split writes fp32 partial sums (at most
// kTargetCtas * 64 * 64 floats, 8 MB, for heads up to 128; at most 4 times dR for larger heads)
// that one more kernel adds in a fixed order.
inline int64_t r_splits(int64_t rows, int gates_r, int64_t heads, int64_t head_dim) {
  const int64_t tiles = r_tiles(gates_r, heads, head_dim);
  int64_t s = kTargetCtas / tiles;
  if (head_dim >= 256 && tiles >= kTargetCtas) s = (kLargeHeadTargetCtas + tiles - 1) / tiles;
  if (s > rows / 1024) s = rows / 1024;
  return s < 1 ? 1 : s;
}
// Floats of weight-gradient scratch: with a split K, the db partials, then the dR partials.
inline int64_t scratch_floats(int64_t rows, int gates_r, int gates_b, int64_t heads, int64_t head_dim) {
  const int64_t splits = r_splits(rows, gates_r, heads, head_dim);
  return splits > 1 ? splits * (gates_b + gates_r * head_dim) * heads * head_dim : 0;
}

// dR and db alongside the multi-CTA backward (alongside.cuh): steps per block of about 1024 dg rows,
// the fp32 running sums (one per output), the fewest CTAs worth it (fewer: the recurrence waits for
// them; H100, 768 x 1 fp16 B = 64 fwbw: 16 CTAs 26.7 ms, 24 CTAs 20.9 ms, none 22.5 ms).
constexpr int64_t alongside_block_steps(int64_t batch) { return batch >= 1024 ? 1 : 1024 / batch; }
inline int64_t alongside_floats(int gates_r, int gates_b, int64_t heads, int64_t head_dim) {
  return (gates_r * head_dim + gates_b) * heads * head_dim;
}
constexpr int kAlongsideMinCtas = 24;
// Floats of weight-gradient scratch in the multi-CTA family: room for either way.
inline int64_t multi_scratch_floats(int64_t rows, int gates_r, int gates_b, int64_t heads, int64_t head_dim) {
  const int64_t split = scratch_floats(rows, gates_r, gates_b, heads, head_dim);
  const int64_t sums = alongside_floats(gates_r, gates_b, heads, head_dim);
  return split > sums ? split : sums;
}
}  // namespace flashrnn::weight_grad
