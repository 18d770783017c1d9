// CUDA kernels of pdnet::assemble_parts and pdnet::assemble_parts_backward: grid-stride
// loops, one thread per output element, pixels innermost so that accesses coalesce.
// Accumulation in float32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../common.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

// out[b, c, x] = sum_k (P + Y)[b, k, c, x] * R[b, k, x]; feats [B, p, C, hw], masks [B, p, hw]
template <typename T>
__global__ void assemble_fwd_kernel(const T* __restrict__ pf, const T* __restrict__ yf, const T* __restrict__ masks,
                                    T* __restrict__ out, int64_t n, int64_t p, int64_t C, int64_t hw) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % hw, bc = idx / hw;
    const int64_t c = bc % C, b = bc / C;
    float acc = 0.f;
    for (int64_t k = 0; k < p; ++k) {
      const int64_t f = ((b * p + k) * C + c) * hw + x;
      acc += (to_float(pf[f]) + to_float(yf[f])) * to_float(masks[(b * p + k) * hw + x]);
    }
    out[idx] = from_float<T>(acc);
  }
}

// grad_feats[b, k, c, x] = grad[b, c, x] * R[b, k, x]
template <typename T>
__global__ void assemble_bwd_feats_kernel(const T* __restrict__ grad, const T* __restrict__ masks,
                                          T* __restrict__ grad_feats, int64_t n, int64_t p, int64_t C, int64_t hw) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % hw, bkc = idx / hw;
    const int64_t c = bkc % C, bk = bkc / C, b = bk / p;
    grad_feats[idx] = from_float<T>(to_float(grad[(b * C + c) * hw + x]) * to_float(masks[bk * hw + x]));
  }
}

// grad_masks[b, k, x] = sum_c grad[b, c, x] * (P + Y)[b, k, c, x]
template <typename T>
__global__ void assemble_bwd_masks_kernel(const T* __restrict__ grad, const T* __restrict__ pf,
                                          const T* __restrict__ yf, T* __restrict__ grad_masks, int64_t n, int64_t p,
                                          int64_t C, int64_t hw) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % hw, bk = idx / hw, b = bk / p;
    float acc = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t f = (bk * C + c) * hw + x;
      acc += to_float(grad[(b * C + c) * hw + x]) * (to_float(pf[f]) + to_float(yf[f]));
    }
    grad_masks[idx] = from_float<T>(acc);
  }
}

at::Tensor assemble_parts_cuda(const at::Tensor& p_feats, const at::Tensor& y_feats, const at::Tensor& masks) {
  const char* where = "pdnet::assemble_parts (CUDA)";
  detail::check_assemble_parts(where, p_feats, y_feats, masks);
  check_cuda_dtype(where, p_feats);
  const c10::cuda::CUDAGuard guard(p_feats.device());
  const int64_t B = p_feats.size(0), p = p_feats.size(1), C = p_feats.size(2);
  const int64_t h = p_feats.size(3), w = p_feats.size(4), hw = h * w;
  if (p == 0) return at::zeros({B, C, h, w}, p_feats.options());
  at::Tensor out = at::empty({B, C, h, w}, p_feats.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const at::Tensor pc = p_feats.contiguous(), yc = y_feats.contiguous(), mc = masks.contiguous();
  PDNET_DISPATCH_CUDA_TYPES(pc.scalar_type(), "assemble_parts_cuda", [&] {
    launch_grid_stride(assemble_fwd_kernel<device_t<scalar_t>>, n, dptr<scalar_t>(pc), dptr<scalar_t>(yc),
                       dptr<scalar_t>(mc), mptr<scalar_t>(out), n, p, C, hw);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> assemble_parts_backward_cuda(const at::Tensor& grad_out, const at::Tensor& p_feats,
                                                                const at::Tensor& y_feats, const at::Tensor& masks,
                                                                bool feats_grad, bool masks_grad) {
  const char* where = "pdnet::assemble_parts_backward (CUDA)";
  detail::check_assemble_parts_backward(where, grad_out, p_feats, y_feats, masks);
  check_cuda_dtype(where, p_feats);
  const int64_t B = p_feats.size(0), p = p_feats.size(1), C = p_feats.size(2);
  const int64_t h = p_feats.size(3), w = p_feats.size(4), hw = h * w;
  const c10::cuda::CUDAGuard guard(p_feats.device());
  const at::Tensor gc = grad_out.to(p_feats.scalar_type()).contiguous();
  const at::Tensor mc = masks.contiguous();
  at::Tensor gf = feats_grad ? at::empty({B, p, C, h, w}, p_feats.options()) : at::empty({0}, p_feats.options());
  at::Tensor gm = masks_grad ? at::empty({B, p, h, w}, masks.options()) : at::empty({0}, masks.options());
  PDNET_DISPATCH_CUDA_TYPES(gc.scalar_type(), "assemble_parts_backward_cuda", [&] {
    if (feats_grad && gf.numel() > 0) {
      const int64_t n = gf.numel();
      launch_grid_stride(assemble_bwd_feats_kernel<device_t<scalar_t>>, n, dptr<scalar_t>(gc), dptr<scalar_t>(mc),
                         mptr<scalar_t>(gf), n, p, C, hw);
    }
    if (masks_grad && gm.numel() > 0) {
      const at::Tensor pc = p_feats.contiguous(), yc = y_feats.contiguous();
      const int64_t n = gm.numel();
      launch_grid_stride(assemble_bwd_masks_kernel<device_t<scalar_t>>, n, dptr<scalar_t>(gc), dptr<scalar_t>(pc),
                         dptr<scalar_t>(yc), mptr<scalar_t>(gm), n, p, C, hw);
    }
  });
  return {gf, gm};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("assemble_parts", &assemble_parts_cuda);
  m.impl("assemble_parts_backward", &assemble_parts_backward_cuda);
}

}  // namespace pdnet::ops
