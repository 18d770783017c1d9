// pdnet::eval_frame_counts(pred, gt, radius) -> counts [7, T] int64: the DAVIS J and
// boundary-F counts (and the flicker sums) of a sequence of binary masks, fused on the
// CPU. pdnet.evaluation.metrics.frame_counts calls it for CPU tensors when the extension
// is built (the torch path in pdnet/evaluation/_bits.py computes the same counts on any
// device). Rows of the result: see Count in boundary.h.
//
// The frames are split into blocks of consecutive frames handed out to torch's intra-op
// threads (pdnet::cpu::parallel_items); each block re-packs the frame before it for the
// flicker. The kernel itself is in boundary_impl.h (this file: baseline build;
// boundary_avx2.cpp: AVX2 build, run when cpu_isa() of ../cpu/isa.h is AVX2 or AVX512).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "../cpu/parallel.h"
#include "boundary.h"

namespace pdnet::eval {

namespace dflt {
namespace {
#include "boundary_impl.h"
}  // namespace

void frame_block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch) {
  block(a, t0, t1, scratch);
}
}  // namespace dflt

int64_t scratch_words(const Args& a) {
  return dflt::block_scratch_words(a);
}

namespace {

// Half-widths of the disk's rows: w[dy] = max{w : w^2 + dy^2 <= r^2}, dy = 0..r.
std::vector<int64_t> disk_widths(int64_t r) {
  std::vector<int64_t> w(r + 1);
  int64_t k = r;
  for (int64_t dy = 0; dy <= r; ++dy) {
    while (k * k + dy * dy > r * r) --k;
    w[dy] = k;
  }
  return w;
}

at::Tensor eval_frame_counts_cpu(const at::Tensor& pred, const at::Tensor& gt, int64_t radius) {
  const char* where = "pdnet::eval_frame_counts";
  TORCH_CHECK(pred.scalar_type() == at::kBool && gt.scalar_type() == at::kBool, where,
              ": pred and gt must be bool tensors, got ", pred.scalar_type(), " and ", gt.scalar_type());
  TORCH_CHECK(pred.dim() == 3, where, ": pred must be (T, H, W), got shape ", pred.sizes());
  TORCH_CHECK(gt.sizes() == pred.sizes(), where, ": pred and gt must have the same shape, got ", pred.sizes(), " and ",
              gt.sizes());
  TORCH_CHECK(pred.device().is_cpu() && gt.device().is_cpu(), where, ": pred and gt must be on the CPU, got ",
              pred.device(), " and ", gt.device());
  TORCH_CHECK(pred.size(1) > 0 && pred.size(2) > 0, where, ": empty images of shape ", pred.sizes());
  TORCH_CHECK(radius >= 0, where, ": radius must be >= 0, got ", radius);
  const at::Tensor p = pred.contiguous(), g = gt.contiguous();
  const int64_t T = p.size(0), H = p.size(1), W = p.size(2), Wp = (W + 63) / 64;
  at::Tensor counts = at::zeros({kCounts, T}, p.options().dtype(at::kLong));
  if (T == 0) return counts;
  // two pixels of the image are at most sqrt((H-1)^2 + (W-1)^2) < H + W apart: a larger
  // disk dilates every boundary pixel to the whole image, as the disk of radius H + W does
  const int64_t r = std::min(radius, H + W);

  // the disk's rows and the chain of horizontal dilations ("levels") that builds them
  const std::vector<int64_t> widths = disk_widths(r);
  std::vector<int64_t> ks(widths.begin(), widths.end());
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  std::vector<int64_t> level_width{0}, step_src{0}, step_shift{0};
  for (int64_t k : ks) {
    if (k == 0) continue;
    for (;;) {
      const int64_t a = level_width.back(), src = static_cast<int64_t>(level_width.size()) - 1;
      // from half-width a a shift s gives half-width a + s exactly when s <= 2a + 1
      const int64_t next = k - a <= 2 * a + 1 ? k : 3 * a + 1;
      level_width.push_back(next);
      step_src.push_back(src);
      step_shift.push_back(next - a);
      if (next == k) break;
    }
  }
  std::vector<int64_t> dy_level(r + 1);
  for (int64_t dy = 0; dy <= r; ++dy) {
    dy_level[dy] = std::find(level_width.begin(), level_width.end(), widths[dy]) - level_width.begin();
  }
  std::vector<uint64_t> e_mask(Wp);
  for (int64_t j = 0; j < Wp; ++j) {
    const int64_t n = std::clamp<int64_t>(W - 1 - 64 * j, 0, 64);
    e_mask[j] = n >= 64 ? ~0ULL : ((1ULL << n) - 1);
  }

  Args a{};
  a.pred = reinterpret_cast<const uint8_t*>(p.const_data_ptr<bool>());
  a.gt = reinterpret_cast<const uint8_t*>(g.const_data_ptr<bool>());
  a.T = T;
  a.H = H;
  a.W = W;
  a.Wp = Wp;
  a.radius = r;
  a.levels = static_cast<int64_t>(level_width.size());
  a.step_src = step_src.data();
  a.step_shift = step_shift.data();
  a.dy_level = dy_level.data();
  a.ext = (r + 63) / 64;
  a.e_mask = e_mask.data();
  a.counts = counts.mutable_data_ptr<int64_t>();

#if PDNET_X86_ISA_BUILDS
  const auto run = cpu::cpu_isa() == cpu::Isa::kDefault ? &dflt::frame_block : &avx2::frame_block;
#else
  const auto run = &dflt::frame_block;
#endif
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // one block per thread would be best on an idle machine; two per thread let a thread
  // that the OS delays be helped out, at the cost of one extra frame packed per block
  const int64_t per = threads == 1 ? T : std::max<int64_t>(1, (T + 2 * threads - 1) / (2 * threads));
  const int64_t blocks = (T + per - 1) / per;
  const int64_t words = scratch_words(a);
  pdnet::cpu::parallel_items(
      blocks, [words] { return std::vector<uint64_t>(words); },
      [&](int64_t i, std::vector<uint64_t>& scratch) { run(a, i * per, std::min(T, (i + 1) * per), scratch.data()); });
  return counts;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def("eval_frame_counts(Tensor pred, Tensor gt, int radius) -> Tensor");
}

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("eval_frame_counts", &eval_frame_counts_cpu);
}

}  // namespace pdnet::eval
