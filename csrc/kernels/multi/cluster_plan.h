// The cluster variant of the multi-CTA family (sm_90): one head's units are split over the CTAs
// of one thread-block cluster, 32 units per CTA, and the step's exchange (h_t forward, dg_t
// backward) goes through distributed shared memory: each CTA stores its part into every peer's
// shared memory with st.async, whose bytes complete a transaction-counting mbarrier in the
// receiver (one per buffer parity). No L2 round trip, no fence, no cluster-wide barrier per step,
// and no co-residency needed between clusters (each (head, batch group) is one cluster).
//
// A CTA holds R's slice for its units in shared memory (all of it: this variant does not read R
// from L2), 16 batch rows (the batch groups are the grid's y), two buffers of the exchanged rows
// (parity t % 2) and two of the cross-warp partial sums. Shapes that do not fit run the L2 variant.
//
// Host and device both include this header (pure arithmetic, no CUDA calls).
#pragma once

#include "../fused/tuning.h"

namespace flashrnn::cluster {

constexpr int kUnits = 32;     // hidden units per CTA
constexpr int kRows = 16;      // batch rows per CTA (one m16 tile)
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;  // = kRows * kUnits / 2: one thread per (row, unit pair)
constexpr int kKGroups = 4;    // backward: warp = (k-group, n-group): k-steps kg, kg + 4, ...
constexpr int kNGroups = 2;    // ... times 16 of the CTA's 32 units (2 n-tiles per gate)
constexpr int kForwardKGroups = 2;  // forward: k-steps kg, kg + 2, ...
constexpr int kForwardNGroups = 4;  // ... times 8 of the CTA's 32 units (1 n-tile per gate)
constexpr int kNtiles = kUnits / 8;
constexpr int kMaxSize = 16;   // the largest cluster sm_90 allows (above 8: non-portable)
constexpr int kFragBytes = 32 * 8;  // one B fragment of one n-tile, 8 bytes per lane
constexpr long long kMaxPolls = 1LL << 22;  // unsuccessful mbarrier polls before a trap (a broken launch)
static_assert(kThreads == kRows * kUnits / 2 && kWarps == kKGroups * kNGroups &&
              kWarps == kForwardKGroups * kForwardNGroups);

struct Plan {
  int size = 0;       // CTAs per cluster: head_dim / kUnits
  int groups = 0;     // batch groups of kRows rows
  int heads = 0;
  int a_row = 0;      // bytes per exchanged row (forward: h, D values; backward: dg, Gr * D values)
  int red_stride = 0; // floats per row of the partial sums
  int red_offset = 0;
  int r_offset = 0;
  int smem = 0;
  int threads = kThreads;
  int worker_groups = 0;  // wide backward: grid rows beyond the batch groups of CTAs computing dR and db alongside
};

// Fills `plan` for a forward (backward = false) or backward pass; nullptr, or why the shape does
// not run in this variant (the caller then uses the L2 variant).
constexpr const char* make_plan(Plan& p, bool backward, int gates_r, int esize, long long batch, long long heads,
                                long long head_dim, int smem_per_block) {
  if (head_dim % kUnits != 0) return "the head dim is not a multiple of 32";
  if (head_dim / kUnits < 2 || head_dim / kUnits > kMaxSize) return "the head needs 2 to 16 CTAs of 32 units";
  if (batch < 1 || heads < 1) return "there is no batch row or no head to run";
  const long long groups = (batch + kRows - 1) / kRows;
  if (groups > 65535 || heads > 65535) return "too many heads or batch groups for one grid";
  p.size = int(head_dim / kUnits);
  p.groups = int(groups);
  p.heads = int(heads);
  const int k_per_step = esize == 4 ? 8 : 16;
  const int ksteps = int((backward ? gates_r : 1) * head_dim / k_per_step);
  const int tiles = backward ? kNtiles : gates_r * kNtiles;  // B fragments per k-step
  p.a_row = fused::row_bytes(int((backward ? gates_r : 1) * head_dim), esize);
  // Rows of partial sums: 8 floats more than a multiple of 32, so that the 8-byte stores of a
  // fragment's rows g (and the pointwise threads' 8-byte loads) spread over all banks.
  p.red_stride = fused::round_up_c((backward ? 1 : gates_r) * kUnits, 32) + 8;
  p.red_offset = 2 * kRows * p.a_row;
  p.r_offset = p.red_offset + 2 * (backward ? kKGroups : kForwardKGroups) * kRows * p.red_stride * 4;  // two buffers
  p.smem = p.r_offset + ksteps * tiles * kFragBytes;
  if (p.smem > smem_per_block - fused::kSmemReserve) return "R's slice does not fit one CTA's shared memory";
  return nullptr;
}

// The wide kernels (cluster_wide_forward.cuh, cluster_wide_backward.cuh) for heads whose 32-unit
// slices need more than 16 CTAs (768 x 1: 24): 48 units per CTA in 12 warps, and R's slice partly
// in registers. Forward: warp = (k-group of 2, 8-unit tile), one tile of every gate at half of the
// k-steps; backward: warp = (k-group of 4, pair of 8-unit tiles) at a quarter of K = gates x D
// (two tiles per warp halve the stage's reads against one: each A fragment feeds two products).
// The first wide_register_ksteps() of a warp's k-steps are held in registers, the rest in shared
// memory. (One tile per backward warp at half of K measured 768 x 1 B = 16 fwbw 21.3 against 12.4 ms.)
constexpr int kWideUnits = 48;
constexpr int kWideTiles = kWideUnits / 8;
constexpr int kWideWarps = 12;
constexpr int kWideThreads = kWideWarps * 32;  // = kRows * kWideUnits / 2: one per (row, unit pair)
constexpr int kWideMaxDim = kMaxSize * kWideUnits;  // 768
constexpr int kWideBwTiles = 2;  // backward: 8-unit tiles per warp
constexpr int kSmemOptIn = 232448;  // sm_90's per-block opt-in limit (227 KB), for the count below
constexpr int kWideStaticSmem = 256;  // the kernels' static shared memory (mbarriers, peer windows), at most
static_assert(kWideThreads == kRows * kWideUnits / 2 && kWideTiles % kWideBwTiles == 0);

constexpr int wide_kgroups(bool backward) { return backward ? kWideWarps / (kWideTiles / kWideBwTiles) : 2; }
constexpr int wide_frags(bool backward, int gates_r) { return backward ? kWideBwTiles : gates_r; }  // per warp and k-step
// k-steps of each k-group (the last may have fewer): ksteps = (forward: 1, backward: gates) * D / 16.
constexpr int wide_part(int ksteps, bool backward) { return (ksteps + wide_kgroups(backward) - 1) / wide_kgroups(backward); }
constexpr int wide_red_stride(bool backward, int gates_r) {
  return fused::round_up_c((backward ? 1 : gates_r) * kWideUnits, 32) + 8;
}
// Bytes of shared memory before R's fragments: the exchanged rows (forward: two h buffers of 16
// rows; backward: one dg stage, reused behind a cluster barrier), one buffer of the k-groups'
// partial sums (one suffices: a warp writes it for the next step only after that step's rows have
// arrived from every CTA, this one included, whose threads send them after reading their sums).
constexpr int wide_head_bytes(bool backward, int gates_r, long long head_dim) {
  const int width = int((backward ? gates_r : 1) * head_dim);
  return (backward ? 1 : 2) * kRows * fused::row_bytes(width, 2) +
         wide_kgroups(backward) * kRows * wide_red_stride(backward, gates_r) * 4;
}
// k-steps of R per warp in registers: what a 768-wide head's slice leaves beyond sm_90's shared
// memory (forward LSTM / sLSTM 12 of 24 k-steps of 4 fragments: 96 registers, GRU 7, Elman 0;
// backward LSTM / sLSTM 30 of 48 k-steps of 2 fragments: 120 registers, GRU 13, Elman 0).
constexpr int wide_register_ksteps(bool backward, int gates_r) {
  const int frags = wide_frags(backward, gates_r);
  const int per_warp = wide_part((backward ? gates_r : 1) * kWideMaxDim / 16, backward) * frags;  // fragments at 768
  const int room = (kSmemOptIn - fused::kSmemReserve - kWideStaticSmem - wide_head_bytes(backward, gates_r, kWideMaxDim)) /
                   (kWideWarps * kFragBytes);
  return per_warp > room ? (per_warp - room + frags - 1) / frags : 0;
}

constexpr const char* make_wide_plan(Plan& p, bool backward, int gates_r, int esize, long long batch, long long heads,
                                     long long head_dim, int smem_per_block) {
  if (esize != 2) return "the wide kernels take 16-bit types";
  if (head_dim % kWideUnits != 0 || head_dim / kWideUnits < 2 || head_dim > kWideMaxDim)
    return "the head is not 2 to 16 CTAs of 48 units";
  if (batch < 1 || heads < 1) return "there is no batch row or no head to run";
  const long long groups = (batch + kRows - 1) / kRows;
  if (groups > 65535 || heads > 65535) return "too many heads or batch groups for one grid";
  p.size = int(head_dim / kWideUnits);
  p.groups = int(groups);
  p.heads = int(heads);
  p.threads = kWideThreads;
  const int frags = wide_frags(backward, gates_r);
  p.a_row = fused::row_bytes(int((backward ? gates_r : 1) * head_dim), esize);
  p.red_stride = wide_red_stride(backward, gates_r);
  p.red_offset = (backward ? 1 : 2) * kRows * p.a_row;
  p.r_offset = wide_head_bytes(backward, gates_r, head_dim);
  const int ksteps = int((backward ? gates_r : 1) * head_dim / 16);
  const int in_smem = wide_part(ksteps, backward) - wide_register_ksteps(backward, gates_r);
  p.smem = p.r_offset + kWideWarps * (in_smem > 0 ? in_smem : 0) * frags * kFragBytes;
  if (p.smem > smem_per_block - fused::kSmemReserve) return "R's slice does not fit shared memory and registers";
  return nullptr;
}

}  // namespace flashrnn::cluster
