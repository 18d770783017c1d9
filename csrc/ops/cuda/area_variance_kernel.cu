// CUDA kernels of pdnet::area_variance and pdnet::area_variance_backward.
// Forward: per-chunk partial sums of every (b, part) row (a block each, deterministic,
// no atomics), then one block adds the partials and evaluates the loss with the
// formula of ../area_variance_math.h. Backward: the per-(b, part) coefficient from the
// saved areas (the autograd formula broadcasts it). Accumulation in float32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "../area_variance_math.h"
#include "../common.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

constexpr int kChunk = 4096;  // elements of a row summed by one block

// block-wide sum (blockDim.x == kThreads)
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __syncthreads();  // warp_sums is read: a next call may overwrite it
  return v;  // valid in thread 0
}

// partial[row, chunk] = sum of x[row, chunk * kChunk : ...]; grid (n_chunks, min(rows, 65535)),
// rows grid-strided over blockIdx.y (gridDim.y is at most 65535)
template <typename T>
__global__ void area_partial_kernel(const T* __restrict__ x, float* __restrict__ partial, int64_t rows, int64_t hw,
                                    int n_chunks) {
  const int64_t start = int64_t(blockIdx.x) * kChunk;
  const int64_t end = min(hw, start + kChunk);
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {  // uniform per block
    const T* xr = x + row * hw;
    float acc = 0.f;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) acc += to_float(xr[i]);
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[row * n_chunks + blockIdx.x] = acc;
  }
}

// areas[row] = sum of the partials; loss = area_math::loss_of(areas) (0 * sum of the areas when p < 2)
template <typename T>
__global__ void area_loss_kernel(const float* __restrict__ partial, float* __restrict__ areas, T* __restrict__ loss,
                                 int64_t B, int64_t p, int n_chunks) {
  for (int64_t row = threadIdx.x; row < B * p; row += blockDim.x) {
    float s = 0.f;
    for (int c = 0; c < n_chunks; ++c) s += partial[row * n_chunks + c];
    areas[row] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) *loss = from_float<T>(area_math::loss_of(areas, B, p));
}

// coef[b, k] = d(grad * loss)/d area[b, k], one thread per batch element
template <typename T>
__global__ void area_coef_kernel(const T* __restrict__ grad_loss, const float* __restrict__ areas,
                                 float* __restrict__ coef, int64_t B, int64_t p) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const float g = to_float(*grad_loss) / float(B);
  area_math::variance_grad(areas + b * p, p, g, coef + b * p);
}

std::tuple<at::Tensor, at::Tensor> area_variance_cuda(const at::Tensor& x) {
  const char* where = "pdnet::area_variance (CUDA)";
  detail::check_area_variance(where, x);
  check_cuda_dtype(where, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), p = x.size(1), hw = x.size(2) * x.size(3);
  const auto fopts = x.options().dtype(at::kFloat);
  if (x.numel() == 0) {  // no pixels: zero areas (B == 0 with p >= 2: the mean of nothing)
    const double loss = (B == 0 && p >= 2) ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    return {at::full({}, loss, x.options()), at::zeros({B, p}, fopts)};
  }
  const at::Tensor xc = x.contiguous();
  const int n_chunks = static_cast<int>((hw + kChunk - 1) / kChunk);
  at::Tensor partial = at::empty({B * p, n_chunks}, fopts);
  at::Tensor areas = at::empty({B, p}, fopts);
  at::Tensor loss = at::empty({}, x.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  PDNET_DISPATCH_CUDA_TYPES(xc.scalar_type(), "area_variance_cuda", [&] {
    using T = device_t<scalar_t>;
    const unsigned grid_y = static_cast<unsigned>(std::min<int64_t>(B * p, 65535));
    area_partial_kernel<T><<<dim3(n_chunks, grid_y), kThreads, 0, stream>>>(
        dptr<scalar_t>(xc), partial.mutable_data_ptr<float>(), B * p, hw, n_chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    area_loss_kernel<T><<<1, kThreads, 0, stream>>>(partial.const_data_ptr<float>(), areas.mutable_data_ptr<float>(),
                                                    mptr<scalar_t>(loss), B, p, n_chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, areas};
}

// Returns the coefficients [B, p] (x's dtype); the autograd formula broadcasts them.
at::Tensor area_variance_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& areas) {
  const char* where = "pdnet::area_variance_backward (CUDA)";
  detail::check_area_variance_backward(where, grad_loss, x, areas);
  check_cuda_dtype(where, x);
  const int64_t B = x.size(0), p = x.size(1);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor coef = at::empty({B, p}, x.options().dtype(at::kFloat));
  if (B * p == 0) return coef.to(x.scalar_type());
  // grad_loss may be a 0-dim CPU tensor (the dispatcher still picks CUDA): the kernel reads it
  // on the device
  const at::Tensor gl = grad_loss.to(x.device(), x.scalar_type()).contiguous();
  const at::Tensor ac = areas.to(at::kFloat).contiguous();
  PDNET_DISPATCH_CUDA_TYPES(x.scalar_type(), "area_variance_backward_cuda", [&] {
    using T = device_t<scalar_t>;
    launch_grid_stride(area_coef_kernel<T>, B, dptr<scalar_t>(gl), ac.const_data_ptr<float>(),
                       coef.mutable_data_ptr<float>(), B, p);
  });
  return coef.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("area_variance", &area_variance_cuda);
  m.impl("area_variance_backward", &area_variance_backward_cuda);
}

}  // namespace pdnet::ops
