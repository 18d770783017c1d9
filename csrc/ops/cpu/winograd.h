// Winograd F(4x4, 3x3) convolution on the CPU (pdnet::winograd_conv3x3): the per-ISA cores.
//
// A 3x3, stride 1, padding 1 convolution of an NHWC image is computed tile by tile: the output
// is cut into 4x4 tiles (the last row / column of tiles may overhang the image), tile t reads the
// 6x6 input patch at rows 4*ty-1 .. 4*ty+4 and columns 4*tx-1 .. 4*tx+4 (zero outside), and
//   V_t = B^T d_t B                      (input transform, 6x6 per channel)
//   M_t[e, co] = sum_ci V_t[e, ci] U[e, ci, co]   (36 GEMMs, e = 6*i + j)
//   y_t = A^T M_t A (+ bias, + residual, ReLU)    (output transform, 4x4 per channel)
// with U = G g G^T the transformed weights [36, Cin, Cout] (pdnet/inference/winograd.py).
// The transforms are vectorised over channels, the GEMM has its own register-blocked kernel.
//
// The cores are compiled once per instruction-set build (winograd_table_<isa>.cpp, see
// ../../cpu/isa.h); winograd_kernels() is the build this process runs.
#pragma once

#include <cstdint>

#include "../../cpu/isa.h"

namespace pdnet::cpu {

// Geometry of one convolution: N images of H x W pixels, Cin -> Cout channels, th x tw tiles
// of 4x4 output pixels per image (th = ceil(H / 4), tw = ceil(W / 4)). Tiles are numbered
// t = (n * th + ty) * tw + tx.
struct WinogradGeom {
  int64_t N, H, W, Cin, Cout, th, tw;
};

struct WinogradKernels {
  // Tiles [t0, t1): x NHWC [N, H, W, Cin] -> V[e * v_estride + (t - t0) * Cin + ci].
  void (*input_transform)(const float* x, const WinogradGeom& g, int64_t t0, int64_t t1, float* V, int64_t v_estride);
  // For e in [0, 36): M_e [rows, Cout] = V_e [rows, Cin] @ U_e [Cin, Cout], with V_e = V + e * v_estride
  // (row stride Cin), U_e = U + e * Cin * Cout, M_e = M + e * m_estride (row stride Cout).
  void (*gemm)(const float* V, int64_t v_estride, const float* U, float* M, int64_t m_estride, int64_t rows,
               int64_t Cin, int64_t Cout);
  // Tiles [t0, t1): M[e * m_estride + (t - t0) * Cout + co] -> out NHWC [N, H, W, Cout], the pixels
  // inside the image; bias [Cout] and residual NHWC [N, H, W, Cout] may be null.
  void (*output_transform)(const float* M, int64_t m_estride, const WinogradGeom& g, int64_t t0, int64_t t1,
                           const float* bias, const float* residual, bool relu, float* out);
};

const WinogradKernels& winograd_DEFAULT();
#if PDNET_X86_ISA_BUILDS
const WinogradKernels& winograd_AVX2();
const WinogradKernels& winograd_AVX512();
#endif

inline const WinogradKernels& winograd_kernels() {
  switch (cpu_isa()) {
#if PDNET_X86_ISA_BUILDS
    case Isa::kAvx512:
      return winograd_AVX512();
    case Isa::kAvx2:
      return winograd_AVX2();
#endif
    default:
      return winograd_DEFAULT();
  }
}

}  // namespace pdnet::cpu
