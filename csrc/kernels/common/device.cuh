// Device primitives shared by the kernel families: element conversion, tensor-core fragments,
// ldmatrix and cp.async. Written for sm_80+ (mma.sync, cp.async); nothing here is Hopper-only.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16" and "mma.m16n8k8"); lane = 4 * g + q:
//   bf16/fp16 m16n8k16: a = {A[g][2q..], A[g+8][2q..], A[g][2q+8..], A[g+8][2q+8..]} (pairs)
//                       b = {B[2q..][g], B[2q+8..][g]}                                 (pairs)
//   tf32      m16n8k8:  a = {A[g][q], A[g+8][q], A[g][q+4], A[g+8][q+4]}
//                       b = {B[q][g], B[q+4][g]}
//   both: c = {C[g][2q], C[g][2q+1], C[g+8][2q], C[g+8][2q+1]}
// fp32 inputs run as 3xTF32 (hi*hi + hi*lo + lo*hi, relative error ~1e-6, "real fp32") unless
// the caller allows plain TF32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashrnn {

using bf16 = __nv_bfloat16;
using fp16 = __half;

// ---- element conversion --------------------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(fp16 x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ fp16 from_float<fp16>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// Two consecutive elements (4 bytes for half types, 8 for fp32).
template <class T> struct Pair;
template <> struct Pair<float> { using type = float2; };
template <> struct Pair<fp16> { using type = __half2; };
template <> struct Pair<bf16> { using type = __nv_bfloat162; };

template <class T>
__device__ __forceinline__ void load_pair(const T* p, float& a, float& b) {
  const typename Pair<T>::type v = *reinterpret_cast<const typename Pair<T>::type*>(p);
  a = to_float(v.x);
  b = to_float(v.y);
}

// The same as load_pair in two halves: the load now, the conversion where the values are used, so
// that a load issued a step ahead does not stall the thread right away.
template <class T>
__device__ __forceinline__ typename Pair<T>::type load_pair_raw(const T* p) {
  return *reinterpret_cast<const typename Pair<T>::type*>(p);
}
template <class V>
__device__ __forceinline__ void unpack_pair(const V& v, float& a, float& b) {
  a = to_float(v.x);
  b = to_float(v.y);
}

template <class T>
__device__ __forceinline__ void store_pair(T* p, float a, float b) {
  typename Pair<T>::type v;
  v.x = from_float<T>(a);
  v.y = from_float<T>(b);
  *reinterpret_cast<typename Pair<T>::type*>(p) = v;
}

template <class T>
__device__ __forceinline__ float load_one(const T* p) { return to_float(*p); }
template <class T>
__device__ __forceinline__ void store_one(T* p, float v) { *p = from_float<T>(v); }

// threadIdx.x behind an opaque move. The kernels' per-step code uses values derived from it
// (warp, lane, whether a warp is padding); with the plain special register the compiler
// re-reads it inside the step loop (S2R, tens of cycles on the critical path, seen in SASS).
__device__ __forceinline__ int thread_index() {
  int r;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(r));
  return r;
}

// A named barrier for `threads` threads (a multiple of 32) of the block; id 0 is __syncthreads.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- tensor-core products --------------------------------------------------------------------
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Per storage type: K of one product, fragment loads from memory, the product itself.
template <class T> struct Mma;

template <class T>
struct MmaHalf {
  static constexpr int kK = 16;
  // A fragment; element (m, k) at p[m * ld + k]; rows g and g + 8 may be masked to zero.
  __device__ static void load_a(uint32_t (&a)[4], const T* p, int64_t ld, bool row_lo, bool row_hi) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    const T* lo = p + g * ld + 2 * q;
    const T* hi = lo + 8 * ld;
    a[0] = row_lo ? *reinterpret_cast<const uint32_t*>(lo) : 0u;
    a[1] = row_hi ? *reinterpret_cast<const uint32_t*>(hi) : 0u;
    a[2] = row_lo ? *reinterpret_cast<const uint32_t*>(lo + 8) : 0u;
    a[3] = row_hi ? *reinterpret_cast<const uint32_t*>(hi + 8) : 0u;
  }
  // A fragment from two row pointers: lo = &A[g][0], hi = &A[g + 8][0] of this lane (k
  // contiguous); hi == nullptr reads as zeros.
  __device__ static void load_a_rows(uint32_t (&a)[4], const T* lo, const T* hi) {
    const int q = threadIdx.x % 4;
    a[0] = *reinterpret_cast<const uint32_t*>(lo + 2 * q);
    a[1] = hi ? *reinterpret_cast<const uint32_t*>(hi + 2 * q) : 0u;
    a[2] = *reinterpret_cast<const uint32_t*>(lo + 2 * q + 8);
    a[3] = hi ? *reinterpret_cast<const uint32_t*>(hi + 2 * q + 8) : 0u;
  }
  // A fragment; element (m, k) at p[k * ld + m] (m contiguous): two scalar loads per register.
  __device__ static void load_a_kmajor(uint32_t (&a)[4], const T* p, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    const T* e = p + (2 * q) * ld + g;
    a[0] = pack(e[0], e[ld]);
    a[1] = pack(e[8], e[ld + 8]);
    a[2] = pack(e[8 * ld], e[9 * ld]);
    a[3] = pack(e[8 * ld + 8], e[9 * ld + 8]);
  }
  // B fragment; element (k, n) at p[n * ld + k] (k contiguous).
  __device__ static void load_b(uint32_t (&b)[2], const T* p, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    const T* col = p + g * ld + 2 * q;
    b[0] = *reinterpret_cast<const uint32_t*>(col);
    b[1] = *reinterpret_cast<const uint32_t*>(col + 8);
  }
  // B fragment; element (k, n) at p[k * ld + n] (n contiguous): two scalar loads per register.
  __device__ static void load_b_kmajor(uint32_t (&b)[2], const T* p, int64_t ld) { load_b_kmajor(b, p, p + 8 * ld, ld); }
  // The same with rows k < 8 at lo[k * ld + n] and k >= 8 at hi[(k - 8) * ld + n].
  __device__ static void load_b_kmajor(uint32_t (&b)[2], const T* lo, const T* hi, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    b[0] = pack(lo[(2 * q) * ld + g], lo[(2 * q + 1) * ld + g]);
    b[1] = pack(hi[(2 * q) * ld + g], hi[(2 * q + 1) * ld + g]);
  }
  __device__ static uint32_t pack(T lo, T hi) {
    return uint32_t(*reinterpret_cast<const uint16_t*>(&lo)) |
           (uint32_t(*reinterpret_cast<const uint16_t*>(&hi)) << 16);
  }
};

template <>
struct Mma<bf16> : MmaHalf<bf16> {
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Mma<fp16> : MmaHalf<fp16> {
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Mma<float> {
  static constexpr int kK = 8;
  __device__ static void load_a(uint32_t (&a)[4], const float* p, int64_t ld, bool row_lo, bool row_hi) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    const float* lo = p + g * ld + q;
    const float* hi = lo + 8 * ld;
    a[0] = row_lo ? __float_as_uint(lo[0]) : 0u;
    a[1] = row_hi ? __float_as_uint(hi[0]) : 0u;
    a[2] = row_lo ? __float_as_uint(lo[4]) : 0u;
    a[3] = row_hi ? __float_as_uint(hi[4]) : 0u;
  }
  __device__ static void load_a_rows(uint32_t (&a)[4], const float* lo, const float* hi) {
    const int q = threadIdx.x % 4;
    a[0] = __float_as_uint(lo[q]);
    a[1] = hi ? __float_as_uint(hi[q]) : 0u;
    a[2] = __float_as_uint(lo[q + 4]);
    a[3] = hi ? __float_as_uint(hi[q + 4]) : 0u;
  }
  __device__ static void load_a_kmajor(uint32_t (&a)[4], const float* p, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    a[0] = __float_as_uint(p[q * ld + g]);
    a[1] = __float_as_uint(p[q * ld + g + 8]);
    a[2] = __float_as_uint(p[(q + 4) * ld + g]);
    a[3] = __float_as_uint(p[(q + 4) * ld + g + 8]);
  }
  __device__ static void load_b(uint32_t (&b)[2], const float* p, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    b[0] = __float_as_uint(p[g * ld + q]);
    b[1] = __float_as_uint(p[g * ld + q + 4]);
  }
  __device__ static void load_b_kmajor(uint32_t (&b)[2], const float* p, int64_t ld) {
    load_b_kmajor(b, p, p + 4 * ld, ld);
  }
  // The same with rows k < 4 at lo[k * ld + n] and k >= 4 at hi[(k - 4) * ld + n].
  __device__ static void load_b_kmajor(uint32_t (&b)[2], const float* lo, const float* hi, int64_t ld) {
    const int g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
    b[0] = __float_as_uint(lo[q * ld + g]);
    b[1] = __float_as_uint(hi[q * ld + g]);
  }
  // Fragments hold raw fp32 bits; they are split into TF32 hi + lo here.
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool tf32) {
    uint32_t ah[4], bh[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) ah[i] = to_tf32(__uint_as_float(a[i]));
#pragma unroll
    for (int i = 0; i < 2; ++i) bh[i] = to_tf32(__uint_as_float(b[i]));
    if (!tf32) {
      uint32_t al[4], bl[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) al[i] = to_tf32(__uint_as_float(a[i]) - __uint_as_float(ah[i]));
#pragma unroll
      for (int i = 0; i < 2; ++i) bl[i] = to_tf32(__uint_as_float(b[i]) - __uint_as_float(bh[i]));
      mma_tf32(d, al, bh);
      mma_tf32(d, ah, bl);
    }
    mma_tf32(d, ah, bh);
  }
};

// ---- shared memory -------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices of 16-byte rows; this lane gives the shared-window address of row (lane % 8)
// of matrix (lane / 8). As an A fragment from a row-major [m][k] tile: row = lane % 16, byte
// column 16 * (lane / 16) of a 32-byte k slice (16 bf16/fp16 or 8 fp32 values, either type).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row_address));
}

// One 32-bit word at a shared-memory address (an A fragment's word where ldmatrix cannot gather
// it: the tagged exchange's stage, multi_forward.cuh).
__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

// Two 8x8 matrices (lanes 0-15 give the row addresses): the B fragment of one k16 (bf16/fp16)
// or k8 (fp32) slice of 8 rows x 32 bytes, as the first half of ldmatrix_x4 would.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(row_address));
}

// 16 bytes from shared to global memory (both 16-byte aligned).
__device__ __forceinline__ void copy_16(void* gmem, const void* smem) {
  *reinterpret_cast<uint4*>(gmem) = *reinterpret_cast<const uint4*>(smem);
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// 16-byte global -> shared copy, zero-filled when !valid (gmem is then not read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending));
}
// Waits until at most `pending` (0..3, uniform over the block) groups are in flight.
__device__ __forceinline__ void cp_async_wait_at_most(int pending) {
  if (pending >= 3) cp_async_wait<3>();
  else if (pending == 2) cp_async_wait<2>();
  else if (pending == 1) cp_async_wait<1>();
  else cp_async_wait<0>();
}

// ---- communication between the CTAs of one head (multi-CTA kernels) -------------------------
// Progress flags at GPU scope: relaxed polls (not cached in the incoherent L1), acquire/release.
__device__ __forceinline__ unsigned ld_relaxed_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// Tagged words (the 16-bit forward's exchange, multi::store_tagged): one 8-byte store, seen whole
// (a 64-bit scalar access is single-copy atomic; two 32-bit halves of a vector would not be).
__device__ __forceinline__ void st_relaxed_gpu_b64(void* p, uint32_t lo, uint32_t hi) {
  const unsigned long long w = (unsigned long long)hi << 32 | lo;
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(p), "l"(w) : "memory");
}
// 16 bytes as two 8-byte words, each seen whole (elements of a vector access are accessed one by one).
__device__ __forceinline__ uint4 ld_relaxed_gpu_2x64(const void* p) {
  unsigned long long a, b;
  asm volatile("ld.relaxed.gpu.global.v2.b64 {%0, %1}, [%2];" : "=l"(a), "=l"(b) : "l"(p) : "memory");
  return make_uint4(uint32_t(a), uint32_t(a >> 32), uint32_t(b), uint32_t(b >> 32));
}

// ---- thread-block clusters (sm_90; the cluster kernels only run there) ----------------------
// Every thread of every CTA of the cluster arrives and waits (release/acquire at cluster scope).
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
  __trap();
#endif
}
// The two halves of cluster_sync(), for work in between: every thread arrives once done with what
// the peers may overwrite after the wait (release), and waits before it writes into peers (acquire).
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#else
  __trap();
#endif
}
// Arrive without release: for a CTA whose reads of what the peers overwrite are complete (their
// values used) and that has nothing to publish through the barrier.
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
  __trap();
#endif
}
// The address of the same shared-memory location in the cluster's CTA `rank`.
__device__ __forceinline__ uint32_t peer_smem(uint32_t local, uint32_t rank) {
  uint32_t remote = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
#else
  __trap();
#endif
  return remote;
}
// The shared-memory windows of a cluster's CTAs seen from this CTA: at(rank, local) is the
// address of local (this CTA's shared window) in CTA `rank`, one mapa per rank up front instead
// of one per store. Index it with compile-time ranks (an unrolled loop), so base stays in registers.
template <int kMax>
struct PeerWindows {
  uint32_t base[kMax];
  uint32_t origin;
  __device__ __forceinline__ PeerWindows(uint32_t local_origin, int size) : origin(local_origin) {
#pragma unroll
    for (int rank = 0; rank < kMax; ++rank) base[rank] = rank < size ? peer_smem(local_origin, rank) : 0u;
  }
  __device__ __forceinline__ uint32_t at(int rank, uint32_t local) const { return base[rank] + (local - origin); }
};

// Stores kWords 32-bit words (16-byte aligned if kWords % 4 == 0, 8-byte if even) at a
// peer_smem() address and counts their bytes on the mbarrier at peer_smem() address `remote_bar`
// of the same CTA (complete_tx, release at cluster scope): the receiver's wait on that barrier
// sees the data, no fence needed.
template <int kWords>
__device__ __forceinline__ void st_async_words(uint32_t remote, uint32_t remote_bar, const uint32_t (&w)[kWords]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kWords % 4 == 0) {
#pragma unroll
    for (int i = 0; i < kWords; i += 4)
      asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
                   ::"r"(remote + 4 * i), "r"(w[i]), "r"(w[i + 1]), "r"(w[i + 2]), "r"(w[i + 3]), "r"(remote_bar)
                   : "memory");
  } else if constexpr (kWords % 2 == 0) {
#pragma unroll
    for (int i = 0; i < kWords; i += 2)
      asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];"
                   ::"r"(remote + 4 * i), "r"(w[i]), "r"(w[i + 1]), "r"(remote_bar) : "memory");
  } else {
#pragma unroll
    for (int i = 0; i < kWords; ++i)
      asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
                   ::"r"(remote + 4 * i), "r"(w[i]), "r"(remote_bar) : "memory");
  }
#else
  __trap();
#endif
}

// Values of type T as 32-bit words, in order: pairs of 16-bit values, or one fp32 value per word.
template <class T, int kValues>
__device__ __forceinline__ void pack_words(const float (&v)[kValues], uint32_t (&w)[sizeof(T) == 4 ? kValues : kValues / 2]) {
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int i = 0; i < kValues; ++i) w[i] = __float_as_uint(v[i]);
  } else {
    static_assert(kValues % 2 == 0);
#pragma unroll
    for (int i = 0; i < kValues / 2; ++i) w[i] = Mma<T>::pack(from_float<T>(v[2 * i]), from_float<T>(v[2 * i + 1]));
  }
}

// mbarriers (sm_90 cluster kernels): one arrival per phase (the local arm below) plus the bytes
// that peers' st_async_words() deliver. Bytes may land before the arm (the count goes negative).
// (`arrivals` > 1: an mbarrier that the cluster's CTAs arrive on remotely, arrive_remote().)
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned arrivals = 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#else
  __trap();
#endif
}
// The local arrival of the current phase, expecting `bytes` more from the peers.
__device__ __forceinline__ void mbar_arm(uint64_t* bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}
// One arrival on the mbarrier at the same shared-memory offset as `bar` in the cluster's CTA
// `rank`: this CTA's reads of a buffer before it are done when that phase completes (release at
// cluster scope: a MEMBAR that waits for the thread's memory operations in flight; at CTA scope it
// would not order this CTA's reads before a peer's refill, multi_backward.cuh).
__device__ __forceinline__ void arrive_remote(uint64_t* bar, uint32_t rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(peer_smem(smem_addr(bar), rank))
               : "memory");
#else
  __trap();
#endif
}
// What an mbarrier wait orders (mbar_wait): kAcquire, at cluster scope: the peers' st.async bytes
// and release arrivals are visible after it; kCopies: the phase counts only bulk copies (async
// proxy) into this CTA, whose bytes an acquire at CTA scope makes visible (that scope also spares
// the L1 invalidation, CCTL.IVALL, that cluster scope costs every waiting warp).
enum class Wait { kAcquire, kCopies };

// Waits until the phase with this parity has completed. Traps after `max_polls` unsuccessful polls
// (a broken launch).
template <Wait kWait = Wait::kAcquire>
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity, long long max_polls) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FLASHRNN_TRY_WAIT(sem)                                                  \
  asm volatile(                                                                 \
      "{\n\t.reg .pred p;\n\t"                                                  \
      "mbarrier.try_wait.parity." sem ".shared::cta.b64 p, [%1], %2;\n\t"       \
      "selp.u32 %0, 1, 0, p;\n\t}"                                               \
      : "=r"(done)                                                              \
      : "r"(smem_addr(bar)), "r"(parity)                                        \
      : "memory")
  for (long long polls = 0;; ++polls) {
    uint32_t done = 0;
    if constexpr (kWait == Wait::kAcquire) FLASHRNN_TRY_WAIT("acquire.cluster");
    else FLASHRNN_TRY_WAIT("acquire.cta");
    if (done) return;
    if (polls > max_polls) __trap();
  }
#undef FLASHRNN_TRY_WAIT
#else
  __trap();
#endif
}

// Start of a cluster kernel's exchange: zero the two receive buffers (`bytes`, a multiple of 4:
// rows past the batch stay zero), set up their mbarriers, and wait until every CTA of the
// cluster has done the same (a peer stores into this CTA right after).
__device__ __forceinline__ void start_cluster_exchange(unsigned char* buffers, int bytes, uint64_t (&arrived)[2]) {
  for (int i = threadIdx.x; i < bytes / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(buffers)[i] = 0u;
  if (threadIdx.x == 0) {
    mbar_init(&arrived[0]);
    mbar_init(&arrived[1]);
  }
  cluster_sync();
}

// This CTA's rank in its cluster.
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t rank = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
#else
  __trap();
#endif
  return rank;
}

// Orders the global writes this thread has observed (generic proxy) before its later bulk
// copies (async proxy) read them.
__device__ __forceinline__ void fence_proxy_async_global() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.global;" ::: "memory");
#else
  __trap();
#endif
}

// One bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory
// into shared memory at the same offset `dst` in every CTA of the cluster named in `mask`; each
// of them counts the bytes on its mbarrier at offset `bar` (complete_tx).
__device__ __forceinline__ void bulk_copy_multicast(uint32_t dst, const void* src, unsigned bytes, uint32_t bar,
                                                    uint16_t mask) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], %4;"
      ::"r"(dst), "l"(src), "r"(bytes), "r"(bar), "h"(mask)
      : "memory");
#else
  __trap();
#endif
}

}  // namespace flashrnn
