// Error handling for the host side of the core. Every CUDA runtime call and every launch is
// checked; a failure throws flashrnn::Error (a std::runtime_error), which pybind11 turns into a
// Python RuntimeError that names the operation, the CUDA message and the source line.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace flashrnn {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds error messages with `<<` without iostreams. The core's code is compiled by nvcc as well as
// the host compiler; with hidden visibility, a module built by nvcc 13.0 + g++ 13 instantiated
// ostream's number formatting locally, with its own copies of the locale facet ids, and crashed
// (a facet call landed in codecvt) the first time an error message formatted an int.
class Message {
 public:
  Message& operator<<(const char* s) { text_ += s; return *this; }
  Message& operator<<(const std::string& s) { text_ += s; return *this; }
  template <class N, class = std::enable_if_t<std::is_integral_v<N>>>
  Message& operator<<(N n) { text_ += std::to_string(n); return *this; }
  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

namespace detail {
[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  Message msg;
  msg << "flashrnn: " << what << " failed: " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e)
      << ") at " << file << ":" << line;
  throw Error(msg.str());
}
}  // namespace detail

}  // namespace flashrnn

// Checks a CUDA runtime call.
#define FLASHRNN_CUDA_CHECK(expr)                                                      \
  do {                                                                                 \
    cudaError_t flashrnn_err_ = (expr);                                                \
    if (flashrnn_err_ != cudaSuccess)                                                  \
      ::flashrnn::detail::throw_cuda(flashrnn_err_, #expr, __FILE__, __LINE__);        \
  } while (0)

// Checks the launch that just happened; `name` says which kernel, e.g. "fused_forward<lstm>".
#define FLASHRNN_CHECK_LAUNCH(name)                                                    \
  do {                                                                                 \
    cudaError_t flashrnn_err_ = cudaGetLastError();                                    \
    if (flashrnn_err_ != cudaSuccess)                                                  \
      ::flashrnn::detail::throw_cuda(flashrnn_err_, name, __FILE__, __LINE__);         \
  } while (0)

// Guards a promise the Python layer makes (it validates user input before calling the core).
#define FLASHRNN_CHECK(cond, msg)                                                      \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      ::flashrnn::Message flashrnn_msg_;                                               \
      flashrnn_msg_ << "flashrnn: internal check failed: " << msg << " (" #cond ") at " \
                    << __FILE__ << ":" << __LINE__;                                    \
      throw ::flashrnn::Error(flashrnn_msg_.str());                                    \
    }                                                                                  \
  } while (0)
