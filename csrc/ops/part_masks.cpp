// pdnet::part_masks: R = softmax over parts(D) * sigmoid(S) (gate_is_logit) or * G.
// Schemas, C++ API and input checks; kernels in cpu/ and cuda/part_masks_kernel.*.
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace pdnet::ops {

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def("part_masks(Tensor part_logits, Tensor gate, bool gate_is_logit) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def(
      "part_masks_backward(Tensor grad_out, Tensor part_logits, Tensor masks, Tensor gate, "
      "bool gate_is_logit, "
      "bool gate_grad) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

at::Tensor part_masks(const at::Tensor& part_logits, const at::Tensor& gate, bool gate_is_logit) {
  static const auto op = detail::typed_op<decltype(part_masks)>("pdnet::part_masks");
  return op.call(part_logits, gate, gate_is_logit);
}

std::tuple<at::Tensor, at::Tensor> part_masks_backward(const at::Tensor& grad_out, const at::Tensor& part_logits,
                                                       const at::Tensor& masks, const at::Tensor& gate,
                                                       bool gate_is_logit, bool gate_grad) {
  static const auto op = detail::typed_op<decltype(part_masks_backward)>("pdnet::part_masks_backward");
  return op.call(grad_out, part_logits, masks, gate, gate_is_logit, gate_grad);
}

namespace detail {

void check_part_masks(const char* where, const at::Tensor& part_logits, const at::Tensor& gate) {
  check_float_rank(where, "part_logits", part_logits, 4, "(B, p, h, w)");
  check_float_rank(where, "gate", gate, 4, "(B, 1, h, w)");
  check_like(where, "gate", gate, "part_logits", part_logits, true);
  TORCH_CHECK(gate.size(0) == part_logits.size(0) && gate.size(1) == 1 && gate.size(2) == part_logits.size(2) &&
                  gate.size(3) == part_logits.size(3),
              where, ": gate must be (B, 1, h, w) to match part_logits ", describe(part_logits), ", got ",
              describe(gate));
}

void check_part_masks_backward(const char* where, const at::Tensor& grad_out, const at::Tensor& part_logits,
                               const at::Tensor& masks, const at::Tensor& gate) {
  check_part_masks(where, part_logits, gate);
  check_same_shape(where, "grad_out", grad_out, "part_logits", part_logits);
  check_same_shape(where, "masks", masks, "part_logits", part_logits);
  check_like(where, "grad_out", grad_out, "part_logits", part_logits, false);
}

}  // namespace detail
}  // namespace pdnet::ops
