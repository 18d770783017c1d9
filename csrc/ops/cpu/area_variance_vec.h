// CPU compute core of area_variance: the part areas (sums over pixels). The per-batch
// formula itself is in ../area_variance_math.h (shared with CUDA).
#pragma once

#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

// sum of x[0:n]: four vector accumulators per block of 4096 elements, blocks added in double
template <typename T>
double sum(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t kBlock = 4096;
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    const T* xb = x + b0;
    Vec a0(T(0)), a1(T(0)), a2(T(0)), a3(T(0));
    int64_t i = 0;
    for (; i + 4 * V <= nb; i += 4 * V) {
      a0 = a0 + Vec::loadu(xb + i);
      a1 = a1 + Vec::loadu(xb + i + V);
      a2 = a2 + Vec::loadu(xb + i + 2 * V);
      a3 = a3 + Vec::loadu(xb + i + 3 * V);
    }
    T buf[V];
    ((a0 + a1) + (a2 + a3)).store(buf);
    double block = 0;
    for (int64_t u = 0; u < V; ++u) block += double(buf[u]);
    for (; i < nb; ++i) block += double(xb[i]);
    total += block;
  }
  return total;
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
