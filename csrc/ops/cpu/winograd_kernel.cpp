// CPU kernel of pdnet::winograd_conv3x3 (algorithm and cores: winograd.h, winograd_vec.h).
//
// The tiles are processed in blocks of tiles_per_block() tiles (all 36 planes of the block's V
// and M stay in the core's L2 cache): each worker thread takes a block, transforms its input patches
// into V, runs the 36 GEMMs into M, and transforms M into the output pixels, with per-thread
// scratch kept between calls. The whole image in one block ("three passes") is the other
// option: V for every tile, the GEMMs by at::bmm (MKL / oneDNN), then the output transform; it
// is faster on small images (tiles_per_block returns 0 there).
// PDNET_WINOGRAD_TILES=<n> sets the block size (0: three passes), for benchmarks.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "../../cpu/parallel.h"
#include "../common.h"
#include "winograd.h"
#include "winograd_op.h"

namespace pdnet::ops {
namespace {

// Tiles per block: V and M of a block (36 * tiles * (Cin + Cout) floats) within about 1.5 MiB
// (the L2 cache of a core is 1-2 MiB), at most 96 tiles (larger blocks measured no faster), at
// least 24 (the GEMM reads all of U once per block), a multiple of the GEMM's 6 rows, and small
// enough that every thread gets a block.
int64_t tiles_per_block(int64_t tiles, int64_t Cin, int64_t Cout) {
  if (const char* env = std::getenv("PDNET_WINOGRAD_TILES")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v >= 0) return v;
  }
  // Small images: V and M of the whole image within 6 MiB run in three passes, whose at::bmm
  // splits the 36 GEMMs over the threads and reads U once, not once per block (measured faster
  // up to there, 2 threads: 256 channels at 20x20 and 30x30, 512 at 10x10; slower from 7 MiB
  // on: 64 channels at 80x80, 128 at 80x80).
  if (36 * tiles * (Cin + Cout) * 4 <= 6 * 1024 * 1024) return 0;
  const int64_t budget = 3 * 512 * 1024 / 4;
  int64_t t = std::clamp<int64_t>(budget / (36 * std::max<int64_t>(1, Cin + Cout)), 24, 96);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  t = std::min(t, (tiles + threads - 1) / threads);
  return std::max<int64_t>(6, (t + 5) / 6 * 6);
}

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias,
                                bool relu, int64_t out_channels, const std::optional<at::Tensor>& residual) {
  const char* where = "pdnet::winograd_conv3x3 (CPU)";
  detail::check_winograd_conv3x3(where, x, U, bias, out_channels, residual);
  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);  // NHWC
  const at::Tensor uc = U.contiguous();
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), Cout = out_channels;
  at::Tensor out = at::empty({N, Cout, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return channels_last ? out : out.contiguous();
  at::Tensor bc, rc;
  if (bias.has_value() && bias->defined()) bc = bias->contiguous();
  if (residual.has_value() && residual->defined()) rc = residual->contiguous(at::MemoryFormat::ChannelsLast);
  const cpu::WinogradGeom g{N, H, W, Cin, Cout, (H + 3) / 4, (W + 3) / 4};
  const int64_t T = N * g.th * g.tw;
  const auto& K = cpu::winograd_kernels();
  const float* xp = xc.const_data_ptr<float>();
  const float* up = uc.const_data_ptr<float>();
  const float* bp = bc.defined() ? bc.const_data_ptr<float>() : nullptr;
  const float* rp = rc.defined() ? rc.const_data_ptr<float>() : nullptr;
  float* op = out.mutable_data_ptr<float>();
  const int64_t tb = tiles_per_block(T, Cin, Cout);
  if (tb == 0) {  // three passes over the whole image
    at::Tensor V = at::empty({36, T, Cin}, x.options());
    float* vp = V.mutable_data_ptr<float>();
    at::parallel_for(0, T, 16,
                     [&](int64_t t0, int64_t t1) { K.input_transform(xp, g, t0, t1, vp + t0 * Cin, T * Cin); });
    const at::Tensor M = at::bmm(V, uc);  // [36, T, Cout]
    const float* mp = M.const_data_ptr<float>();
    at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
      K.output_transform(mp + t0 * Cout, T * Cout, g, t0, t1, bp, rp, relu, op);
    });
  } else {
    const int64_t blocks = (T + tb - 1) / tb;
    cpu::parallel_items(
        blocks,
        [&] {
          thread_local std::vector<float> scratch;  // kept between calls: no page faults per call
          const size_t need = static_cast<size_t>(36 * tb * (Cin + Cout));
          if (scratch.size() < need) scratch.resize(need);
          return scratch.data();
        },
        [&](int64_t block, float* scratch) {
          const int64_t t0 = block * tb, t1 = std::min(T, t0 + tb), rows = t1 - t0;
          float* V = scratch;                  // [36, rows, Cin]
          float* M = scratch + 36 * tb * Cin;  // [36, rows, Cout]
          K.input_transform(xp, g, t0, t1, V, rows * Cin);
          K.gemm(V, rows * Cin, up, M, rows * Cout, rows, Cin, Cout);
          K.output_transform(M, rows * Cout, g, t0, t1, bp, rp, relu, op);
        });
  }
  return channels_last ? out : out.contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
}

}  // namespace pdnet::ops
