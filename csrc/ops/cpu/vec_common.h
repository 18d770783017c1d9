// Building blocks of the vectorised CPU cores: a register-blocked small GEMM and
// row-wise softmax helpers. Included only through kernel_table_impl.h (CPU_CAPABILITY set), so
// everything lives in the ISA-specific inline namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// exp(x) with at::vec's fast exp (20 ulp for float, the accurate one for double);
// NaN stays NaN (exp_u20 alone would clamp it).
template <typename T>
inline Vectorized<T> fast_exp(const Vectorized<T>& x) {
  return Vectorized<T>::blendv(x.exp_u20(), x, x.isnan());
}

// One register tile of a product, rows [0, MR) x columns [0, n) (n <= NV vectors):
//   acc[r][u] = sum_k A(r, k) B(k, u*V : u*V + V)
// then epi(r, u, acc[r][u], live) for every vector with live > 0 columns.
// A(i, k) = a[i * A_RS + k * A_CS]: compile-time strides (one of them 1), so that the
// broadcasts of a tile's rows address one base register with constant offsets;
// B(k, j) = b[k * ldb + j] (rows contiguous).
template <typename T, int MR, int NV, int64_t A_RS, int64_t A_CS, typename Epi>
inline void tile_product(int64_t n, int64_t K, const T* a, const T* b, int64_t ldb, const Epi& epi) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = Vec(T(0));
  if (n == NV * V) {
    for (int64_t kk = 0; kk < K; ++kk) {
      Vec bv[NV];
      for (int u = 0; u < NV; ++u) bv[u] = Vec::loadu(b + kk * ldb + u * V);
      for (int r = 0; r < MR; ++r) {
        const Vec av(a[r * A_RS + kk * A_CS]);
        for (int u = 0; u < NV; ++u) acc[r][u] = at::vec::fmadd(av, bv[u], acc[r][u]);
      }
    }
  } else {
    int64_t cnt[NV];
    for (int u = 0; u < NV; ++u) cnt[u] = std::clamp<int64_t>(n - u * V, 0, V);
    for (int64_t kk = 0; kk < K; ++kk) {
      Vec bv[NV];
      for (int u = 0; u < NV; ++u) bv[u] = cnt[u] > 0 ? Vec::loadu(b + kk * ldb + u * V, cnt[u]) : Vec(T(0));
      for (int r = 0; r < MR; ++r) {
        const Vec av(a[r * A_RS + kk * A_CS]);
        for (int u = 0; u < NV; ++u) acc[r][u] = at::vec::fmadd(av, bv[u], acc[r][u]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int u = 0; u < NV; ++u) {
      const int64_t live = std::clamp<int64_t>(n - u * V, 0, V);
      if (live > 0) epi(r, u, acc[r][u], live);
    }
  }
}

// Register blocking: a tile is MR rows x NV vectors. With 32 vector registers
// (AVX-512) the widest tile is 6 x 4 (24 accumulators), with 16 (AVX2, DEFAULT) 6 x 2;
// narrower tiles take more rows, 12 at most.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kGemmNVWide = 4;
constexpr int kGemmAccRegs = 24;
#else
constexpr int kGemmNVWide = 2;
constexpr int kGemmAccRegs = 12;
#endif

constexpr int gemm_mr(int nv) {
  return std::min(12, kGemmAccRegs / nv);
}

// Every tile of an [m x n] product A[m x K] B[K x n] (layouts as tile_product): columns
// in blocks of kGemmNVWide vectors, then half that, then single (possibly partial)
// vectors, so that no tile computes on padding; rows in tiles of gemm_mr(NV), then 1.
// make_epi(i, j) returns the epilogue of the tile whose first element is (i, j); it is
// called as epi(r, u, value, live) for row i + r and the vector of columns j + u*V.
template <typename T, int64_t A_RS, int64_t A_CS, typename MakeEpi>
inline void for_each_tile(int64_t m, int64_t n, int64_t K, const T* a, const T* b, int64_t ldb,
                          const MakeEpi& make_epi) {
  constexpr int64_t V = Vectorized<T>::size();
  auto columns = [&](auto nv_tag, int64_t j, int64_t nn) {
    constexpr int NV = decltype(nv_tag)::value;
    constexpr int MR = gemm_mr(NV);
    int64_t i = 0;
    for (; i + MR <= m; i += MR) tile_product<T, MR, NV, A_RS, A_CS>(nn, K, a + i * A_RS, b + j, ldb, make_epi(i, j));
    for (; i < m; ++i) tile_product<T, 1, NV, A_RS, A_CS>(nn, K, a + i * A_RS, b + j, ldb, make_epi(i, j));
  };
  constexpr int NVW = kGemmNVWide;
  int64_t j = 0;
  for (; j + NVW * V <= n; j += NVW * V) columns(std::integral_constant<int, NVW>{}, j, NVW * V);
  if constexpr (NVW > 2) {
    for (; j + 2 * V <= n; j += 2 * V) columns(std::integral_constant<int, 2>{}, j, 2 * V);
  }
  for (; j < n; j += V) columns(std::integral_constant<int, 1>{}, j, std::min(V, n - j));
}

// C[m x n] = (accumulate ? C : 0) + alpha * A[m x K] B[K x n], C(i, j) = c[i * ldc + j].
template <typename T, int64_t A_RS, int64_t A_CS>
inline void gemm(int64_t m, int64_t n, int64_t K, const T* a, const T* b, int64_t ldb, T* c, int64_t ldc, T alpha,
                 bool accumulate) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for_each_tile<T, A_RS, A_CS>(m, n, K, a, b, ldb, [=](int64_t i, int64_t j) {
    T* ct = c + i * ldc + j;
    return [=](int r, int u, const Vec& v, int64_t live) {
      T* cp = ct + r * ldc + u * V;
      Vec res = alpha == T(1) ? v : v * Vec(alpha);
      if (live == V) {
        if (accumulate) res = res + Vec::loadu(cp);
        res.store(cp);
      } else {
        if (accumulate) res = res + Vec::loadu(cp, live);
        res.store(cp, live);
      }
    };
  });
}

// dst[c * ld + r] = src[r * d + c] for r < rows, c < d (dst columns rows..ld-1 untouched)
template <typename T>
inline void transpose_rows(const T* src, int64_t rows, int64_t d, T* dst, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) dst[c * ld + r] = src[r * d + c];
}

// max(a, b) that returns NaN when either is NaN (std::max and fmax drop a NaN)
template <typename T>
inline T max_nan(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// max_nan of mx and the lanes of v, lane 0 first
template <typename T>
inline T lanes_max_nan(T mx, const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  for (T lane : buf) mx = max_nan(mx, lane);
  return mx;
}

// sum of the lanes of v, lane 0 first
template <typename T>
inline T lanes_sum(const Vectorized<T>& v) {
  T buf[Vectorized<T>::size()];
  v.store(buf);
  T s = 0;
  for (T lane : buf) s += lane;
  return s;
}

// max of x[0:n] (-inf when n == 0); NaN when any x is NaN
template <typename T>
inline T row_max(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  T mx = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  if (n >= V) {
    Vec vm = Vec::loadu(x);
    for (i = V; i + V <= n; i += V) vm = at::vec::maximum(vm, Vec::loadu(x + i));
    mx = lanes_max_nan(mx, vm);
  }
  for (; i < n; ++i) mx = max_nan(mx, x[i]);
  return mx;
}

// x[0:n] += y[0:n]; returns the max of the result (-inf when n == 0; NaN when any is NaN)
template <typename T>
inline T add_row_max(T* x, const T* y, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  T mx = -std::numeric_limits<T>::infinity();
  int64_t i = 0;
  if (n >= V) {
    Vec vm(mx);
    for (; i + V <= n; i += V) {
      const Vec r = Vec::loadu(x + i) + Vec::loadu(y + i);
      r.store(x + i);
      vm = at::vec::maximum(vm, r);
    }
    mx = lanes_max_nan(mx, vm);
  }
  for (; i < n; ++i) {
    x[i] += y[i];
    mx = max_nan(mx, x[i]);
  }
  return mx;
}

// sum of x[0:n]
template <typename T>
inline T row_sum(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + V <= n; i += V) acc = acc + Vec::loadu(x + i);
  if (i < n) acc = acc + Vec::loadu(x + i, n - i);  // the tail load pads with zeros
  return lanes_sum(acc);
}

// sum of x[i] * y[i], i < n
template <typename T>
inline T row_dot(const T* x, const T* y, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + V <= n; i += V) acc = at::vec::fmadd(Vec::loadu(x + i), Vec::loadu(y + i), acc);
  if (i < n) acc = at::vec::fmadd(Vec::loadu(x + i, n - i), Vec::loadu(y + i, n - i), acc);
  return lanes_sum(acc);
}

// x[0:n] = exp(x - m) in place; returns the sum
template <typename T>
inline T exp_sub_sum(T* x, int64_t n, T m) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec vm(m);
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    const Vec e = fast_exp(Vec::loadu(x + i) - vm);
    e.store(x + i);
    acc = acc + e;
  }
  if (i < n) {
    const Vec e = fast_exp(Vec::loadu(x + i, n - i) - vm);
    e.store(x + i, n - i);
    acc = acc + Vec::loadu(x + i, n - i);  // reload: only the n - i live lanes, padded with zeros
  }
  return lanes_sum(acc);
}

// y[0:n] = y * alpha (+ x * beta when x is not null)
template <typename T>
inline void row_axpby(T* y, T alpha, const T* x, T beta, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec va(alpha), vb(beta);
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    Vec r = Vec::loadu(y + i) * va;
    if (x != nullptr) r = at::vec::fmadd(Vec::loadu(x + i), vb, r);
    r.store(y + i);
  }
  if (i < n) {
    Vec r = Vec::loadu(y + i, n - i) * va;
    if (x != nullptr) r = at::vec::fmadd(Vec::loadu(x + i, n - i), vb, r);
    r.store(y + i, n - i);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
