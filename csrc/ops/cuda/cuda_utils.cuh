// Shared pieces of the CUDA kernels: storage-type mapping, grid sizing and launch, and the dtype
// check and dispatch used by every op (float32, float16, bfloat16). The float conversions of the
// device code are in device_math.cuh, which compiles without ATen.
#pragma once

#ifdef PDNET_CUDA_EMULATION
// host C++ for the CPU emulator of the kernels (tests/cuda_emu): the device helpers, and its
// stand-ins for the launch path instead of ATen
#include "cuda_emu_host.h"
#include "device_math.cuh"
#endif
#ifndef PDNET_CUDA_EMULATION

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"
#include "device_math.cuh"

namespace pdnet::cuda {

// at::Half / at::BFloat16 -> the CUDA types the kernels compute with
template <typename scalar_t>
struct DeviceType {
  using type = scalar_t;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename scalar_t>
using device_t = typename DeviceType<scalar_t>::type;

template <typename scalar_t>
inline const device_t<scalar_t>* dptr(const at::Tensor& t) {
  return reinterpret_cast<const device_t<scalar_t>*>(t.const_data_ptr<scalar_t>());
}
template <typename scalar_t>
inline device_t<scalar_t>* mptr(at::Tensor& t) {
  return reinterpret_cast<device_t<scalar_t>*>(t.mutable_data_ptr<scalar_t>());
}

constexpr int kThreads = 256;

// blocks for a grid-stride loop over n elements
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535LL * 32));
}

// kernel<<<grid_for(n), kThreads>>>(args...) on the current stream, for a kernel that loops over
// n items with a grid stride, then the launch check.
template <typename... Params, typename... Args>
void launch_grid_stride(void (*kernel)(Params...), int64_t n, Args... args) {
  kernel<<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A clear error for float64 and other dtypes the CUDA kernels do not compile.
inline void check_cuda_dtype(const char* where, const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, where,
              ": the CUDA kernels support float32, float16 and bfloat16, got ", pdnet::ops::detail::describe(t),
              " (use backend=\"reference\" for float64)");
}

}  // namespace pdnet::cuda

// float32 / float16 / bfloat16: the dtypes of the CUDA kernels (float64 is not compiled)
#define PDNET_CUDA_TYPE_CASES(...)                     \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__)
#define PDNET_DISPATCH_CUDA_TYPES(TYPE, NAME, ...) AT_DISPATCH_SWITCH(TYPE, NAME, PDNET_CUDA_TYPE_CASES(__VA_ARGS__))

#endif  // PDNET_CUDA_EMULATION
