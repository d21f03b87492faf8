// Pieces shared by the wide cluster kernels (cluster_wide_forward.cuh, cluster_wide_backward.cuh).
#pragma once

#include "../common/device.cuh"
#include "cluster_plan.h"

namespace flashrnn::cluster {

// Warp `kg`'s k-steps of a wide kernel: [first, first + count) of `ksteps`, and the k-steps per
// warp that its shared-memory fragments are laid out for (wide_part minus those in registers).
struct WideSlice {
  int first, count, in_smem;
  __device__ WideSlice(int ksteps, bool backward, int kg, int register_ksteps) {
    const int part = wide_part(ksteps, backward);
    first = kg * part;
    count = ksteps - first < part ? (ksteps - first > 0 ? ksteps - first : 0) : part;
    in_smem = part - register_ksteps > 0 ? part - register_ksteps : 0;
  }
};

// One warp's products over its k-steps [0, count): A (16 rows) by ldmatrix at a_src + 32 i, kFrags
// B fragments per k-step, from registers (rreg) for i < kReg, else from shared memory (rs:
// [k-step - kReg][fragment][lane]); fragment c of k-step i adds into acc[c][i % kChains].
template <class M, int kReg, int kFrags, int kChains>
__device__ __forceinline__ void wide_products(float (&acc)[kFrags][kChains][4],
                                              const uint32_t (&rreg)[kReg > 0 ? kReg : 1][kFrags][2], const uint2* rs,
                                              uint32_t a_src, int count, int lane) {
#pragma unroll
  for (int i = 0; i < kReg; ++i) {
    if (i >= count) break;
    uint32_t a[4];
    ldmatrix_x4(a, a_src + i * 32);
#pragma unroll
    for (int c = 0; c < kFrags; ++c) M::mma(acc[c][i % kChains], a, rreg[i][c], false);
  }
  for (int i = kReg; i < count; ++i) {
    uint32_t a[4];
    ldmatrix_x4(a, a_src + i * 32);
#pragma unroll
    for (int c = 0; c < kFrags; ++c) {
      const uint2 v = rs[((i - kReg) * kFrags + c) * 32 + lane];
      const uint32_t f[2] = {v.x, v.y};
      M::mma(acc[c][i % kChains], a, f, false);
    }
  }
}

// The peers' shared-memory windows (one mapa each, kept in shared memory rather than in 16
// registers per thread): base[rank] is the address of this CTA's dynamic shared memory in CTA
// rank. Fill before the cluster barrier of start_cluster_exchange(), which orders it.
__device__ __forceinline__ void fill_peer_bases(uint32_t (&base)[kMaxSize], const unsigned char* smem, int size) {
  if (int(threadIdx.x) < size) base[threadIdx.x] = peer_smem(smem_addr(smem), threadIdx.x);
}

// st.async of w at offset `at` of every cluster CTA's window, counted on the mbarrier at offset
// `bar`, starting at rank `first` (each warp starting at a different rank: all starting at rank 0
// sent one CTA everything at once, 768 x 1 backward 20 -> 8 us per step).
template <int kWords>
__device__ __forceinline__ void send_to_all(const uint32_t (&base)[kMaxSize], int size, int first, uint32_t at,
                                            uint32_t bar, const uint32_t (&w)[kWords]) {
  for (int i = 0, rank = first; i < size; ++i, rank = rank + 1 < size ? rank + 1 : 0)
    st_async_words(base[rank] + at, base[rank] + bar, w);
}

}  // namespace flashrnn::cluster
