// pdnet::area_variance: the area-variance loss (paper eq. 3-4). Schemas, C++ API and
// input checks; kernels in cpu/ and cuda/area_variance_kernel.*, the per-batch formula
// shared by both in area_variance_math.h.
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace pdnet::ops {

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def("area_variance(Tensor x) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("area_variance_backward(Tensor grad_loss, Tensor x, Tensor areas) -> Tensor", {at::Tag::pt2_compliant_tag});
}

std::tuple<at::Tensor, at::Tensor> area_variance(const at::Tensor& x) {
  static const auto op = detail::typed_op<decltype(area_variance)>("pdnet::area_variance");
  return op.call(x);
}

at::Tensor area_variance_backward(const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& areas) {
  static const auto op = detail::typed_op<decltype(area_variance_backward)>("pdnet::area_variance_backward");
  return op.call(grad_loss, x, areas);
}

namespace detail {

void check_area_variance(const char* where, const at::Tensor& x) {
  check_float_rank(where, "x", x, 4, "(B, p, H, W)");
}

void check_area_variance_backward(const char* where, const at::Tensor& grad_loss, const at::Tensor& x,
                                  const at::Tensor& areas) {
  check_area_variance(where, x);
  TORCH_CHECK(grad_loss.numel() == 1, where, ": grad_loss must hold one value, got ", describe(grad_loss));
  TORCH_CHECK(areas.dim() == 2 && areas.size(0) == x.size(0) && areas.size(1) == x.size(1), where,
              ": areas must be (B, p) to match x ", describe(x), ", got ", describe(areas));
  check_like(where, "areas", areas, "x", x, false);
}

}  // namespace detail
}  // namespace pdnet::ops
