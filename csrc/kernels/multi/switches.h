// The multi-CTA family's environment switches, read on the host by the launchers (cooperative.cuh,
// multi_backward.cuh) and by fused_family (launch/core.cpp), so that both plan a shape alike.
#pragma once

#include <cstdlib>
#include <cstring>

#include "../../common/params.h"

namespace flashrnn::multi {

// FLASHRNN_MULTICAST=0 turns the multicast staging off (each CTA copies every row itself, as on
// sm_80/86), =8 keeps clusters portable: tests and benchmarks compare them on one card.
inline int multicast_largest() {
  const char* v = std::getenv("FLASHRNN_MULTICAST");
  if (v == nullptr) return 16;
  return std::strcmp(v, "0") == 0 ? 1 : std::strcmp(v, "8") == 0 ? 8 : 16;
}

// Whether the environment variable `name` is set to `value`.
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// Whether the environment variable `name` is "0" (a switch that is on unless so turned off):
// FLASHRNN_DR_ALONGSIDE (the backward's dR and db alongside the recurrence, weight_grad/alongside.cuh;
// off: weight_grad_kernel after it, as where no SM is left free) and FLASHRNN_PRODUCER (the
// backward's producer warp, multi_backward.cuh). Tests and benchmarks compare both ways on one card.
inline bool turned_off(const char* name) { return env_is(name, "0"); }

// The 16-bit forward's tagged exchange (multi_forward.cuh) for a head of `slices` CTAs where it can
// run: as a rule up to 96 (768 units; on the H100 768 x 1 bf16 B = 16 2.33 -> 2.04 ms, but 1024 x 1
// 2.79 -> 3.16: perf-log.md, twentieth session); FLASHRNN_TAGGED=1 everywhere it can, =0 nowhere.
inline bool tagged_wanted(int slices) {
  return env_is("FLASHRNN_TAGGED", "1") || (!turned_off("FLASHRNN_TAGGED") && slices <= 96);
}

// FLASHRNN_MULTI_BACKWARD=1: the L2 variant's backward wherever it runs, also where the alternating
// kernels are chosen as faster (fused_family, launch/core.cpp; tests and benchmarks compare both on
// one card).
inline bool multi_backward_forced() { return env_is("FLASHRNN_MULTI_BACKWARD", "1"); }

// FLASHRNN_FORWARD_COPY=k / FLASHRNN_BACKWARD_COPY=k (`name`): the L2 variant's multicast copies
// k blocks each (plan.h copy_blocks; forward 0: every CTA waits for all flags first); unset:
// `fallback`. Tests and benchmarks compare copy sizes on one card.
inline int copy_wanted(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v == nullptr ? fallback : std::atoi(v);
}

// Whether the L2 variant's backward stages through a ring of buffers (multicast stages them, as a rule).
inline bool backward_ring(const DeviceLimits& device) {
  return device.cc_major >= 9 && multicast_largest() > 1;
}

}  // namespace flashrnn::multi
