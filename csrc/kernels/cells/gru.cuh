// GRU (spec 2.4). Gates in total order (g, r, z, n); R feeds (g, r, z), Wx feeds (r, z, n), every
// gate has a bias. The reset gate scales the whole recurrent candidate R_g h + b_g, as in
// torch.nn.GRU:  h_t = z h_{t-1} + (1 - z) tanh(Wx_n + b_n + r (R_g h_{t-1} + b_g)).
#pragma once
#include "../common/math.cuh"

namespace flashrnn::cells {

struct Gru {
  static constexpr int kGatesR = 3, kGatesW = 3, kGatesB = 4;
  static constexpr int kStates = 1;  // h
  static constexpr int kSaved = 4;   // g~ = R_g h + b_g, r, z, n (after tanh)

  template <class Math>
  __device__ static void forward(const float (&rh)[3], const float (&wx)[3], const float (&b)[4],
                                 float (&s)[1], float (&saved)[4]) {
    const float g = rh[0] + b[0];
    const float r = Math::sigmoid(wx[0] + rh[1] + b[1]);
    const float z = Math::sigmoid(wx[1] + rh[2] + b[2]);
    const float n = Math::tanh(wx[2] + b[3] + r * g);
    s[0] = z * s[0] + (1.f - z) * n;
    saved[0] = g; saved[1] = r; saved[2] = z; saved[3] = n;
  }

  template <class Math>
  __device__ static void backward(const float (&saved)[4], const float (&s_prev)[1],
                                  const float (&)[1], float (&ds)[1], float (&dg)[4]) {
    const float g = saved[0], r = saved[1], z = saved[2], n = saved[3];
    const float dh = ds[0];
    const float da = dh * (1.f - z) * (1.f - n * n);  // d(pre-tanh candidate)
    dg[0] = da * r;
    dg[1] = da * g * r * (1.f - r);
    dg[2] = dh * (s_prev[0] - n) * z * (1.f - z);
    dg[3] = da;
    ds[0] = dh * z;
  }
};

}  // namespace flashrnn::cells
