// sLSTM (spec 2.3): exponential gating with the stabilizer m; gates (i, f, z, o), states
// (h, c, n, m). The first-step rule (m_t = i~ where n_{t-1} == 0) is applied per element.
//
// Backward: m is a stabilizer, so it is treated as a constant (stop-gradient) and the
// n_t = max(., 1) clamp passes gradients straight through, the rule of the original CUDA
// kernels (spec 3.1). h is invariant to m, so dh-driven gradients are exact; gradients arriving
// on the m output are dropped. The vanilla backend implements the same rule with detach().
#pragma once
#include "../common/math.cuh"

namespace flashrnn::cells {

struct Slstm {
  static constexpr int kGatesR = 4, kGatesW = 4, kGatesB = 4;
  static constexpr int kStates = 4;  // h, c, n, m
  static constexpr int kSaved = 5;   // i, f (stabilized), z, o, 1 - sigmoid(f~)

  template <class Math>
  __device__ static void forward(const float (&rh)[4], const float (&wx)[4], const float (&b)[4],
                                 float (&s)[4], float (&saved)[5]) {
    const float it = rh[0] + wx[0] + b[0];
    const float ft = rh[1] + wx[1] + b[1];
    const float lf = log_sigmoid(ft);
    const float c_prev = s[1], n_prev = s[2], m_prev = s[3];
    const float m = n_prev == 0.f ? it : fmaxf(it, lf + m_prev);
    const float i = __expf(it - m);
    const float f = __expf(lf + m_prev - m);
    const float z = Math::tanh(rh[2] + wx[2] + b[2]);
    const float o = Math::sigmoid(rh[3] + wx[3] + b[3]);
    const float c = f * c_prev + i * z;
    const float n = fmaxf(f * n_prev + i, 1.f);
    s[0] = o * c * fast_rcp(n);
    s[1] = c; s[2] = n; s[3] = m;
    saved[0] = i; saved[1] = f; saved[2] = z; saved[3] = o; saved[4] = Math::sigmoid(-ft);  // d log_sigmoid(f~) / d f~
  }

  template <class Math>
  __device__ static void backward(const float (&saved)[5], const float (&s_prev)[4],
                                  const float (&s)[4], float (&ds)[4], float (&dg)[4]) {
    const float i = saved[0], f = saved[1], z = saved[2], o = saved[3], dlf = saved[4];
    const float c = s[1], inv_n = fast_rcp(s[2]);
    const float dh = ds[0];
    const float dc = ds[1] + dh * o * inv_n;
    const float dn = ds[2] - dh * o * c * inv_n * inv_n;
    dg[0] = (dc * z + dn) * i;
    dg[1] = (dc * s_prev[1] + dn * s_prev[2]) * f * dlf;
    dg[2] = dc * i * (1.f - z * z);
    dg[3] = dh * c * inv_n * o * (1.f - o);
    ds[0] = 0.f;
    ds[1] = dc * f;
    ds[2] = dn * f;
    ds[3] = 0.f;
  }
};

}  // namespace flashrnn::cells
