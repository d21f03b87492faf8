// The pointwise part of the multi-CTA kernels, shared by the L2 and the cluster variants: a thread
// owns one batch row and two adjacent units of one head and keeps their states in registers for
// all T steps. Step inputs from global memory are loaded a step ahead and kept raw until used
// (converted right away, the load stalled the thread on its first use every step).
#pragma once

#include "../../common/params.h"
#include "../common/device.cuh"

namespace flashrnn::multi {

// 32-bit words of a unit pair of h: one for two 16-bit values, two for two fp32 values.
template <class T> constexpr int kWordsPerPair = sizeof(T) == 4 ? 2 : 1;

// R h_{t-1} of every gate at a pointwise thread's two units: the sum of the k-groups' partial sums
// in red ([k-group][rows][gate * units + unit], `stride` floats per row) at row `row`, unit 2 pair.
// (The k-group count is a constant so that all the loads are issued together.)
template <int kGr, int kKGroups>
__device__ __forceinline__ void sum_gate_pairs(float2 (&rh)[kGr], const float* red, int stride, int units, int rows,
                                               int row, int pair) {
#pragma unroll
  for (int k = 0; k < kGr; ++k) rh[k] = make_float2(0.f, 0.f);
#pragma unroll
  for (int s = 0; s < kKGroups; ++s)
#pragma unroll
    for (int k = 0; k < kGr; ++k) {
      const float2 v = *reinterpret_cast<const float2*>(red + (s * rows + row) * stride + k * units + 2 * pair);
      rh[k].x += v.x;
      rh[k].y += v.y;
    }
}

template <class Cell, class T>
struct ForwardPair {
  static constexpr int kGr = Cell::kGatesR, kGw = Cell::kGatesW, kGb = Cell::kGatesB;
  static constexpr int kS = Cell::kStates, kSaved = Cell::kSaved;

  float st[2][kS] = {}, sv[2][kSaved] = {};
  typename Pair<T>::type bb[kGb] = {};  // the bias (raw: half the registers in 16-bit)
  typename Pair<T>::type wxn[kGw];       // Wx of the next step
  T* out_states;
  T* out_saved;  // nullptr: inference
  const T* wx_row;
  int64_t nd, step_stride, state_stride, wx_stride_t;

  // Row pb, units unit and unit + 1 of head n: the bias and the initial states (if active: a
  // thread past the batch loads nothing).
  __device__ ForwardPair(const ForwardParams& p, int64_t pb, int64_t n, int64_t unit, bool active) {
    const int64_t D = p.head_dim;
    nd = p.heads * D;
    step_stride = p.batch * nd;
    state_stride = (p.steps + 1) * step_stride;
    wx_stride_t = p.wx_stride_t;
    out_states = static_cast<T*>(p.states) + pb * nd + n * D + unit;
    out_saved = p.saved == nullptr ? nullptr : static_cast<T*>(p.saved) + pb * kSaved * nd + n * D + unit;
    wx_row = static_cast<const T*>(p.wx) + pb * p.wx_stride_b + n * D + unit;
    if (!active) return;
    const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
    for (int k = 0; k < kGb; ++k) bb[k] = load_pair_raw(bias + (k * p.heads + n) * D + unit);
#pragma unroll
    for (int s = 0; s < kS; ++s) load_pair(out_states + s * state_stride, st[0][s], st[1][s]);
  }

  // h of the two units as the exchange carries it (rounded to T).
  __device__ void h_words(uint32_t (&w)[kWordsPerPair<T>]) const {
    const float h[2] = {st[0][0], st[1][0]};
    pack_words<T>(h, w);
  }

  __device__ void load_wx(int64_t t) {
#pragma unroll
    for (int k = 0; k < kGw; ++k) wxn[k] = load_pair_raw(wx_row + t * wx_stride_t + k * nd);
  }

  // The cell on both units; rh[k] = (R h_{t-1}) of gate k at the two units.
  template <class Math>
  __device__ void step(const float2 (&rh)[kGr], bool clip, float clip_value) {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      // As in the single-CTA kernel: each gate's sum sits in exactly one of rh, wx, b.
      float ru[kGr], wu[kGw], bu[kGb];
#pragma unroll
      for (int k = 0; k < kGr; ++k) ru[k] = u == 0 ? rh[k].x : rh[k].y;
#pragma unroll
      for (int k = 0; k < kGw; ++k) {
        float w2[2];
        unpack_pair(wxn[k], w2[0], w2[1]);
        wu[k] = w2[u];
      }
#pragma unroll
      for (int k = 0; k < kGb; ++k) {
        float b2[2];
        unpack_pair(bb[k], b2[0], b2[1]);
        bu[k] = b2[u];
      }
      Cell::template forward<Math>(ru, wu, bu, st[u], sv[u]);
      if (clip) st[u][0] = fminf(fmaxf(st[u][0], -clip_value), clip_value);
    }
  }

  // The states after the step and the saved values, at the next step's place.
  __device__ void store() {
    out_states += step_stride;
#pragma unroll
    for (int s = 0; s < kS; ++s) store_pair(out_states + s * state_stride, st[0][s], st[1][s]);
    if (out_saved != nullptr) {
#pragma unroll
      for (int k = 0; k < kSaved; ++k) store_pair(out_saved + k * nd, sv[0][k], sv[1][k]);
      out_saved += step_stride * kSaved;
    }
  }
};

template <class Cell, class T>
struct BackwardPair {
  static constexpr int kGb = Cell::kGatesB, kS = Cell::kStates, kSaved = Cell::kSaved;

  float st[2][kS] = {}, dsc[2][kS] = {};  // states after the step; gradient carried into them
  typename Pair<T>::type nsv[kSaved], nsp[kS], ngs[kS];  // saved[t-1], states[:, t-1], grad_states[:, t]
  const T* saved;
  const T* states;
  const T* grad;
  T* dg_row;  // dg [B, T, Gb, N, D] at this thread's row, head and units, step 1
  int64_t at, saved_at, step_stride, state_stride, nd;
  bool clip;
  float clip_value;

  // Row pb, units unit and unit + 1 of head n: the last states and the inputs of step T (if
  // active: a thread past the batch loads nothing).
  __device__ BackwardPair(const BackwardParams& p, int64_t pb, int64_t n, int64_t unit, bool active) {
    const int64_t D = p.head_dim;
    nd = p.heads * D;
    step_stride = p.batch * nd;
    state_stride = (p.steps + 1) * step_stride;
    at = pb * nd + n * D + unit;
    saved_at = pb * kSaved * nd + n * D + unit;
    saved = static_cast<const T*>(p.saved);
    states = static_cast<const T*>(p.states);
    grad = static_cast<const T*>(p.grad_states);
    dg_row = static_cast<T*>(p.dg) + pb * p.steps * kGb * nd + n * D + unit;
    clip = p.recurrent_clip;
    clip_value = p.recurrent_clip_value;
    if (!active) return;
#pragma unroll
    for (int s = 0; s < kS; ++s) load_pair(states + s * state_stride + p.steps * step_stride + at, st[0][s], st[1][s]);
    if (p.steps >= 1) load_step(p.steps);
  }

  __device__ void load_step(int64_t t) {
#pragma unroll
    for (int k = 0; k < kSaved; ++k) nsv[k] = load_pair_raw(saved + (t - 1) * kSaved * step_stride + saved_at + k * nd);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      nsp[s] = load_pair_raw(states + s * state_stride + (t - 1) * step_stride + at);
      ngs[s] = load_pair_raw(grad + s * state_stride + t * step_stride + at);
    }
  }

  // (dg_{t+1} R) + the pointwise path into h_t, clipped if asked (spec 3.4).
  __device__ float carried(float rec, float pointwise) const {
    const float v = rec + pointwise;
    return clip ? fminf(fmaxf(v, -clip_value), clip_value) : v;
  }

  // The cell's backward on both units for the step whose inputs load_step() fetched; rec = (dg_{t+1}
  // R) at the two units. The caller then loads the next inputs.
  template <class Math>
  __device__ void step(const float (&rec)[2], float (&dg)[2][kGb]) {
    float sv[kSaved][2], sp[kS][2], gs[kS][2];
#pragma unroll
    for (int k = 0; k < kSaved; ++k) unpack_pair(nsv[k], sv[k][0], sv[k][1]);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      unpack_pair(nsp[s], sp[s][0], sp[s][1]);
      unpack_pair(ngs[s], gs[s][0], gs[s][1]);
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      float svu[kSaved], spu[kS], ds[kS];
#pragma unroll
      for (int k = 0; k < kSaved; ++k) svu[k] = sv[k][u];
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        spu[s] = sp[s][u];
        ds[s] = dsc[u][s] + gs[s][u];
      }
      ds[0] = carried(rec[u], dsc[u][0]) + gs[0][u];
      Cell::template backward<Math>(svu, spu, st[u], ds, dg[u]);
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        dsc[u][s] = ds[s];
        st[u][s] = spu[s];
      }
    }
  }

  // dg of step t, which is also dWx and feeds dR/db.
  __device__ void store_dg(int64_t t, const float (&dg)[2][kGb]) const {
    T* out = dg_row + (t - 1) * kGb * nd;
#pragma unroll
    for (int k = 0; k < kGb; ++k) store_pair(out + k * nd, dg[0][k], dg[1][k]);
  }

  // dL/ds_0 = what reaches the initial states: carried paths (rec = dg_1 R) + grad_states[:, 0].
  __device__ void finish(const float (&rec)[2], T* dstates0) const {
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      float g0, g1;
      load_pair(grad + s * state_stride + at, g0, g1);
      float v0 = dsc[0][s], v1 = dsc[1][s];
      if (s == 0) {
        v0 = carried(rec[0], v0);
        v1 = carried(rec[1], v1);
      }
      store_pair(dstates0 + s * step_stride + at, v0 + g0, v1 + g1);
    }
  }
};

}  // namespace flashrnn::multi
