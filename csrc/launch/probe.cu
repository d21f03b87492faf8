// Tells whether this build holds code the current GPU can run (SASS for its arch, or PTX the
// driver can compile), without launching anything.
#include <cuda_runtime.h>

#include <string>

namespace flashrnn {

__global__ void probe_kernel() {}

bool kernel_image_available(int device, std::string& why) {
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess) {
    cudaFuncAttributes attr{};
    e = cudaFuncGetAttributes(&attr, probe_kernel);
  }
  if (e == cudaSuccess) return true;
  why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  cudaGetLastError();  // clear the sticky-free error so later calls start clean
  return false;
}

}  // namespace flashrnn
