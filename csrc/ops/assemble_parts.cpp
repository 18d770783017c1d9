// pdnet::assemble_parts: M = sum_k (P^k + Y^k) * R^k, the correlation assembly.
// Schemas, C++ API and input checks; kernels in cpu/ and cuda/assemble_parts_kernel.*.
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace pdnet::ops {

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def("assemble_parts(Tensor p_feats, Tensor y_feats, Tensor masks) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def(
      "assemble_parts_backward(Tensor grad_out, Tensor p_feats, Tensor y_feats, Tensor masks, "
      "bool feats_grad, bool masks_grad) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

at::Tensor assemble_parts(const at::Tensor& p_feats, const at::Tensor& y_feats, const at::Tensor& masks) {
  static const auto op = detail::typed_op<decltype(assemble_parts)>("pdnet::assemble_parts");
  return op.call(p_feats, y_feats, masks);
}

std::tuple<at::Tensor, at::Tensor> assemble_parts_backward(const at::Tensor& grad_out, const at::Tensor& p_feats,
                                                           const at::Tensor& y_feats, const at::Tensor& masks,
                                                           bool feats_grad, bool masks_grad) {
  static const auto op = detail::typed_op<decltype(assemble_parts_backward)>("pdnet::assemble_parts_backward");
  return op.call(grad_out, p_feats, y_feats, masks, feats_grad, masks_grad);
}

namespace detail {

void check_assemble_parts(const char* where, const at::Tensor& p_feats, const at::Tensor& y_feats,
                          const at::Tensor& masks) {
  check_float_rank(where, "p_feats", p_feats, 5, "(B, p, C, h, w)");
  check_float_rank(where, "y_feats", y_feats, 5, "(B, p, C, h, w)");
  check_float_rank(where, "masks", masks, 4, "(B, p, h, w)");
  check_like(where, "y_feats", y_feats, "p_feats", p_feats, true);
  check_like(where, "masks", masks, "p_feats", p_feats, true);
  check_same_shape(where, "y_feats", y_feats, "p_feats", p_feats);
  TORCH_CHECK(masks.size(0) == p_feats.size(0) && masks.size(1) == p_feats.size(1) &&
                  masks.size(2) == p_feats.size(3) && masks.size(3) == p_feats.size(4),
              where, ": masks must be (B, p, h, w) to match p_feats ", describe(p_feats), ", got ", describe(masks));
}

void check_assemble_parts_backward(const char* where, const at::Tensor& grad_out, const at::Tensor& p_feats,
                                   const at::Tensor& y_feats, const at::Tensor& masks) {
  check_assemble_parts(where, p_feats, y_feats, masks);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == p_feats.size(0) && grad_out.size(1) == p_feats.size(2) &&
                  grad_out.size(2) == p_feats.size(3) && grad_out.size(3) == p_feats.size(4),
              where, ": grad_out must be (B, C, h, w) to match p_feats ", describe(p_feats), ", got ",
              describe(grad_out));
  check_like(where, "grad_out", grad_out, "p_feats", p_feats, false);
}

}  // namespace detail
}  // namespace pdnet::ops
