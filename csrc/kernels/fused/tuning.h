// Tile and shared-memory choices of the fused family, shared by the kernels and the launchers
// (host and device), so the two cannot disagree.
#pragma once

namespace flashrnn::fused {

constexpr int kBatchTile = 16;  // most batch rows of a CTA: two N tiles (8 rows) of m16n8k16

// Batch rows a CTA owns: 8 (one N tile: half the MMAs and half the pointwise work per warp,
// which bound the step) while the CTAs still fit the GPU in one wave, else 16.
constexpr int rows_per_cta(long long batch, long long heads, int sm_count) {
  return (batch + 7) / 8 * heads <= sm_count ? 8 : 16;
}
constexpr int kMaxStages = 4;   // prefetch ring depth when shared memory allows (2 steps ahead)
constexpr int kSmemReserve = 2 * 1024;  // left free of the device's per-block opt-in limit

// One warp per 8 hidden units: a warp owns units [8w, 8w + 8) of its head for every gate, so the
// pointwise step needs no exchange; lane 4g + q holds unit 8w + g of batch rows 2q, 2q + 1 (and
// 8 + 2q, 9 + 2q with 16 rows): the C fragment of a product with units as M and batch as N.
constexpr int warps(int head_dim) { return head_dim / 8; }

constexpr int round_up_c(int x, int m) { return (x + m - 1) / m * m; }

// A shared-memory row of `elems` values: padded so that consecutive rows start 8 elements apart
// modulo 128 bytes, which keeps pair accesses (lanes g = 0..7 on 8 rows) and ldmatrix row reads
// free of bank conflicts.
constexpr int row_bytes(int elems, int esize) { return round_up_c(elems * esize, 128) + 8 * esize; }

struct Layout {
  int a_row;        // bytes per batch row of the exchanged operand (h forward, dg backward)
  int ring_row;     // bytes per batch row of one prefetched step
  int side_offset;  // after the double buffer: forward, the output staging; backward, the warp
                    // pairs' partial products
  int ring_offset;  // where the ring starts

  constexpr int stage_bytes() const { return kBatchTile * ring_row; }
  // Ring depth that fits `smem_limit` bytes (the device's per-block opt-in limit); below 2 the
  // kernel does not fit this device and the launcher falls back to another family.
  constexpr int stages(int smem_limit) const {
    const int s = (smem_limit - kSmemReserve - ring_offset) / stage_bytes();
    return s > kMaxStages ? kMaxStages : s;
  }
  constexpr int bytes(int stages) const { return ring_offset + stages * stage_bytes(); }
};

// Forward: h double buffer [2][16][head_dim]; a double buffer of the step's other outputs
// (states after h, then the saved values) [2][outputs - 1][16][head_dim], from which they leave
// for global memory during the next step as whole rows (h leaves from the h buffer); ring of
// Wx_t tiles [stages][16][Gw * head_dim].
constexpr Layout forward_layout(int head_dim, int esize, int gates_w, int outputs) {
  Layout l{};
  l.a_row = row_bytes(head_dim, esize);
  l.ring_row = row_bytes(gates_w * head_dim, esize);
  l.side_offset = 2 * kBatchTile * l.a_row;
  l.ring_offset = l.side_offset + 2 * (outputs - 1) * kBatchTile * l.a_row;
  return l;
}

constexpr int kPairBytes = 2 * 32 * 8;  // a warp's partial products: 2 N tiles x 32 lanes x 2 floats

// Backward: dg double buffer [2][16][Gb * head_dim] (the product reads the first Gr gates; the
// rows leave for global memory from here during the next step); per warp, its partial
// products; ring of per-step tiles [stages][16][(K + 2S) * head_dim]:
// saved values of step t, states t-1, dL/dstates t.
constexpr Layout backward_layout(int head_dim, int esize, int gates_b, int saved, int states) {
  Layout l{};
  l.a_row = row_bytes(gates_b * head_dim, esize);
  l.ring_row = row_bytes((saved + 2 * states) * head_dim, esize);
  l.side_offset = 2 * kBatchTile * l.a_row;
  l.ring_offset = l.side_offset + warps(head_dim) * kPairBytes;
  return l;
}

// Head-dim buckets compiled for the fused family. A head dim that is a multiple of 16 runs in
// the smallest bucket that holds it (the tail of the bucket is masked). R of one head lives in
// registers: Gr * D^2 values over D/8 warps, i.e. Gr * D / 8 values per lane (128 bf16 for
// LSTM at D = 128; 128 fp32 at D = 64), which sets the largest bucket per dtype. (GRU's and
// Elman's forward pad R to an even number of gates: 4 and 2.)
constexpr int kBucketsHalf[] = {16, 32, 64, 128};
constexpr int kBucketsFloat[] = {16, 32, 64};

constexpr int bucket_for(int head_dim, bool is_float) {
  if (head_dim <= 0 || head_dim % 16 != 0) return 0;
  if (is_float) {
    for (int b : kBucketsFloat) if (head_dim <= b) return b;
  } else {
    for (int b : kBucketsHalf) if (head_dim <= b) return b;
  }
  return 0;
}

}  // namespace flashrnn::fused
