// Multi-CTA fused backward (plan.h): CTA (slice, batch group, head) owns 8 units of the head for
// 16 * mt batch rows and runs the T steps in reverse.
//
// Per step t = T..1: the gradient carried into h_t needs (dg_{t+1} R) at this CTA's units, i.e.
// dg_{t+1} of every unit of the head: the CTAs write dg to the dg output (also dWx, it feeds dR/db)
// and, the recurrent gates, into an exchange in L2 in blocks (one per CTA, contiguous), and set a
// per-CTA progress counter (release); the blocks are staged from L2 into shared memory chunk by
// chunk (plan.h stage_chunks: the whole step at once where it fits, else a ring of three buffers),
// each once its CTA's counter shows it (acquire), and multiplied by R^T restricted to their units
// (warp = (m-tile, k-group), partial sums meet in shared memory). R's fragments sit in shared
// memory, or (FLASHRNN_BACKWARD_REGISTERS=1, not yet measured), where a CTA has an SM to itself and
// a step is one chunk, in registers as far as they go (kRegisters: at 768 x 1 B = 16 all of them,
// so the product reads only dg from shared memory: 144 -> 96 KB per step and CTA).
// Then 4 threads per batch row run the cell's backward on 2 units each. dR and db are reduced after
// this kernel (weight_grad.cuh), deterministically. dg is published as exchanged (one barrier + one
// release per step), so the payload is the rounded dg that the single-CTA kernels multiply too.
// On sm_90 the blocks are staged by multicast as in the forward (multi_forward.cuh): each CTA of a
// cluster takes a range of a chunk's blocks, polls their counters together and multicasts the
// range in one copy (multi::multicast_ranges; one copy per block, as their counters showed them,
// was slower). A buffer refilled (768 x 1 B = 64: eight chunks through three buffers) must be done
// with in every CTA of the cluster first: each CTA arrives on every peer's `empty` mbarrier of it
// after a block barrier, and the warp that issues the refill waits on its own. (Before: one buffer
// and a cluster barrier after each chunk, 18.4 us per step; the ring 17.2. Warps that wait for
// their own refills instead of a block barrier per chunk measured 18.0.) Where every CTA has an SM
// to itself, a ninth warp (kProducer) waits for the flags and the `empty` arrivals and issues
// every chunk instead, and each consumer warp arrives on every peer's `empty` once done with a
// buffer: no block barrier per chunk (768 x 1 B = 64 fp16 fwbw 20.9 -> 20.6 ms, GRU 18.5 -> 17.3).
// The remote arrives release at cluster scope (at CTA scope they would not order this CTA's reads
// before a peer's refill); without a producer that costs 1024 x 1 B = 64 5% (57.4 -> 60.2 ms).
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "../weight_grad/alongside.cuh"
#include "../weight_grad/sizes.h"
#include "../weight_grad/weight_grad.cuh"
#include "cluster_backward.cuh"
#include "cluster_launch.h"
#include "cluster_wide_backward.cuh"
#include "cooperative.cuh"
#include "pointwise.cuh"

namespace flashrnn {

// kProducer: launched with a ninth warp (plan.producer) that stages the chunks, one CTA per SM
// (registers: two CTAs of nine warps would leave 96 per thread, and the code spills at that).
// kRegisters: one CTA per SM, the warps' first k-steps of R in registers (plan.reg_ksteps > 0;
// opt-in with FLASHRNN_BACKWARD_REGISTERS=1 until it has run on a GPU: perf-log.md, twenty-first
// session).
template <class Cell, class T, bool kProducer, bool kRegisters = false>
__global__ void __launch_bounds__(multi::kThreads + (kProducer ? 32 : 0),
                                  kProducer || kRegisters ? 1 : multi::kMaxCtasPerSm)
    multi_backward_kernel(const BackwardParams p, const multi::Plan plan, unsigned* flags) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB;
  constexpr int kThreads = multi::kThreads, kChains = 4;
  constexpr int kUnitBytes = multi::kUnits * int(sizeof(T));  // a block's row of one gate
  static_assert(!(kProducer && kRegisters), "the plan keeps R in registers only for one chunk per step");
  static_assert(multi::backward_register_steps(2) % kChains == 0 && multi::backward_register_steps(4) % kChains == 0,
                "the chains continue past the register k-steps in turn");

  extern __shared__ __align__(128) unsigned char smem[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  if constexpr (kProducer) {  // multicast needs sm_90: the launch never picks it below (and the
    __trap();                 // rest of its code stays out of the sm_80/86 binaries)
    return;
  }
#endif
  if (blockIdx.x >= plan.slices) {  // a CTA of dR and db alongside (weight_grad/alongside.cuh)
    if (threadIdx.x >= kThreads) return;  // (the producer warp of the recurrent CTAs' launch)
    if constexpr (sizeof(T) == 2) {
      const int columns = plan.dr_columns, worker = (blockIdx.z * gridDim.y + blockIdx.y) * columns + blockIdx.x - plan.slices;
      alongside::weight_grad_alongside<T>(p, Cell::kGatesR, Cell::kGatesB, worker, columns * gridDim.y * gridDim.z,
                                          flags, plan.heads * plan.groups * plan.slices, smem);
    }
    return;
  }
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int rows = plan.rows(), mt_count = plan.mt, k_groups = multi::kWarps / mt_count;
  const int group = plan.group0 + int(blockIdx.y);  // this launch's wave starts at (group0, head0)
  const int64_t u0 = int64_t(blockIdx.x) * multi::kUnits, b0 = int64_t(group) * rows, n = plan.head0 + blockIdx.z;
  const int valid_rows = int(B - b0 < rows ? B - b0 : rows);
  const T* r = static_cast<const T*>(p.r);

  // dg_s travels in blocks, one per slice (the CTA that computes it): [gate < Gr][row][8 units],
  // block_bytes each, in the exchange (16-byte aligned after the flags) at
  // [parity s % 2][head][group][slice], and in the stage buffers (plan.slots, a chunk of
  // plan.chunk_k / (Gr * 8) blocks each). So K runs over (slice, gate, unit): K-row kk of the
  // product is gate (kk / 8) % Gr of unit (kk / 8) / Gr * 8 + kk % 8. A parity is written again
  // (dg_{s-2}) only after all of dg_{s-1} has reached the writer, each block of it published after
  // its CTA had staged all of dg_s.
  unsigned char* stage = smem;
  float* red = reinterpret_cast<float*>(smem + plan.red_offset);  // [k-group][row][unit]
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset);     // [k-step][lane]
  const int slot_bytes = rows * plan.a_row, block_bytes = kGr * rows * kUnitBytes;
  const int blocks = plan.chunk_k / (kGr * multi::kUnits);  // per chunk
  unsigned char* xdata = multi::dg_exchange(flags, B, N, D);
  auto block = [&](int64_t s, int slice) {  // dg_s's block of `slice` for this (head, group)
    return xdata + ((((s & 1) * N + n) * plan.padded_batch() + b0) * kGr * D * int64_t(sizeof(T))) +
           int64_t(slice) * block_bytes;
  };

  // B fragments of R at k-step ks, columns = this CTA's input units: element (kk, jj) =
  // R[gate, n, unit, u0 + jj] of K-row kk's gate and unit (above).
  auto r_row = [&](int kk) {
    const int gb = kk / multi::kUnits;
    return r + ((int64_t(gb % kGr) * N + n) * D + gb / kGr * multi::kUnits + kk % multi::kUnits) * D + u0;
  };
  auto r_fragment = [&](int ks, uint32_t (&f)[2]) {
    M::load_b_kmajor(f, r_row(ks * M::kK), r_row(ks * M::kK + M::kK / 2), D);
  };
  const bool is_producer = kProducer && warp == multi::kWarps;  // the ninth warp (below)
  // k-steps 0 .. reg_ksteps - 1 in registers (this warp's: kg + i * k_groups), the next `resident`
  // in shared memory (rs[k-step - reg_ksteps]), the rest read from L2 when multiplied.
  const int reg_ksteps = kRegisters ? plan.reg_ksteps : 0, resident_end = reg_ksteps + plan.resident;
  constexpr int kRegSteps = kRegisters ? multi::backward_register_steps(int(sizeof(T))) : 1;
  uint32_t rr[kRegSteps][2] = {};
  if (!p.recurrent_cut && !is_producer) {
    for (int ks = warp; ks < plan.resident; ks += multi::kWarps) {
      uint32_t f[2];
      r_fragment(reg_ksteps + ks, f);
      rs[ks * 32 + lane] = make_uint2(f[0], f[1]);
    }
    if constexpr (kRegisters) {
      const int kg = warp / mt_count;  // (the warp's k-group, as in recurrent() below)
#pragma unroll
      for (int i = 0; i < kRegSteps; ++i)
        if (kg + i * k_groups < reg_ksteps) r_fragment(kg + i * k_groups, rr[i]);
    }
  }
  __syncthreads();  // rs is complete
  // Multicast staging: full[s] counts the bytes of the chunk landing in buffer s; empty[s] the
  // cluster's CTAs that have consumed its chunk (each CTA arrives on every peer's after each
  // chunk): every use of a buffer but its first waits for it, as a block waits only for its own
  // CTA's flag (every CTA of the cluster issues some blocks of every chunk, so no CTA arrives twice
  // on an empty[s] before its phase completes).
  __shared__ uint64_t full[multi::kMaxSlots], empty[multi::kMaxSlots];
  unsigned empty_parity = 0, used = 0;  // bit s: the parity of empty[s]'s next phase; whether s was filled
  const bool multicast = plan.cluster > 1 && !p.recurrent_cut;
  // With a producer warp (plan.producer: buffers refilled within a step, multicast), it waits for
  // the flags and issues every chunk; each consumer warp arrives on every peer's empty[s] itself
  // once done with a buffer, so the eight warps meet only for the partial sums.
  const bool producer = kProducer && multicast;  // (the launch picks kProducer only with multicast)
  if (multicast) multi::start_multicast(full, plan.slots, empty, plan.cluster * (producer ? multi::kWarps : 1));
  const int consumers = producer ? kThreads : 0;  // the threads that meet (0: the whole block)
  // The chunks go through the buffers in order over all steps: put is the next buffer to stage
  // into, take the next to multiply (buffer, and the parity of its use). (64-bit divisions here
  // cost ~1000 cycles per chunk.)
  multi::RingCursor put{plan.slots}, take{plan.slots};

  unsigned* group_flags = multi::flag_at(flags, (n * plan.groups + group) * plan.slices);
  const int prow = tid / 4, pair = tid % 4;
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  // This thread's place in a block (its row of gate 0; a gate is rows * kUnitBytes further).
  const int in_block = prow * kUnitBytes + 2 * pair * int(sizeof(T));
  if (!p.recurrent_cut && !pw && prow < rows)  // the exchange's rows past the batch are zeros
    for (int par = 0; par < 2; ++par)
#pragma unroll
      for (int k = 0; k < kGr; ++k)
        store_pair(reinterpret_cast<T*>(block(par, int(blockIdx.x)) + k * rows * kUnitBytes + in_block), 0.f, 0.f);

  // rec = (dg_s R)[prow, unit..unit+1] for step s (dg_s is stored at dg index s - 1), once every
  // CTA of this (head, group) has published step s. Called by all consumer threads (it synchronizes).
  // Chunk j (blocks j * blocks ... of dg_s) is staged `ahead` chunks before it is multiplied:
  // plan.slots of them are in flight while the first is multiplied.
  const int chunks = plan.chunks, ahead = plan.slots < chunks ? plan.slots : chunks;
  // Without the producer warp, chunk j's multicast is issued by warp 7 - j % 8: the warps take
  // turns from the last, past the pointwise rows (the buffer's wait below is on the same warp).
  auto issuing_warp = [](int j) { return multi::kWarps - 1 - j % multi::kWarps; };
  // Stages chunk j of dg_s into buffer put.slot: multicast (this CTA's range of blocks once their
  // CTAs' flags show them, issued by the producer warp or issuing_warp(j), once every CTA of the
  // cluster is done with the buffer's last chunk), else every thread copies all blocks (the flags
  // were waited for). Called by the issuing warp(s).
  auto stage_chunk = [&](int64_t s, int j) {
    unsigned char* dst = stage + put.slot * slot_bytes;
    const unsigned char* from = block(s, j * blocks);
    if (multicast) {
      const int warp_issuing = producer ? multi::kWarps : issuing_warp(j);
      if (used >> put.slot & 1u) {
        if (warp == warp_issuing) mbar_wait(&empty[put.slot], empty_parity >> put.slot & 1u, cluster::kMaxPolls);
        empty_parity ^= 1u << put.slot;
      }
      used |= 1u << put.slot;
      multi::multicast_ranges(dst, from, unsigned(block_bytes), blocks, plan.copy_blocks, plan.cluster, &full[put.slot],
                              warp == warp_issuing ? 0 : -1, 1,
                              multi::FlagsReady{multi::flag_at(group_flags, j * blocks), unsigned(steps - s + 1),
                                                plan.copy_blocks});
    } else {
      multi::copy_to_shared(dst, from, blocks * block_bytes);
    }
    put.next();
  };
  // The producer warp's part of the steps s = T..1: the chunks, each as above.
  if (producer && is_producer) {
    for (int64_t s = steps; s >= 1; --s)
      for (int j = 0; j < chunks; ++j) stage_chunk(s, j);
    cluster_sync();  // as the consumers below
    return;
  }
  auto recurrent = [&](int64_t s, float (&rec)[2]) {
    if (!multicast) multi::wait_for_flags(group_flags, plan.slices, unsigned(steps - s + 1));  // every CTA's dg_s is visible
    const int mt = warp % mt_count, kg = warp / mt_count;
    if (!producer)
      for (int j = 0; j < ahead; ++j) stage_chunk(s, j);
    float acc[kChains][4] = {};
    for (int j = 0; j < chunks; ++j) {
      const int slot = take.slot;
      if (multicast) {
        mbar_wait<Wait::kCopies>(&full[slot], take.phase, cluster::kMaxPolls);
      } else {
        const int staged = j + ahead < chunks ? j + ahead : chunks;  // chunks issued so far
        cp_async_wait_at_most(staged - j - 1);
        __syncthreads();  // chunk j is staged
      }
      const uint32_t a_src = multi::block_a_address(stage + slot * slot_bytes, rows, mt * 16, kUnitBytes);
      const int ks0 = j * plan.chunk_k / M::kK, count = plan.chunk_k / M::kK;
      // The k-steps of R in registers first (one chunk: they are its first), unrolled, each A
      // fragment loaded kAhead k-steps before its product (ldmatrix and mma are volatile asm: they
      // run in the order written). Chain c accumulates the warp's k-steps i with i % kChains == c
      // in order, in every loop here: the sums are the same whichever of them holds a k-step's R.
      if constexpr (kRegisters) {
        constexpr int kAhead = 3;
        uint32_t a[kAhead + 1][4];
        auto load_a = [&](int i) {  // (a k-step past the register ones loads k-step kg, unused)
          const int ks = kg + i * k_groups;
          ldmatrix_x4(a[i % (kAhead + 1)], a_src + (ks < reg_ksteps ? ks : kg) * 32 * rows);
        };
#pragma unroll
        for (int i = 0; i < kAhead && i < kRegSteps; ++i) load_a(i);
#pragma unroll
        for (int i = 0; i < kRegSteps; ++i) {
          if (i + kAhead < kRegSteps) load_a(i + kAhead);
          if (kg + i * k_groups < reg_ksteps) M::mma(acc[i % kChains], a[i % (kAhead + 1)], rr[i], p.allow_tf32);
        }
      }
      auto multiply = [&](auto&& fragment) {
        for (int j0 = kg + reg_ksteps; j0 < count; j0 += kChains * k_groups) {
#pragma unroll
          for (int c = 0; c < kChains; ++c) {
            const int jj = j0 + c * k_groups;
            if (jj >= count) break;
            uint32_t a[4], f[2];
            ldmatrix_x4(a, a_src + jj * 32 * rows);
            fragment(ks0 + jj, f);
            M::mma(acc[c], a, f, p.allow_tf32);
          }
        }
      };
      auto resident = [&](int ks, uint32_t (&f)[2]) {
        const uint2 v = rs[(ks - reg_ksteps) * 32 + lane];
        f[0] = v.x;
        f[1] = v.y;
      };
      // A chunk held in shared memory gets a loop without the L2 path's address arithmetic.
      if (ks0 + count <= resident_end) {
        multiply(resident);
      } else {
        multiply([&](int ks, uint32_t (&f)[2]) {
          if (ks < resident_end) resident(ks, f);
          else r_fragment(ks, f);
        });
      }
      take.next();
      if (producer) {  // this warp is done with buffer `slot`: it tells every peer
        __syncwarp();
        if (lane < plan.cluster) arrive_remote(&empty[slot], unsigned(lane));
        continue;
      }
      __syncthreads();  // chunk j is consumed here
      if (multicast)  // every peer is told (by the last threads); the buffer's next issue waits for all
        if (const int peer = multi::kThreads - 1 - tid; peer < plan.cluster) arrive_remote(&empty[slot], unsigned(peer));
      if (j + ahead < chunks) stage_chunk(s, j + ahead);
    }
    float sum[4] = {};
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int c = 0; c < kChains; ++c) sum[e] += acc[c][e];
#pragma unroll
    for (int h = 0; h < 2; ++h)  // rows g and g + 8
      *reinterpret_cast<float2*>(red + (kg * rows + mt * 16 + g + 8 * h) * multi::kUnits + 2 * q) =
          make_float2(sum[2 * h], sum[2 * h + 1]);
    multi::meet(consumers);  // partial sums complete
    rec[0] = rec[1] = 0.f;
#pragma unroll
    for (int j = 0; j < multi::kWarps; ++j) {  // all loads issued together
      if (j >= k_groups) break;
      const float2 v = *reinterpret_cast<const float2*>(red + (j * rows + prow) * multi::kUnits + 2 * pair);
      rec[0] += v.x;
      rec[1] += v.y;
    }
  };

  multi::BackwardPair<Cell, T> cell(p, pb, n, unit, pw);

  for (int64_t t = steps; t >= 1; --t) {
    float rec[2] = {0.f, 0.f};
    if (t < steps && !p.recurrent_cut) recurrent(t + 1, rec);
    if (pw) {
      float dg[2][kGb];
      cell.template step<Math>(rec, dg);
      if (t > 1) cell.load_step(t - 1);  // (after the release instead: B = 16 0.2 us per step slower)
      cell.store_dg(t, dg);
      if (!p.recurrent_cut) {  // into this CTA's block of dg_t (rounded as stored: what the single-CTA kernels multiply)
        unsigned char* mine = block(t, int(blockIdx.x)) + in_block;
#pragma unroll
        for (int k = 0; k < kGr; ++k) store_pair(reinterpret_cast<T*>(mine + k * rows * kUnitBytes), dg[0][k], dg[1][k]);
      }
    }
    if (!p.recurrent_cut)  // dg_t is out
      multi::release_flag(multi::flag_at(group_flags, blockIdx.x), unsigned(steps - t + 1), consumers);
  }

  // dL/ds_0 = what reaches the initial states: carried paths + the gradient on states[:, 0].
  float rec[2] = {0.f, 0.f};
  if (steps >= 1 && !p.recurrent_cut) recurrent(1, rec);
  if (pw) cell.finish(rec, static_cast<T*>(p.dstates0));
  if (multicast) cluster_sync();  // no CTA leaves while its copies may still be landing in a peer
}

// The kernel instantiation `plan` runs: with the producer warp, with R in registers, or neither.
template <class Cell, class T>
auto multi_backward_kernel_for(const multi::Plan& plan) {
  return plan.producer          ? multi_backward_kernel<Cell, T, true>
         : plan.reg_ksteps > 0 ? multi_backward_kernel<Cell, T, false, true>
                                : multi_backward_kernel<Cell, T, false>;
}

// The L2 variant's backward plan before its launch is planned (plan.h), or why it cannot run.
template <class Cell, class T>
const char* make_multi_backward_plan(multi::Plan& plan, const BackwardParams& p, const DeviceLimits& device) {
  return multi::make_plan(plan, true, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim, device.smem_per_block,
                          device.smem_per_sm, device.sm_count, multi::backward_ring(device), false,
                          multi::env_is("FLASHRNN_BACKWARD_REGISTERS", "1"));
}

// The L2 variant's plan for p on `device` (`plan` and `why` from make_multi_backward_plan),
// completed for its launch (multi::launch_plan): stage buffers (a ring where multicast stages them),
// CTAs of dR and db alongside where SMs are left free for them (16-bit types, one wave).
template <class Cell, class T>
multi::Plan multi_backward_plan(multi::Plan plan, const char* why, const BackwardParams& p,
                                const DeviceLimits& device) {
  FLASHRNN_CHECK(why == nullptr, "multi-CTA backward: " << why);
  const bool ring = multi::backward_ring(device);
  auto copies = [&](multi::Plan launched) {  // a CTA's range of a chunk in one copy, as a rule
    const int blocks = plan.slices / plan.chunks;
    launched.copy_blocks =
        multi::copy_blocks(blocks, launched.cluster, std::max(1, multi::copy_wanted("FLASHRNN_BACKWARD_COPY", blocks)));
    return launched;
  };
  plan.alongside = sizeof(T) == 2 && !p.recurrent_cut && p.steps > 0 && plan.smem >= alongside::kSmemBytes &&
                   plan.waves() == 1;  // (the workers' flags and sums span all heads and groups)
  // A producer warp where buffers are refilled within a step and every CTA has an SM of its own.
  plan.producer = ring && plan.slots < plan.chunks && !p.recurrent_cut && plan.ctas <= device.sm_count &&
                  !multi::turned_off("FLASHRNN_PRODUCER");
  if (plan.producer) {
    const multi::Plan launched =
        multi::launch_plan(multi_backward_kernel_for<Cell, T>(plan), plan, device, "multi_backward_kernel");
    if (launched.cluster > 1) return copies(launched);  // else per-CTA copies: every warp copies its rows
    plan.producer = false;
  }
  return copies(multi::launch_plan(multi_backward_kernel_for<Cell, T>(plan), plan, device, "multi_backward_kernel"));
}

template <class Cell, class T>
multi::BackwardLaunch multi_backward_launch(const BackwardParams& p, const DeviceLimits& device) {
  multi::Plan plan;
  const char* why = make_multi_backward_plan<Cell, T>(plan, p, device);
  plan = multi_backward_plan<Cell, T>(plan, why, p, device);
  return {plan.dr_columns * plan.wave_groups * plan.wave_heads, plan.producer, plan.cluster};
}

// The cluster variant where it runs (see launch_multi_forward), else its wide form, else the L2
// variant; the weight gradients alongside the wide form or the L2 variant where the device has CTAs
// for them, else after it. Workspace: the weight-gradient sums (weight_grad.cuh's partials or
// alongside.cuh's running sums), then the progress counters (the L2 variant's layout), then the
// L2 variant's dg exchange (multi::dg_exchange).
template <class Cell, class T>
void launch_multi_backward(const BackwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  cluster::Plan cplan;
  if (cluster::make_plan(cplan, true, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                         device.smem_per_block) == nullptr &&
      cluster::launch_clusters(cluster_backward_kernel<Cell, T>, cplan, device, stream, "cluster_backward_kernel", p,
                               cplan)) {
    launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace, stream);
    return;
  }
  const int64_t sums =
      weight_grad::multi_scratch_floats(p.steps * p.batch, Cell::kGatesR, Cell::kGatesB, p.heads, p.head_dim);
  unsigned* flags = reinterpret_cast<unsigned*>(p.workspace + sums);
  auto clear_flags = [&] {
    FLASHRNN_CUDA_CHECK(cudaMemsetAsync(
        flags, 0, sizeof(unsigned) * multi::flag_words(p.batch, p.heads, p.head_dim), stream));
  };
  multi::Plan l2;
  const char* why = make_multi_backward_plan<Cell, T>(l2, p, device);
  if constexpr (sizeof(T) == 2) {
    const auto kernel = cluster_wide_backward_kernel<Cell, T>;
    if (cluster::wide_takes(cplan, true, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                            device.smem_per_block, why == nullptr ? &l2 : nullptr, device.sm_count)) {
      if (!p.recurrent_cut && p.steps > 0 && !multi::turned_off("FLASHRNN_DR_ALONGSIDE"))
        cluster::plan_workers(kernel, cplan, device, weight_grad::kAlongsideMinCtas, alongside::kSmemBytes);
      if (cplan.worker_groups > 0) clear_flags();
      if (cluster::launch_clusters(kernel, cplan, device, stream, "cluster_wide_backward_kernel", p, cplan, flags)) {
        if (cplan.worker_groups == 0) launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace, stream);
        return;
      }
    }
  }
  const multi::Plan plan = multi_backward_plan<Cell, T>(l2, why, p, device);
  clear_flags();
  multi::launch_cooperative(multi_backward_kernel_for<Cell, T>(plan), plan, stream, "multi_backward_kernel", p, flags);
  if (plan.dr_columns == 0) launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace, stream);
}

}  // namespace flashrnn
