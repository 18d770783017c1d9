// pdnet::winograd_conv3x3: C++ API and input checks (schema in ../winograd_conv.cpp, CPU kernel
// in winograd_kernel.cpp, cores in winograd.h / winograd_vec.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace pdnet::ops {

// [N, Cout, H, W] = act(conv3x3(x, g, padding 1) + bias + residual), with U [36, Cin, Cout] =
// G g G^T the F(4x4, 3x3) transform of the weights g [Cout, Cin, 3, 3]; act is ReLU when relu.
// x [N, Cin, H, W] float32 (the result has x's memory format: channels_last or contiguous);
// bias [Cout] and residual [N, Cout, H, W] optional.
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias, bool relu,
                            int64_t out_channels, const std::optional<at::Tensor>& residual);

namespace detail {
void check_winograd_conv3x3(const char* where, const at::Tensor& x, const at::Tensor& U,
                            const std::optional<at::Tensor>& bias, int64_t out_channels,
                            const std::optional<at::Tensor>& residual);
}  // namespace detail

}  // namespace pdnet::ops
