// pdnet::winograd_conv3x3: a 3x3, stride 1, padding 1 convolution by Winograd F(4x4, 3x3), with
// the bias, a residual and ReLU fused into the output transform. Schema, C++ API and input
// checks; the CPU kernel is cpu/winograd_kernel.cpp (algorithm: cpu/winograd.h). The weights
// come pre-transformed (U = G g G^T, pdnet.inference.winograd.winograd_weights). Autograd and
// the fake kernel are registered from Python (pdnet/inference/winograd.py).
#include <torch/library.h>

#include "common.h"
#include "cpu/winograd_op.h"

namespace pdnet::ops {

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def(
      "winograd_conv3x3(Tensor x, Tensor U, Tensor? bias, bool relu, int out_channels, Tensor? residual=None) -> "
      "Tensor",
      {at::Tag::pt2_compliant_tag});
}

at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias, bool relu,
                            int64_t out_channels, const std::optional<at::Tensor>& residual) {
  static const auto op = detail::typed_op<decltype(winograd_conv3x3)>("pdnet::winograd_conv3x3");
  return op.call(x, U, bias, relu, out_channels, residual);
}

namespace detail {

void check_winograd_conv3x3(const char* where, const at::Tensor& x, const at::Tensor& U,
                            const std::optional<at::Tensor>& bias, int64_t out_channels,
                            const std::optional<at::Tensor>& residual) {
  check_float_rank(where, "x", x, 4, "(N, Cin, H, W)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, where, ": x must be float32, got ", describe(x));
  check_float_rank(where, "U", U, 3, "(36, Cin, Cout)");
  check_like(where, "U", U, "x", x, true);
  TORCH_CHECK(out_channels >= 0, where, ": out_channels must be >= 0, got ", out_channels);
  TORCH_CHECK(U.size(0) == 36 && U.size(1) == x.size(1) && U.size(2) == out_channels, where,
              ": U must be (36, Cin, Cout) = (36, ", x.size(1), ", ", out_channels,
              ") (F(4x4, 3x3) weights of x's channels and out_channels), got ", describe(U));
  if (bias.has_value() && bias->defined()) {
    check_like(where, "bias", *bias, "x", x, true);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, where, ": bias must be (Cout,) = (", out_channels,
                ",), got ", describe(*bias));
  }
  if (residual.has_value() && residual->defined()) {
    check_like(where, "residual", *residual, "x", x, true);
    TORCH_CHECK(residual->dim() == 4 && residual->size(0) == x.size(0) && residual->size(1) == out_channels &&
                    residual->size(2) == x.size(2) && residual->size(3) == x.size(3),
                where, ": residual must be (N, Cout, H, W) = (", x.size(0), ", ", out_channels, ", ", x.size(2), ", ",
                x.size(3), "), got ", describe(*residual));
  }
}

}  // namespace detail
}  // namespace pdnet::ops
