// CUDA kernels of pdnet::part_masks and pdnet::part_masks_backward: one thread per
// pixel (grid-stride), the p parts of a pixel hw elements apart, so that neighbouring
// threads read neighbouring addresses. Arithmetic in float32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common.h"
#include "../ops.h"
#include "cuda_utils.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

__device__ __forceinline__ float gate_value(float g, bool gate_is_logit) {
  return gate_is_logit ? 1.f / (1.f + __expf(-g)) : g;
}

// logits, out [B, p, hw]; gate [B, hw]
template <typename T>
__global__ void part_masks_fwd_kernel(const T* __restrict__ logits, const T* __restrict__ gate, T* __restrict__ out,
                                      int64_t n_pix, int64_t p, int64_t hw, bool gate_is_logit) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n_pix;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / hw, x = idx - b * hw;
    const T* l = logits + b * p * hw + x;
    float mx = -INFINITY;
    for (int64_t k = 0; k < p; ++k) mx = fmaxf(mx, to_float(l[k * hw]));
    float sum = 0.f;
    for (int64_t k = 0; k < p; ++k) sum += __expf(to_float(l[k * hw]) - mx);
    const float scale = gate_value(to_float(gate[idx]), gate_is_logit) / sum;
    T* o = out + b * p * hw + x;
    for (int64_t k = 0; k < p; ++k) o[k * hw] = from_float<T>(__expf(to_float(l[k * hw]) - mx) * scale);
  }
}

// grad_logits = s * (go G - sum_k s_k go_k G) (the reference's order: an infinite
// ground-truth gate gives NaN as there); grad_gate = sum_k s_k go_k * (G (1 - G) or 1),
// when grad_gate is not null
template <typename T>
__global__ void part_masks_bwd_kernel(const T* __restrict__ grad_out, const T* __restrict__ logits,
                                      const T* __restrict__ gate, T* __restrict__ grad_logits,
                                      T* __restrict__ grad_gate, int64_t n_pix, int64_t p, int64_t hw,
                                      bool gate_is_logit) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n_pix;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / hw, x = idx - b * hw;
    const int64_t base = b * p * hw + x;
    float mx = -INFINITY;
    for (int64_t k = 0; k < p; ++k) mx = fmaxf(mx, to_float(logits[base + k * hw]));
    float sum = 0.f;
    for (int64_t k = 0; k < p; ++k) sum += __expf(to_float(logits[base + k * hw]) - mx);
    const float inv = 1.f / sum;
    const float G = gate_value(to_float(gate[idx]), gate_is_logit);
    float sg = 0.f, sa = 0.f;  // sum_k s_k go_k, sum_k s_k go_k G
    for (int64_t k = 0; k < p; ++k) {
      const float s = __expf(to_float(logits[base + k * hw]) - mx) * inv;
      const float go = to_float(grad_out[base + k * hw]);
      sg += s * go;
      sa += s * (go * G);
    }
    for (int64_t k = 0; k < p; ++k) {
      const float s = __expf(to_float(logits[base + k * hw]) - mx) * inv;
      grad_logits[base + k * hw] = from_float<T>(s * (to_float(grad_out[base + k * hw]) * G - sa));
    }
    if (grad_gate != nullptr) grad_gate[idx] = from_float<T>(gate_is_logit ? sg * G * (1.f - G) : sg);
  }
}

at::Tensor part_masks_cuda(const at::Tensor& part_logits, const at::Tensor& gate, bool gate_is_logit) {
  const char* where = "pdnet::part_masks (CUDA)";
  detail::check_part_masks(where, part_logits, gate);
  check_cuda_dtype(where, part_logits);
  const c10::cuda::CUDAGuard guard(part_logits.device());
  const at::Tensor lc = part_logits.contiguous();
  const at::Tensor gc = gate.contiguous();
  at::Tensor out = at::empty(lc.sizes(), lc.options());
  if (out.numel() == 0) return out;
  const int64_t B = lc.size(0), p = lc.size(1), hw = lc.size(2) * lc.size(3);
  const int64_t n_pix = B * hw;
  PDNET_DISPATCH_CUDA_TYPES(lc.scalar_type(), "part_masks_cuda", [&] {
    launch_grid_stride(part_masks_fwd_kernel<device_t<scalar_t>>, n_pix, dptr<scalar_t>(lc), dptr<scalar_t>(gc),
                       mptr<scalar_t>(out), n_pix, p, hw, gate_is_logit);
  });
  return out;
}

// The softmax is recomputed from part_logits (masks, the forward's output, is not read):
// on the GPU the exps are cheap next to the memory traffic, which is the same either way.
std::tuple<at::Tensor, at::Tensor> part_masks_backward_cuda(const at::Tensor& grad_out, const at::Tensor& part_logits,
                                                            const at::Tensor& masks, const at::Tensor& gate,
                                                            bool gate_is_logit, bool gate_grad) {
  const char* where = "pdnet::part_masks_backward (CUDA)";
  detail::check_part_masks_backward(where, grad_out, part_logits, masks, gate);
  check_cuda_dtype(where, part_logits);
  const c10::cuda::CUDAGuard guard(part_logits.device());
  const at::Tensor goc = grad_out.to(part_logits.scalar_type()).contiguous();
  const at::Tensor lc = part_logits.contiguous();
  const at::Tensor gc = gate.contiguous();
  at::Tensor grad_logits = at::empty(lc.sizes(), lc.options());
  at::Tensor grad_gate = gate_grad ? at::empty(gc.sizes(), gc.options()) : at::empty({0}, gc.options());
  const int64_t B = lc.size(0), p = lc.size(1), hw = lc.size(2) * lc.size(3);
  const int64_t n_pix = B * hw;
  if (n_pix == 0) return {grad_logits, grad_gate};
  if (p == 0) return {grad_logits, grad_gate.zero_()};
  PDNET_DISPATCH_CUDA_TYPES(lc.scalar_type(), "part_masks_backward_cuda", [&] {
    launch_grid_stride(part_masks_bwd_kernel<device_t<scalar_t>>, n_pix, dptr<scalar_t>(goc), dptr<scalar_t>(lc),
                       dptr<scalar_t>(gc), mptr<scalar_t>(grad_logits), gate_grad ? mptr<scalar_t>(grad_gate) : nullptr,
                       n_pix, p, hw, gate_is_logit);
  });
  return {grad_logits, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("part_masks", &part_masks_cuda);
  m.impl("part_masks_backward", &part_masks_backward_cuda);
}

}  // namespace pdnet::ops
