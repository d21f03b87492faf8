// The multi-CTA fused family: heads too large for one SM (above the fused head-dim buckets). This
// is the plan of its L2 variant (every device); cluster_plan.h plans the sm_90 cluster variant.
//
// One head's units are split over `slices` CTAs of 8 units each; together with its batch group
// (16 * mt rows) a CTA runs all T steps and exchanges each step's result with the other CTAs of
// its (head, batch group) through L2. The CTAs of a launch must be resident at once (the launch is
// cooperative). Heads and batch groups are independent of each other, so where all of them do not
// fit the device at once they run in waves: launches one after another, each over a rectangle of
// wave_groups x wave_heads (head, batch group) pairs that fits. A shape is refused only where one
// head's CTAs for one batch group do not fit.
//
// Shared memory of a CTA: the exchanged operand (forward: h_{t-1} in blocks [slice][rows][8 units];
// backward: `slots` buffers of dg_{t+1} chunks of blocks, a ring the step's chunks go through), the
// cross-warp reduction buffer, then as many k-steps of R's tensor-core fragments as fit; R's
// remaining k-steps are read from L2 each step.
//
// Host and device both include this header (pure arithmetic, no CUDA calls).
#pragma once

#include "../fused/tuning.h"

namespace flashrnn::multi {

constexpr int kUnits = 8;      // hidden units per CTA: the N of one m16n8 product per gate
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxCtasPerSm = 2;        // __launch_bounds__(kThreads, 2): <= 128 registers
constexpr int kOperandBudget = 100 * 1024;  // bytes for the staged operand rows (more where R fits beside)
constexpr int kMaxSlots = 3;            // backward stage buffers (the ring's size, stage_chunks)
constexpr int kFragBytes = 32 * 8;      // one B fragment (8 bytes per lane) of one n-tile
// Bytes a 16-bit element of h takes in the forward's tagged exchange (cooperative.cuh store_tagged:
// a unit pair's 8-byte word of data and tag): twice its own, in L2 and in the stage alike.
constexpr int kTaggedElementBytes = 4;
constexpr int tagged_block_bytes(int rows) { return rows * kUnits * kTaggedElementBytes; }
// Forward: a warp's first k-steps whose R fragments sit in registers (48 registers of 4 gates in
// 16-bit; fp32's 3xTF32 products need the registers themselves: more spill).
constexpr int register_steps(int esize) { return esize == 4 ? 2 : 6; }
// Backward, where a CTA has an SM to itself and the step's stage is one chunk: a warp's k-steps
// whose R fragments sit in registers (kernel launch bounds of one CTA per SM: 48 registers in
// 16-bit, all of R's slice at 768 x 1 LSTM, so the product reads only dg from shared memory; the
// launch asks for it only with FLASHRNN_BACKWARD_REGISTERS=1 so far: multi_backward.cuh).
constexpr int backward_register_steps(int esize) { return esize == 4 ? 8 : 24; }
constexpr int kSmemPerCtaReserve = 1024;  // the driver's per-CTA reservation

// Floats per row of the cross-warp reduction buffer: tiles * 8 partial sums, padded so that a
// warp's 8-byte stores and the pointwise threads' 8-byte loads hit every bank once per wavefront.
constexpr int red_stride(int tiles) { return tiles == 1 ? kUnits : fused::round_up_c(tiles * kUnits, 32) + 8; }

struct Plan {
  int mt = 0;                // 16-row m-tiles per CTA: 1, 2 or 4
  int groups = 0;            // batch groups of 16 * mt rows
  int slices = 0;            // CTAs per (head, batch group): head_dim / kUnits
  int heads = 0;
  int chunk_k = 0;           // backward: columns of dg_{t+1} (of Gr * D) per staged chunk (forward: D)
  int chunks = 0;            // chunks per step (forward: 1)
  int slots = 0;             // stage buffers the chunks cycle through (forward: 1)
  int a_row = 0;             // bytes per staged operand row of one buffer
  int red_offset = 0;        // cross-warp reduction buffer
  int r_offset = 0;          // R fragments
  int reg_ksteps = 0;        // k-steps 0.. whose R fragments the warps hold in registers
  int resident = 0;          // k-steps of R fragments held in shared memory (after reg_ksteps)
  int smem = 0;              // dynamic shared memory per CTA
  int wave_groups = 0;       // batch groups per launch (all of them where heads fit beside)
  int wave_heads = 0;        // heads per launch (1 where one head's groups need several launches)
  int group0 = 0;            // the first batch group and head of this launch (launch_cooperative)
  int head0 = 0;
  long long ctas = 0;        // CTAs of one launch (without dR and db CTAs)
  int cluster = 1;           // sm_90: CTAs per cluster that stage the exchanged rows together
                             // (multicast bulk copies, cooperative.cuh); 1: each CTA copies all
  bool alongside = false;    // backward: asks the launch for CTAs that compute dR and db alongside
  int dr_columns = 0;        // those CTAs, as grid columns beyond the slices (launch_plan sets it)
  bool producer = false;     // backward: a ninth warp stages the chunks (one CTA per SM, multi_backward.cuh)
  int copy_blocks = 0;       // multicast: blocks per bulk copy (copy_blocks(); forward 0: after every flag)
  bool tagged = false;       // forward, 16-bit: h travels in tagged words (cooperative.cuh), twice its bytes

  constexpr int rows() const { return 16 * mt; }
  constexpr int threads() const { return kThreads + (producer ? 32 : 0); }
  constexpr long long padded_batch() const { return (long long)groups * rows(); }
  constexpr int waves() const {
    return ((groups + wave_groups - 1) / wave_groups) * ((heads + wave_heads - 1) / wave_heads);
  }
};

// How the backward's L2 variant launches for a shape on a device (for tests and benchmarks).
struct BackwardLaunch {
  int alongside_ctas = 0;  // CTAs computing dR and db alongside (0: weight_grad_kernel after it)
  bool producer = false;   // a producer warp stages the chunks
  int cluster = 1;         // CTAs per cluster (multicast staging where above 1)
};

// 16-row m-tiles per CTA: as many as the batch needs (up to 4) while h rows fit the stage budget.
constexpr int m_tiles(long long batch, long long head_dim, int esize) {
  const long long one_row = fused::row_bytes(int(head_dim), esize);
  int mt = 1;
  while (mt < 4 && 16LL * mt < batch && 16LL * 2 * mt * one_row <= kOperandBudget) mt *= 2;
  return mt;
}

// Backward staging: dg_{t+1} travels in blocks, one per slice (the Gr gates x rows x 8 units
// that one CTA computes: multi_backward.cuh), and goes through shared memory in chunks of whole
// blocks (chunk_k = blocks * Gr * 8 columns), cycling through `slots` buffers, so that a chunk can
// be multiplied while the next ones land. `room`: bytes left beside the reduction buffer and all
// of R's fragments (the stage may take kOperandBudget even where R then partly stays in L2). In
// order of preference: the whole step in one buffer (as one chunk: B = 16 with one chunk per gate
// measured 5.3 -> 6.5 us per step, the per-chunk costs outweigh the overlap); with `ring`
// (multicast staging, sm_90) kMaxSlots buffers of the largest chunk that fits; one buffer of as
// many blocks as fit (each chunk waits for the previous one to be consumed: where every CTA copies
// all rows itself the copies are bound by L2 bandwidth, and the ring measured slower, 768 x 1
// B = 64 22.9 -> 25.9 us per step). A chunk's blocks divide the slices and make whole k-steps.
// `cap`: bytes the stage can have at most (beside the reduction buffer).
constexpr void stage_chunks(Plan& p, int gates_r, int esize, int room, int cap, bool ring) {
  int budget = room > kOperandBudget ? room : kOperandBudget;
  if (budget > cap) budget = cap;
  const int rows = p.rows(), block_k = gates_r * kUnits;
  auto usable = [&](int blocks) { return p.slices % blocks == 0 && blocks * block_k % (esize == 4 ? 8 : 16) == 0; };
  auto fits = [&](int blocks, int slots) { return (long long)slots * rows * blocks * block_k * esize <= budget; };
  auto set = [&](int blocks, int slots) {
    p.chunk_k = blocks * block_k;
    p.chunks = p.slices / blocks;
    p.slots = slots;
    p.a_row = p.chunk_k * esize;
  };
  if (fits(p.slices, 1)) return set(p.slices, 1);
  for (int b = p.slices / 2; ring && b >= 1; --b)
    if (usable(b) && fits(b, kMaxSlots)) return set(b, kMaxSlots);
  int blocks = p.slices;  // the most that fit, else the fewest usable (fill_memory then refuses)
  for (int b = p.slices; b >= 1; --b) {
    if (!usable(b)) continue;
    blocks = b;
    if (fits(b, 1)) break;
  }
  set(blocks, 1);
}

// make_plan's shared-memory layout for a launch of plan.ctas CTAs (its m-tiles, slices and waves chosen).
constexpr const char* fill_memory(Plan& p, bool backward, int gates_r, int esize, long long head_dim,
                                  int smem_per_block, int smem_per_sm, int sm_count, bool ring, bool tagged,
                                  bool registers) {
  const long long k_per_step = esize == 4 ? 8 : 16;
  const long long ksteps = (backward ? gates_r : 1) * head_dim / k_per_step;
  const int tiles = backward ? 1 : gates_r;
  const long long per_sm = (p.ctas + sm_count - 1) / sm_count;
  int budget = smem_per_sm / int(per_sm) - kSmemPerCtaReserve;
  if (budget > smem_per_block) budget = smem_per_block;
  budget -= fused::kSmemReserve;
  const int red_bytes = kWarps * 16 * red_stride(tiles) * 4;
  if (backward) {
    stage_chunks(p, gates_r, esize, budget - red_bytes - int(ksteps) * kFragBytes, budget - red_bytes,
                 ring);
  } else {
    p.chunk_k = int(head_dim);
    p.chunks = p.slots = 1;
    p.a_row = int(head_dim) * (tagged ? kTaggedElementBytes : esize);  // (in blocks of 8 units: no bank padding)
  }
  p.red_offset = p.slots * p.rows() * p.a_row;
  p.r_offset = p.red_offset + red_bytes;
  if (p.r_offset > budget) return "its CTAs do not fit the device's shared memory";
  // The warp (m-tile, k-group) keeps the R fragments of its first register_steps k-steps (k-group,
  // k-group + k-groups, ...) in registers: k-steps 0 .. reg_ksteps - 1 of every warp. The backward
  // only where its CTA has an SM to itself and the stage is one chunk (multi_backward.cuh).
  const bool backward_registers = registers && per_sm == 1 && p.chunks == 1;
  const long long in_registers = (long long)(backward ? (backward_registers ? backward_register_steps(esize) : 0)
                                                      : register_steps(esize)) *
                                 (kWarps / p.mt);
  p.reg_ksteps = int(in_registers < ksteps ? in_registers : ksteps);
  const long long fit = (budget - p.r_offset) / (tiles * kFragBytes);
  p.resident = int(fit < ksteps - p.reg_ksteps ? fit : ksteps - p.reg_ksteps);
  p.smem = p.r_offset + p.resident * tiles * kFragBytes;
  return nullptr;
}

// Fills `plan` for a forward (backward = false) or backward pass; returns nullptr, or why the shape
// cannot run in this family on this device. `ring`: the backward may stage through a ring of
// buffers (stage_chunks); `tagged`: the forward's h in tagged words (16-bit; its stage rows twice
// as long); `registers`: the backward may keep R's fragments in registers (fill_memory). esize:
// bytes per element; n-tiles per k-step: the forward multiplies h by every recurrent gate's slice
// (gates_r tiles), the backward multiplies dg by R^T restricted to the CTA's units (one tile).
constexpr const char* make_plan(Plan& p, bool backward, int gates_r, int esize, long long batch, long long heads,
                                long long head_dim, int smem_per_block, int smem_per_sm, int sm_count,
                                bool ring = false, bool tagged = false, bool registers = true) {
  p.tagged = tagged && !backward && esize == 2;
  if (head_dim % 16 != 0 || head_dim < 16) return "the head dim is not a multiple of 16";
  if (batch < 1 || heads < 1 || sm_count < 1) return "there is no batch row or no head to run";
  // Rows of the operand stage: one gate's worth must fit for 16 rows.
  const int one_row = fused::row_bytes(int(head_dim), esize);
  if (head_dim > (1 << 16) || 16LL * one_row > kOperandBudget) return "the head dim is too large for one CTA's stage";
  p.slices = int(head_dim / kUnits);
  if (heads > 65535 || (batch + 15) / 16 > 65535) return "too many heads or batch groups for one grid";
  p.heads = int(heads);
  // In order of preference: the m-tiles the batch asks for (m_tiles), the fewest waves, up to
  // kMaxCtasPerSm CTAs per SM, else (where their shared memory does not fit two per SM) one per SM;
  // then fewer m-tiles (a smaller stage).
  const char* why = "one head's CTAs for one batch group do not fit the GPU at once (at most 2 per SM)";
  for (p.mt = m_tiles(batch, head_dim, esize); p.mt >= 1; p.mt /= 2) {
    p.groups = int((batch + p.rows() - 1) / p.rows());
    for (int cap = kMaxCtasPerSm; cap >= 1; --cap) {
      const long long pairs = (long long)cap * sm_count / p.slices;  // (head, batch group) pairs at once
      if (pairs < 1) break;
      p.wave_groups = int(pairs < p.groups ? pairs : p.groups);
      p.wave_heads = p.wave_groups < p.groups ? 1 : int(pairs / p.groups < heads ? pairs / p.groups : heads);
      p.ctas = (long long)p.slices * p.wave_groups * p.wave_heads;
      why = fill_memory(p, backward, gates_r, esize, head_dim, smem_per_block, smem_per_sm, sm_count, ring, p.tagged,
                        registers);
      if (why == nullptr) return nullptr;
    }
  }
  return why;
}

// CTAs per cluster for the multicast staging: the largest cluster size up to `largest` (16, 8, 4
// or 2) that divides `blocks` (the blocks of a chunk: the slices, or fewer in the backward); 1 if
// none does.
constexpr int multicast_cluster(int blocks, int largest) {
  for (int c = largest; c >= 2; c /= 2)
    if (blocks % c == 0) return c;
  return 1;
}

// An exchange of `columns` elements of `bytes` each per batch row, [2 parities][heads][padded
// batch][columns] in blocks, in 32-bit words, for any m-tiles make_plan picks (the batch padded to
// 64 rows).
constexpr long long exchange_words_of(long long batch, long long heads, long long columns, int bytes) {
  const long long padded = (batch + 63) / 64 * 64;
  return 2 * heads * padded * (columns * bytes / 4);
}

// Forward scratch: the h exchange, [2 parities][heads][batch group][slice][rows][8 units] (the
// flags follow: flag_words()); in 16-bit room for the tagged words.
constexpr long long exchange_words(long long batch, long long heads, long long head_dim, int esize) {
  return exchange_words_of(batch, heads, head_dim, esize == 2 ? kTaggedElementBytes : esize);
}

// The multicast staging of `count` blocks (the forward's h_{t-1}: every slice's; the backward's
// chunk of dg): CTA rank r of a cluster stages the r-th range of count / cluster blocks, in bulk
// copies of `wanted` blocks each (a copy waits only for the flags of its own blocks;
// multi::multicast_ranges): the largest divisor of the range up to `wanted` and up to 32 (a lane
// polls each flag). 0 where `wanted` is 0 (the forward: each CTA waits for every flag, then copies
// its range) or there is no cluster.
constexpr int copy_blocks(int count, int cluster, int wanted) {
  if (wanted == 0 || cluster < 2) return 0;
  const int range = count / cluster;
  int blocks = 1;
  for (int b = 1; b <= range && b <= 32; ++b)
    if (range % b == 0 && b <= wanted) blocks = b;
  return blocks;
}

// The backward's dg exchange (multi_backward.cuh): [2 parities][heads][padded batch][Gr * D]
// elements in blocks, after the progress flags, 16-byte aligned (4 words of slack).
constexpr long long dg_exchange_words(long long batch, long long heads, long long head_dim, int gates_r, int esize) {
  return exchange_words_of(batch, heads, gates_r * head_dim, esize) + 4;
}

// Progress flags (forward and backward): one 32-bit counter per CTA [head][batch group][slice],
// for any m-tiles make_plan picks (at most one batch group per 16 rows), kFlagSpacing words apart:
// a 128-byte line each. (Dense, the 96 flags of 768 x 1 shared three lines, which every CTA's
// pollers and writers hit every step: on the H100 1024 x 1 bf16 forward 2.91 -> 2.78 ms, 768
// 2.36 -> 2.30, with the forward's other changes of 0ffad02; perf-log.md, nineteenth session.)
constexpr int kFlagSpacing = 32;
constexpr long long flag_words(long long batch, long long heads, long long head_dim) {
  return heads * ((batch + 15) / 16) * (head_dim / kUnits) * kFlagSpacing;
}

}  // namespace flashrnn::multi
