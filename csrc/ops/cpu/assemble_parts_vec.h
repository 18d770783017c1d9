// CPU compute cores of assemble_parts: out[c] = sum_k (P_k[c] + Y_k[c]) * R_k, and its
// backward grad_feats_k[c] = grad[c] * R_k (the gradient of both P and Y),
// grad_masks_k = sum_c grad[c] * (P_k[c] + Y_k[c]). The forward sums the p parts of one
// pixel vector in a register (3p input streams, one output stream, no partial sums written
// to memory and read back). The backward takes blocks of kAssembleBX pixels, so that its C
// rows of a block are each read contiguously, and accumulates grad_masks over the channels
// in memory.
#pragma once

#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

constexpr int64_t kAssembleBX = 256;

template <typename T>
void assemble_forward(const T* pf, const T* yf, const T* masks, T* out, int64_t p, int64_t C, int64_t hw, int64_t c,
                      int64_t s, int64_t e) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int64_t ks = C * hw;  // from one part's feature plane to the next
  const T* P = pf + c * hw;
  const T* Y = yf + c * hw;
  T* o = out + c * hw;
  int64_t x = s;
  for (; x + V <= e; x += V) {
    Vec acc = (Vec::loadu(P + x) + Vec::loadu(Y + x)) * Vec::loadu(masks + x);
    for (int64_t k = 1; k < p; ++k)
      acc =
          at::vec::fmadd(Vec::loadu(P + k * ks + x) + Vec::loadu(Y + k * ks + x), Vec::loadu(masks + k * hw + x), acc);
    acc.store(o + x);
  }
  for (; x < e; ++x) {
    T acc = 0;
    for (int64_t k = 0; k < p; ++k) acc += (P[k * ks + x] + Y[k * ks + x]) * masks[k * hw + x];
    o[x] = acc;
  }
}

template <typename T>
void assemble_backward(const T* grad, const T* pf, const T* yf, const T* masks, T* grad_feats, T* grad_masks, int64_t p,
                       int64_t C, int64_t hw, int64_t k, int64_t s, int64_t e) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  (void)p;
  T acc[kAssembleBX];
  const T* R = masks + k * hw;
  for (int64_t x0 = s; x0 < e; x0 += kAssembleBX) {
    const int64_t nx = std::min(kAssembleBX, e - x0);
    std::fill(acc, acc + nx, T(0));
    for (int64_t c = 0; c < C; ++c) {
      const T* g = grad + c * hw + x0;
      const int64_t off = (k * C + c) * hw + x0;
      int64_t x = 0;
      if (grad_feats != nullptr) {
        T* gf = grad_feats + off;
        for (; x + V <= nx; x += V) (Vec::loadu(g + x) * Vec::loadu(R + x0 + x)).store(gf + x);
        for (; x < nx; ++x) gf[x] = g[x] * R[x0 + x];
      }
      if (grad_masks != nullptr) {
        const T* P = pf + off;
        const T* Y = yf + off;
        for (x = 0; x + V <= nx; x += V)
          at::vec::fmadd(Vec::loadu(g + x), Vec::loadu(P + x) + Vec::loadu(Y + x), Vec::loadu(acc + x)).store(acc + x);
        for (; x < nx; ++x) acc[x] += g[x] * (P[x] + Y[x]);
      }
    }
    if (grad_masks != nullptr) std::copy(acc, acc + nx, grad_masks + k * hw + x0);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
