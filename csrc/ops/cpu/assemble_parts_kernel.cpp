// CPU kernels of pdnet::assemble_parts and pdnet::assemble_parts_backward (cores in
// assemble_parts_vec.h). float16 / bfloat16 are computed in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../../cpu/parallel.h"
#include "../common.h"
#include "../ops.h"
#include "kernel_table.h"

namespace pdnet::ops {
namespace {

constexpr int64_t kPixelChunk = 2048;

at::Tensor assemble_parts_cpu(const at::Tensor& p_feats, const at::Tensor& y_feats, const at::Tensor& masks) {
  detail::check_assemble_parts("pdnet::assemble_parts (CPU)", p_feats, y_feats, masks);
  const auto work = detail::opmath_type(p_feats.scalar_type());
  const at::Tensor pc = p_feats.to(work).contiguous();
  const at::Tensor yc = y_feats.to(work).contiguous();
  const at::Tensor mc = masks.to(work).contiguous();
  const int64_t B = pc.size(0), p = pc.size(1), C = pc.size(2), hw = pc.size(3) * pc.size(4);
  if (p == 0) return at::zeros({B, C, pc.size(3), pc.size(4)}, p_feats.options());
  at::Tensor out = at::empty({B, C, pc.size(3), pc.size(4)}, pc.options());
  if (out.numel() == 0) return out.to(p_feats.scalar_type());
  const int64_t nch = (hw + kPixelChunk - 1) / kPixelChunk;
  AT_DISPATCH_FLOATING_TYPES(work, "assemble_parts_cpu", [&] {
    const auto& K = pdnet::cpu::kernels<scalar_t>();
    const scalar_t* P = pc.const_data_ptr<scalar_t>();
    const scalar_t* Y = yc.const_data_ptr<scalar_t>();
    const scalar_t* R = mc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    pdnet::cpu::parallel_items(B * C * nch, [&](int64_t item) {
      const int64_t s = (item % nch) * kPixelChunk, bc = item / nch;
      const int64_t b = bc / C, c = bc % C;
      K.assemble_forward(P + b * p * C * hw, Y + b * p * C * hw, R + b * p * hw, o + b * C * hw, p, C, hw, c, s,
                         std::min(hw, s + kPixelChunk));
    });
  });
  return out.to(p_feats.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> assemble_parts_backward_cpu(const at::Tensor& grad_out, const at::Tensor& p_feats,
                                                               const at::Tensor& y_feats, const at::Tensor& masks,
                                                               bool feats_grad, bool masks_grad) {
  const char* where = "pdnet::assemble_parts_backward (CPU)";
  detail::check_assemble_parts_backward(where, grad_out, p_feats, y_feats, masks);
  const int64_t B = p_feats.size(0), p = p_feats.size(1), C = p_feats.size(2);
  const int64_t h = p_feats.size(3), w = p_feats.size(4), hw = h * w;
  const auto work = detail::opmath_type(p_feats.scalar_type());
  const auto dtype = p_feats.scalar_type();
  const at::Tensor gc = grad_out.to(work).contiguous();
  const at::Tensor mc = masks.to(work).contiguous();
  at::Tensor pc, yc;
  if (masks_grad) {
    pc = p_feats.to(work).contiguous();
    yc = y_feats.to(work).contiguous();
  }
  at::Tensor gf = feats_grad ? at::empty({B, p, C, h, w}, gc.options()) : at::empty({0}, gc.options());
  at::Tensor gm = masks_grad ? at::empty({B, p, h, w}, gc.options()) : at::empty({0}, gc.options());
  if (B * p * hw > 0 && (feats_grad || masks_grad)) {
    if (C == 0 && masks_grad) gm.zero_();
    const int64_t nch = (hw + kPixelChunk - 1) / kPixelChunk;
    AT_DISPATCH_FLOATING_TYPES(work, "assemble_parts_backward_cpu", [&] {
      const auto& K = pdnet::cpu::kernels<scalar_t>();
      const scalar_t* g = gc.const_data_ptr<scalar_t>();
      const scalar_t* P = masks_grad ? pc.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* Y = masks_grad ? yc.const_data_ptr<scalar_t>() : nullptr;
      const scalar_t* R = mc.const_data_ptr<scalar_t>();
      scalar_t* gfp = feats_grad ? gf.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gmp = masks_grad ? gm.mutable_data_ptr<scalar_t>() : nullptr;
      pdnet::cpu::parallel_items(B * p * nch, [&](int64_t item) {
        const int64_t s = (item % nch) * kPixelChunk, bk = item / nch;
        const int64_t b = bk / p, kk = bk % p;
        K.assemble_backward(
            g + b * C * hw, P != nullptr ? P + b * p * C * hw : nullptr, Y != nullptr ? Y + b * p * C * hw : nullptr,
            R + b * p * hw, gfp != nullptr ? gfp + b * p * C * hw : nullptr,
            gmp != nullptr ? gmp + b * p * hw : nullptr, p, C, hw, kk, s, std::min(hw, s + kPixelChunk));
      });
    });
  }
  return {gf.to(dtype), gm.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("assemble_parts", &assemble_parts_cpu);
  m.impl("assemble_parts_backward", &assemble_parts_backward_cpu);
}

}  // namespace pdnet::ops
