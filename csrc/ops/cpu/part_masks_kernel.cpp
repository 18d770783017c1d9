// CPU kernels of pdnet::part_masks and pdnet::part_masks_backward (cores in
// part_masks_vec.h). float16 / bfloat16 are computed in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../../cpu/parallel.h"
#include "../common.h"
#include "../ops.h"
#include "kernel_table.h"

namespace pdnet::ops {
namespace {

constexpr int64_t kPixelChunk = 4096;

at::Tensor part_masks_cpu(const at::Tensor& part_logits, const at::Tensor& gate, bool gate_is_logit) {
  detail::check_part_masks("pdnet::part_masks (CPU)", part_logits, gate);
  const auto work = detail::opmath_type(part_logits.scalar_type());
  const at::Tensor lc = part_logits.to(work).contiguous();
  const at::Tensor gc = gate.to(work).contiguous();
  at::Tensor out = at::empty(lc.sizes(), lc.options());
  const int64_t B = lc.size(0), p = lc.size(1), hw = lc.size(2) * lc.size(3);
  if (out.numel() == 0) return out.to(part_logits.scalar_type());
  const int64_t nch = (hw + kPixelChunk - 1) / kPixelChunk;
  AT_DISPATCH_FLOATING_TYPES(work, "part_masks_cpu", [&] {
    const auto& K = pdnet::cpu::kernels<scalar_t>();
    const scalar_t* l = lc.const_data_ptr<scalar_t>();
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    pdnet::cpu::parallel_items(B * nch, [&](int64_t item) {
      const int64_t b = item / nch, s = (item % nch) * kPixelChunk;
      K.part_masks_forward(l + b * p * hw, g + b * hw, o + b * p * hw, p, hw, s, std::min(hw, s + kPixelChunk),
                           gate_is_logit);
    });
  });
  return out.to(part_logits.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> part_masks_backward_cpu(const at::Tensor& grad_out, const at::Tensor& part_logits,
                                                           const at::Tensor& masks, const at::Tensor& gate,
                                                           bool gate_is_logit, bool gate_grad) {
  const char* where = "pdnet::part_masks_backward (CPU)";
  detail::check_part_masks_backward(where, grad_out, part_logits, masks, gate);
  const auto work = detail::opmath_type(part_logits.scalar_type());
  const auto dtype = part_logits.scalar_type();
  // The forward's output gives the softmax without exps, unless it was rounded to a low
  // precision dtype or the gradient of a ground-truth gate is wanted (part_masks_vec.h).
  const bool from_masks = dtype == work && (gate_is_logit || !gate_grad);
  const at::Tensor goc = grad_out.to(work).contiguous();
  const at::Tensor src = (from_masks ? masks : part_logits).to(work).contiguous();
  const at::Tensor gc = gate.to(work).contiguous();
  at::Tensor grad_logits = at::empty(src.sizes(), src.options());
  at::Tensor grad_gate = gate_grad ? at::empty(gc.sizes(), gc.options()) : at::empty({0}, gc.options());
  const int64_t B = src.size(0), p = src.size(1), hw = src.size(2) * src.size(3);
  if (B * hw == 0 || p == 0) return {grad_logits.to(dtype), grad_gate.zero_().to(dtype)};
  const int64_t nch = (hw + kPixelChunk - 1) / kPixelChunk;
  AT_DISPATCH_FLOATING_TYPES(work, "part_masks_backward_cpu", [&] {
    const auto& K = pdnet::cpu::kernels<scalar_t>();
    const auto core = from_masks ? K.part_masks_backward_from_masks : K.part_masks_backward;
    const scalar_t* go = goc.const_data_ptr<scalar_t>();
    const scalar_t* l = src.const_data_ptr<scalar_t>();  // [B, p, hw] masks or logits
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    scalar_t* gl = grad_logits.mutable_data_ptr<scalar_t>();
    scalar_t* gg = gate_grad ? grad_gate.mutable_data_ptr<scalar_t>() : nullptr;
    pdnet::cpu::parallel_items(B * nch, [&](int64_t item) {
      const int64_t b = item / nch, s = (item % nch) * kPixelChunk;
      core(go + b * p * hw, l + b * p * hw, g + b * hw, gl + b * p * hw, gg != nullptr ? gg + b * hw : nullptr, p, hw,
           s, std::min(hw, s + kPixelChunk), gate_is_logit);
    });
  });
  return {grad_logits.to(dtype), grad_gate.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("part_masks", &part_masks_cpu);
  m.impl("part_masks_backward", &part_masks_backward_cpu);
}

}  // namespace pdnet::ops
