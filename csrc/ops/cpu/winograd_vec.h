// The vectorised cores of the Winograd F(4x4, 3x3) convolution (the algorithm: winograd.h).
// Included only by winograd_table_<isa>.cpp after ../../cpu/isa_build.h, so that at::vec and the
// cores compile into the build's inline namespace.
//
// Transforms (Lavin & Gray 2016, interpolation points 0, +-1, +-2, inf), on 6-vectors d / m:
//   B^T d = (4 d0 - 5 d2 + d4, (d4 - 4 d2) + (d3 - 4 d1), (d4 - 4 d2) - (d3 - 4 d1),
//            (d4 - d2) + 2 (d3 - d1), (d4 - d2) - 2 (d3 - d1), 4 d1 - 5 d3 + d5)
//   A^T m = (m0 + s12 + s34, d12 + 2 d34, s12 + 4 s34, d12 + 8 d34 + m5)
//           with s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4.
// Each is applied along the rows of the 6x6 (4x6) tile, then along its columns, on one vector of
// channels at a time (NHWC: the channels of a pixel are contiguous).
#pragma once

#ifndef CPU_CAPABILITY
#error "include ../../cpu/isa_build.h before winograd_vec.h"
#endif

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

#include "winograd.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {
namespace winograd {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kV = Vec::size();

// Loads / stores `count` floats, all kV of them without the partial copy when Full.
template <bool Full>
inline Vec load(const float* p, int64_t count) {
  if constexpr (Full) {
    return Vec::loadu(p);
  } else {
    return Vec::loadu(p, count);
  }
}
template <bool Full>
inline void store(const Vec& v, float* p, int64_t count) {
  if constexpr (Full) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

// o[0..5] = B^T d[0..5]
inline void input_1d(const Vec* d, Vec* o) {
  const Vec four(4.f), mfive(-5.f), two(2.f);
  const Vec a = at::vec::fmadd(Vec(-4.f), d[2], d[4]);  // d4 - 4 d2
  const Vec b = at::vec::fmadd(Vec(-4.f), d[1], d[3]);  // d3 - 4 d1
  const Vec c = d[4] - d[2];
  const Vec e = two * (d[3] - d[1]);
  o[0] = at::vec::fmadd(four, d[0], at::vec::fmadd(mfive, d[2], d[4]));
  o[1] = a + b;
  o[2] = a - b;
  o[3] = c + e;
  o[4] = c - e;
  o[5] = at::vec::fmadd(four, d[1], at::vec::fmadd(mfive, d[3], d[5]));
}

// o[0..3] = A^T m[0..5]
inline void output_1d(const Vec* m, Vec* o) {
  const Vec s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
  o[0] = m[0] + s12 + s34;
  o[1] = at::vec::fmadd(Vec(2.f), d34, d12);
  o[2] = at::vec::fmadd(Vec(4.f), s34, s12);
  o[3] = at::vec::fmadd(Vec(8.f), d34, d12) + m[5];
}

// Channels [c, c + count) of tile (n, ty, tx) -> V rows of that tile.
template <bool Full>
inline void input_tile(const float* x, const WinogradGeom& g, int64_t n, int64_t ty, int64_t tx, int64_t c,
                       int64_t count, float* v, int64_t v_estride) {
  Vec rows[6][6];  // rows[i] = B^T (row i of the patch)
  const int64_t y0 = 4 * ty - 1, x0 = 4 * tx - 1;
  bool col_ok[6];
  for (int k = 0; k < 6; ++k) col_ok[k] = x0 + k >= 0 && x0 + k < g.W;
  for (int i = 0; i < 6; ++i) {
    const int64_t y = y0 + i;
    Vec d[6];
    if (y < 0 || y >= g.H) {
      for (int k = 0; k < 6; ++k) d[k] = Vec(0.f);
    } else {
      const float* row = x + ((n * g.H + y) * g.W + x0) * g.Cin + c;
      for (int k = 0; k < 6; ++k) d[k] = col_ok[k] ? load<Full>(row + k * g.Cin, count) : Vec(0.f);
    }
    input_1d(d, rows[i]);
  }
  for (int j = 0; j < 6; ++j) {
    Vec col[6], o[6];
    for (int i = 0; i < 6; ++i) col[i] = rows[i][j];
    input_1d(col, o);
    for (int a = 0; a < 6; ++a) store<Full>(o[a], v + (a * 6 + j) * v_estride + c, count);
  }
}

inline void input_transform(const float* x, const WinogradGeom& g, int64_t t0, int64_t t1, float* V,
                            int64_t v_estride) {
  const int64_t per_image = g.th * g.tw;
  const int64_t full = g.Cin / kV * kV;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / per_image, r = t % per_image, ty = r / g.tw, tx = r % g.tw;
    float* v = V + (t - t0) * g.Cin;
    for (int64_t c = 0; c < full; c += kV) input_tile<true>(x, g, n, ty, tx, c, kV, v, v_estride);
    if (full < g.Cin) input_tile<false>(x, g, n, ty, tx, full, g.Cin - full, v, v_estride);
  }
}

// Channels [c, c + count) of tile (n, ty, tx): M rows -> output pixels.
template <bool Full>
inline void output_tile(const float* m, int64_t m_estride, const WinogradGeom& g, int64_t n, int64_t ty, int64_t tx,
                        int64_t c, int64_t count, const float* bias, const float* residual, bool relu, float* out) {
  Vec rows[6][4];  // rows[i] = A^T (row i of M)
  for (int i = 0; i < 6; ++i) {
    Vec r[6];
    for (int j = 0; j < 6; ++j) r[j] = load<Full>(m + (i * 6 + j) * m_estride + c, count);
    output_1d(r, rows[i]);
  }
  const Vec b = bias != nullptr ? load<Full>(bias + c, count) : Vec(0.f);
  const int64_t oy0 = 4 * ty, ox0 = 4 * tx;
  const int64_t ny = std::min<int64_t>(4, g.H - oy0), nx = std::min<int64_t>(4, g.W - ox0);
  for (int bj = 0; bj < nx; ++bj) {
    Vec col[6], o[4];
    for (int i = 0; i < 6; ++i) col[i] = rows[i][bj];
    output_1d(col, o);
    for (int a = 0; a < ny; ++a) {
      const int64_t off = ((n * g.H + oy0 + a) * g.W + ox0 + bj) * g.Cout + c;
      Vec y = o[a] + b;
      if (residual != nullptr) y = y + load<Full>(residual + off, count);
      if (relu) y = at::vec::clamp_min(y, Vec(0.f));
      store<Full>(y, out + off, count);
    }
  }
}

inline void output_transform(const float* M, int64_t m_estride, const WinogradGeom& g, int64_t t0, int64_t t1,
                             const float* bias, const float* residual, bool relu, float* out) {
  const int64_t per_image = g.th * g.tw;
  const int64_t full = g.Cout / kV * kV;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / per_image, r = t % per_image, ty = r / g.tw, tx = r % g.tw;
    const float* m = M + (t - t0) * g.Cout;
    for (int64_t c = 0; c < full; c += kV)
      output_tile<true>(m, m_estride, g, n, ty, tx, c, kV, bias, residual, relu, out);
    if (full < g.Cout) output_tile<false>(m, m_estride, g, n, ty, tx, full, g.Cout - full, bias, residual, relu, out);
  }
}

// GEMM register tile: C[0:R, 0:NV*kV] = A[0:R, 0:K] @ B[0:K, 0:NV*kV]; A row stride lda, B and C
// row stride ldb / ldc. The R x NV accumulators stay in registers.
template <int R, int NV>
inline void gemm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t K) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = Vec(0.f);
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[NV];
    for (int u = 0; u < NV; ++u) bv[u] = Vec::loadu(b + k * ldb + u * kV);
    for (int r = 0; r < R; ++r) {
      const Vec av(a[r * lda + k]);
      for (int u = 0; u < NV; ++u) acc[r][u] = at::vec::fmadd(av, bv[u], acc[r][u]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u].store(c + r * ldc + u * kV);
}

// Rows per register tile, and column vectors per tile: 6 x 4 accumulators with 32 vector
// registers (AVX-512), 6 x 2 with 16.
constexpr int kRows = 6;
constexpr int kNv = kV >= 16 ? 4 : 2;

template <int NV>
inline void gemm_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t rows,
                      int64_t K) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) gemm_tile<kRows, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
  switch (rows - r) {
    case 5:
      gemm_tile<5, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
      break;
    case 4:
      gemm_tile<4, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
      break;
    case 3:
      gemm_tile<3, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
      break;
    case 2:
      gemm_tile<2, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
      break;
    case 1:
      gemm_tile<1, NV>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, K);
      break;
    default:
      break;
  }
}

inline void gemm(const float* V, int64_t v_estride, const float* U, float* M, int64_t m_estride, int64_t rows,
                 int64_t Cin, int64_t Cout) {
  const int64_t wide = Cout / (kNv * kV) * (kNv * kV);
  const int64_t full = Cout / kV * kV;
  for (int e = 0; e < 36; ++e) {
    const float* a = V + e * v_estride;
    const float* b = U + e * Cin * Cout;
    float* c = M + e * m_estride;
    for (int64_t j = 0; j < wide; j += kNv * kV) gemm_rows<kNv>(a, Cin, b + j, Cout, c + j, Cout, rows, Cin);
    for (int64_t j = wide; j < full; j += kV) gemm_rows<1>(a, Cin, b + j, Cout, c + j, Cout, rows, Cin);
    for (int64_t j = full; j < Cout; ++j) {  // the last Cout % kV columns
      for (int64_t r = 0; r < rows; ++r) {
        float s = 0.f;
        for (int64_t k = 0; k < Cin; ++k) s += a[r * Cin + k] * b[k * Cout + j];
        c[r * Cout + j] = s;
      }
    }
  }
}

}  // namespace winograd
}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
