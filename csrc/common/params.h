// The argument structs every launcher takes, and the dimension legend used everywhere.
//
//   B batch, T time (steps), N heads, D head dim, G gates, S states, K saved values per unit.
//   Shapes are written [B, T, G, N, D], the rightmost dimension fastest.
//
// Buffers (all device pointers, element type = the dtype of the call unless said otherwise):
//   Wx      [B, T, Gw, N, D]   input pre-activations; the [Gw, N, D] part is contiguous, the
//                              B and T strides are given (so [T, B, ...] inputs need no copy)
//   R       [Gr, N, D, D]      R[g, n, i, j]: output unit i, input unit j (spec 1.2)
//   bias    [Gb, N, D]
//   states  [S, T+1, B, N, D]  states[:, 0] is the initial state (filled by the caller),
//                              states[:, t] the state after step t
//   saved   [T, B, K, N, D]    per-step values the backward pass reads (cell-defined)
//   dg      [B, T, Gb, N, D]   gradient of the gate pre-activations (dWx is a slice of it)
#pragma once

#include <cstdint>

namespace flashrnn {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class CellKind : int { kLstm = 0, kGru = 1, kElman = 2, kSlstm = 3 };

struct ForwardParams {
  int64_t batch = 0, steps = 0, heads = 0, head_dim = 0;
  const void* wx = nullptr;
  int64_t wx_stride_b = 0, wx_stride_t = 0;  // in elements
  const void* r = nullptr;
  const void* bias = nullptr;
  void* states = nullptr;
  void* saved = nullptr;         // nullptr: inference, nothing is saved for backward
  float* workspace = nullptr;    // fp32 scratch, size from forward_workspace_floats()
  bool forward_clip = false;     // clamp h to [-clip, clip] after each step (spec 2.5)
  float forward_clip_value = 0.f;
  bool allow_tf32 = false;       // fp32 only: one TF32 product instead of three (3xTF32)
};

// What the launchers need to know of the device (queried once per call by the core).
struct DeviceLimits {
  int smem_per_block = 0;  // opt-in shared memory per block, bytes
  int sm_count = 0;
  int smem_per_sm = 0;     // shared memory per multiprocessor, bytes
  int cc_major = 0;        // compute capability (9: clusters)
};

struct BackwardParams {
  int64_t batch = 0, steps = 0, heads = 0, head_dim = 0;
  const void* r = nullptr;
  const void* states = nullptr;       // [S, T+1, B, N, D] from the forward
  const void* saved = nullptr;        // [T, B, K, N, D] from the forward
  const void* grad_states = nullptr;  // [S, T+1, B, N, D] dL/dstates (index 0 is usually 0)
  void* dg = nullptr;                 // [B, T, Gb, N, D] out
  void* dr = nullptr;                 // [Gr, N, D, D] out
  void* dbias = nullptr;              // [Gb, N, D] out
  void* dstates0 = nullptr;           // [S, B, N, D] out
  float* workspace = nullptr;         // fp32 scratch, size from backward_workspace_floats()
  void* workspace_rt = nullptr;       // dtype scratch for R^T, [N, D, Gr*D] (alternating only)
  bool recurrent_cut = false;         // drop the R^T dg path (spec 3.3)
  bool recurrent_clip = false;        // clamp the gradient carried into h_t (spec 3.4)
  float recurrent_clip_value = 0.f;
  bool allow_tf32 = false;
};

}  // namespace flashrnn
