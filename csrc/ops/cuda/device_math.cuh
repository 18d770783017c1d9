// Device-side float conversions of the CUDA kernels' storage types (float32, float16, bfloat16),
// free of ATen so that kernel code compiles on its own: in the extension through cuda_utils.cuh,
// and as host C++ in the CPU emulator of the kernels (tests/cuda_emu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pdnet::cuda {

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

}  // namespace pdnet::cuda
