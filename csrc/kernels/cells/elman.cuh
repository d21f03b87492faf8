// Elman: the smallest cell. Copy it to start a new one.
// h_t = tanh(Wx_t + R h_{t-1} + b): torch.nn.RNN(nonlinearity="tanh") with b = b_ih + b_hh.
#pragma once
#include "../common/math.cuh"

namespace flashrnn::cells {

struct Elman {
  static constexpr int kGatesR = 1;  // pre-activations fed by R h (order of R's G axis)
  static constexpr int kGatesW = 1;  // pre-activations fed by Wx (the last kGatesW of kGatesB)
  static constexpr int kGatesB = 1;  // all pre-activations; each has a bias
  static constexpr int kStates = 1;  // h
  static constexpr int kSaved = 1;   // per-unit values the backward pass reads

  // s: the states at t-1 in, at t out. All cell math is fp32; the kernels convert. Math is the
  // activation policy the kernel picks for its dtype (common/math.cuh).
  template <class Math>
  __device__ static void forward(const float (&rh)[1], const float (&wx)[1], const float (&b)[1],
                                 float (&s)[1], float (&saved)[1]) {
    s[0] = Math::tanh(rh[0] + wx[0] + b[0]);
    saved[0] = s[0];  // tanh'(x) = 1 - h^2, no second tanh
  }

  // ds: dL/ds_t in; out: the part of dL/ds_{t-1} that does not pass through R (the kernel adds
  // R^T dg to ds[0]). dg: dL/d(pre-activation) of every gate.
  template <class Math>
  __device__ static void backward(const float (&saved)[1], const float (&)[1], const float (&)[1],
                                  float (&ds)[1], float (&dg)[1]) {
    dg[0] = ds[0] * (1.f - saved[0] * saved[0]);
    ds[0] = 0.f;
  }
};

}  // namespace flashrnn::cells
