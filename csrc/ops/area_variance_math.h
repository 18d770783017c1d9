// The per-batch-element formula of the area-variance loss, shared by the CPU and
// CUDA kernels (host and device). For one batch element with part areas a [p]:
//   n = max(||a||_2, 1e-12) (NaN when the norm is NaN, as torch's clamp_min),
//   ah = a / n,  mu = mean(ah),  var = sum_k (ah_k - mu)^2 / (p - 1)
// and the loss (loss_of) is the mean of var over the batch; with p < 2 it is 0 times the
// sum of every area, as the reference's area.sum() * 0 (NaN when an area is not finite)
// and the gradient of g * var with respect to a:
//   gv_k = 2 (ah_k - mu) / (p - 1)
//   da_k = g * (gv_k - ah_k * sum_j gv_j ah_j) / n   if ||a|| >= 1e-12 (the norm is live)
//   da_k = g * gv_k / 1e-12                           otherwise (the clamp is constant).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace pdnet::ops::area_math {

constexpr double kNormEps = 1e-12;

template <typename acc_t>
C10_HOST_DEVICE inline acc_t norm_of(const acc_t* a, int64_t p) {
  acc_t ss = 0;
  for (int64_t k = 0; k < p; ++k) ss += a[k] * a[k];
  return ::sqrt(ss);
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t variance(const acc_t* a, int64_t p) {
  if (p < 2) return acc_t(0);
  const acc_t norm = norm_of(a, p);
  const acc_t n = norm < acc_t(kNormEps) ? acc_t(kNormEps) : norm;
  acc_t mean = 0;
  for (int64_t k = 0; k < p; ++k) mean += a[k] / n;
  mean /= acc_t(p);
  acc_t var = 0;
  for (int64_t k = 0; k < p; ++k) {
    const acc_t dev = a[k] / n - mean;
    var += dev * dev;
  }
  return var / acc_t(p - 1);
}

// The loss of all areas a [B, p]: mean over b of variance (NaN when B == 0 and p >= 2, the
// mean of nothing); with p < 2, 0 * sum of the areas.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t loss_of(const acc_t* a, int64_t B, int64_t p) {
  acc_t total = 0;
  if (p < 2) {
    for (int64_t i = 0; i < B * p; ++i) total += a[i];
    return total * acc_t(0);
  }
  for (int64_t b = 0; b < B; ++b) total += variance(a + b * p, p);
  return total / acc_t(B);
}

// coef[k] = d(g * variance(a)) / d a_k for k < p.
template <typename acc_t>
C10_HOST_DEVICE inline void variance_grad(const acc_t* a, int64_t p, acc_t g, acc_t* coef) {
  if (p < 2) {
    for (int64_t k = 0; k < p; ++k) coef[k] = 0;
    return;
  }
  const acc_t norm = norm_of(a, p);
  const bool live = !(norm < acc_t(kNormEps));
  const acc_t n = live ? norm : acc_t(kNormEps);
  acc_t mean = 0;
  for (int64_t k = 0; k < p; ++k) mean += a[k] / n;
  mean /= acc_t(p);
  acc_t dot = 0;  // sum_j gv_j ah_j
  for (int64_t k = 0; k < p; ++k) {
    const acc_t ah = a[k] / n;
    dot += acc_t(2) * (ah - mean) / acc_t(p - 1) * ah;
  }
  for (int64_t k = 0; k < p; ++k) {
    const acc_t ah = a[k] / n;
    const acc_t gv = acc_t(2) * (ah - mean) / acc_t(p - 1);
    coef[k] = g * (live ? (gv - ah * dot) : gv) / n;
  }
}

}  // namespace pdnet::ops::area_math
