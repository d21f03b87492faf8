// LSTM (spec 2.1), gates (i, f, z, o), states (h, c):
//   c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(z);  h_t = sigmoid(o) tanh(c_t)
// = torch.nn.LSTM with gate order (i, f, g, o), R = weight_hh.view(4, 1, H, H).
#pragma once
#include "../common/math.cuh"

namespace flashrnn::cells {

struct Lstm {
  static constexpr int kGatesR = 4, kGatesW = 4, kGatesB = 4;
  static constexpr int kStates = 2;  // h, c
  static constexpr int kSaved = 4;   // i, f, z, o after their activations

  template <class Math>
  __device__ static void forward(const float (&rh)[4], const float (&wx)[4], const float (&b)[4],
                                 float (&s)[2], float (&saved)[4]) {
    const float i = Math::sigmoid(rh[0] + wx[0] + b[0]);
    const float f = Math::sigmoid(rh[1] + wx[1] + b[1]);
    const float z = Math::tanh(rh[2] + wx[2] + b[2]);
    const float o = Math::sigmoid(rh[3] + wx[3] + b[3]);
    const float c = f * s[1] + i * z;
    s[0] = o * Math::tanh(c);
    s[1] = c;
    saved[0] = i; saved[1] = f; saved[2] = z; saved[3] = o;
  }

  template <class Math>
  __device__ static void backward(const float (&saved)[4], const float (&s_prev)[2],
                                  const float (&s)[2], float (&ds)[2], float (&dg)[4]) {
    const float i = saved[0], f = saved[1], z = saved[2], o = saved[3];
    const float tc = Math::tanh(s[1]);
    const float dc = ds[1] + ds[0] * o * (1.f - tc * tc);
    dg[0] = dc * z * i * (1.f - i);
    dg[1] = dc * s_prev[1] * f * (1.f - f);
    dg[2] = dc * i * (1.f - z * z);
    dg[3] = ds[0] * tc * o * (1.f - o);
    ds[0] = 0.f;
    ds[1] = dc * f;
  }
};

}  // namespace flashrnn::cells
