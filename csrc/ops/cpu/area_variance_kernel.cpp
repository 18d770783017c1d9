// CPU kernels of pdnet::area_variance and pdnet::area_variance_backward: part areas by
// a parallel chunked reduction (cores in area_variance_vec.h), the loss and the
// per-(b, part) gradient coefficients by the formula in ../area_variance_math.h, in
// float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <vector>

#include "../../cpu/parallel.h"
#include "../area_variance_math.h"
#include "../common.h"
#include "../ops.h"
#include "kernel_table.h"

namespace pdnet::ops {
namespace {

constexpr int64_t kPixelChunk = 32768;

std::tuple<at::Tensor, at::Tensor> area_variance_cpu(const at::Tensor& x) {
  detail::check_area_variance("pdnet::area_variance (CPU)", x);
  const auto work = detail::opmath_type(x.scalar_type());
  const at::Tensor xc = x.to(work).contiguous();
  const int64_t B = xc.size(0), p = xc.size(1), hw = xc.size(2) * xc.size(3), BP = B * p;
  std::vector<double> areas(BP, 0.0);
  if (BP > 0 && hw > 0) {
    const int64_t nch = (hw + kPixelChunk - 1) / kPixelChunk;
    std::vector<double> partial(BP * nch, 0.0);
    AT_DISPATCH_FLOATING_TYPES(work, "area_variance_cpu", [&] {
      const auto& K = pdnet::cpu::kernels<scalar_t>();
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      pdnet::cpu::parallel_items(BP * nch, [&](int64_t item) {
        const int64_t row = item / nch, s = (item % nch) * kPixelChunk;
        partial[item] = K.sum(xp + row * hw + s, std::min(kPixelChunk, hw - s));
      });
    });
    for (int64_t row = 0; row < BP; ++row)
      for (int64_t c = 0; c < nch; ++c) areas[row] += partial[row * nch + c];
  }
  const double loss = area_math::loss_of(areas.data(), B, p);
  at::Tensor areas_t = at::empty({B, p}, xc.options().dtype(at::kDouble));
  std::copy(areas.begin(), areas.end(), areas_t.mutable_data_ptr<double>());
  return {at::full({}, loss, x.options()), areas_t.to(work)};
}

// The gradient of x is coef[b, k] at every pixel of (b, k): the kernel returns coef
// [B, p] and the autograd formula broadcasts it with expand (no pass over the pixels, as
// torch's own sum backward), so that a consumer of the gradient reads it without it
// ever being written out in full.
at::Tensor area_variance_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& areas) {
  const char* where = "pdnet::area_variance_backward (CPU)";
  detail::check_area_variance_backward(where, grad_loss, x, areas);
  const int64_t B = x.size(0), p = x.size(1);
  at::Tensor coef = at::empty({B, p}, x.options().dtype(at::kDouble));
  if (B * p == 0) return coef.to(x.scalar_type());
  const double g = grad_loss.item<double>() / static_cast<double>(B);
  const at::Tensor ac = areas.to(at::kDouble).contiguous();
  for (int64_t b = 0; b < B; ++b)
    area_math::variance_grad(ac.const_data_ptr<double>() + b * p, p, g, coef.mutable_data_ptr<double>() + b * p);
  return coef.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("area_variance", &area_variance_cpu);
  m.impl("area_variance_backward", &area_variance_backward_cpu);
}

}  // namespace pdnet::ops
