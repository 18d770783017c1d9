// CPU compute cores of part_masks: R_k = softmax_k(D) * G with G = sigmoid(gate) or gate.
// Vectorised across pixels; the parts of one pixel are hw elements apart. The output
// (resp. grad_logits) buffer holds exp(D_k - max) between passes.
//
// Backward, with s = softmax(D), go = grad_out and sg = sum_k s_k go_k:
//   grad_D_k = s_k * G * (go_k - sg),   grad_gate = sg * (G (1 - G) if gate_is_logit else 1)
// (skipped when grad_gate is null). part_masks_backward recomputes s from D (p exps per
// pixel); part_masks_backward_from_masks takes the forward's output R = s G instead and
// needs no exp for the parts: with rg = sum_k R_k go_k = G sg,
//   grad_D_k = R_k (go_k - rg / G),   grad_gate = rg (1 - G)   (gate_is_logit only)
// where rg / G is taken as 0 unless |G| is a normal number: then |R_k| <= |G| and the
// error of grad_D is below |G| max|go|, far under any rounding of the other pixels
// (and with p = 1, rg / G is go itself: the gradient is exactly 0). The
// gradient of a ground-truth gate (sg itself) cannot be recovered from R where G = 0,
// so that case keeps the recomputing core.
#pragma once

#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

template <typename T>
inline Vectorized<T> gate_value(const Vectorized<T>& g, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  return gate_is_logit ? Vec(T(1)) / (Vec(T(1)) + fast_exp(Vec(T(0)) - g)) : g;
}

template <typename T>
void part_masks_forward(const T* logits, const T* gate, T* out, int64_t p, int64_t hw, int64_t s,
                        int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t x = s; x < e; x += V) {
    const int64_t n = std::min(V, e - x);
    for (int64_t k = 0; k < p; ++k) {
      prefetch_read(logits + k * hw + x);
      prefetch_write(out + k * hw + x);
    }
    prefetch_read(gate + x);
    Vec mx = Vec::loadu(logits + x, n);
    for (int64_t k = 1; k < p; ++k) mx = at::vec::maximum(mx, Vec::loadu(logits + k * hw + x, n));
    Vec sum(T(0));
    for (int64_t k = 0; k < p; ++k) {
      const Vec ek = fast_exp(Vec::loadu(logits + k * hw + x, n) - mx);
      ek.store(out + k * hw + x, n);
      sum = sum + ek;
    }
    const Vec scale = gate_value(Vec::loadu(gate + x, n), gate_is_logit) / sum;
    for (int64_t k = 0; k < p; ++k) (Vec::loadu(out + k * hw + x, n) * scale).store(out + k * hw + x, n);
  }
}

template <typename T>
void part_masks_backward(const T* grad_out, const T* logits, const T* gate, T* grad_logits,
                         T* grad_gate, int64_t p, int64_t hw, int64_t s, int64_t e,
                         bool gate_is_logit) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t x = s; x < e; x += V) {
    const int64_t n = std::min(V, e - x);
    Vec mx = Vec::loadu(logits + x, n);
    for (int64_t k = 1; k < p; ++k) mx = at::vec::maximum(mx, Vec::loadu(logits + k * hw + x, n));
    Vec sum(T(0));
    for (int64_t k = 0; k < p; ++k) {
      const Vec ek = fast_exp(Vec::loadu(logits + k * hw + x, n) - mx);
      ek.store(grad_logits + k * hw + x, n);
      sum = sum + ek;
    }
    const Vec inv = Vec(T(1)) / sum;
    Vec sg(T(0));  // sum_k s_k go_k
    for (int64_t k = 0; k < p; ++k)
      sg = at::vec::fmadd(Vec::loadu(grad_logits + k * hw + x, n) * inv,
                          Vec::loadu(grad_out + k * hw + x, n), sg);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    const Vec sG = inv * G;
    for (int64_t k = 0; k < p; ++k) {
      const Vec gk = Vec::loadu(grad_logits + k * hw + x, n) * sG * (Vec::loadu(grad_out + k * hw + x, n) - sg);
      gk.store(grad_logits + k * hw + x, n);
    }
    if (grad_gate != nullptr) {
      const Vec gg = gate_is_logit ? sg * G * (Vec(T(1)) - G) : sg;
      gg.store(grad_gate + x, n);
    }
  }
}

template <typename T>
void part_masks_backward_from_masks(const T* grad_out, const T* masks, const T* gate, T* grad_logits,
                                    T* grad_gate, int64_t p, int64_t hw, int64_t s, int64_t e,
                                    bool gate_is_logit) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec tiny(std::numeric_limits<T>::min());
  for (int64_t x = s; x < e; x += V) {
    const int64_t n = std::min(V, e - x);
    for (int64_t k = 0; k < p; ++k) {
      prefetch_read(masks + k * hw + x);
      prefetch_read(grad_out + k * hw + x);
    }
    prefetch_read(gate + x);
    Vec rg(T(0));  // sum_k R_k go_k
    for (int64_t k = 0; k < p; ++k)
      rg = at::vec::fmadd(Vec::loadu(masks + k * hw + x, n), Vec::loadu(grad_out + k * hw + x, n), rg);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    // sg = sum_k s_k go_k; with one part s = 1 and sg = go exactly, so that the gradient
    // of the (constant) softmax is exactly 0 as in the recomputing core
    const Vec sg = p == 1 ? Vec::loadu(grad_out + x, n)
                          : Vec::blendv(Vec(T(0)), rg / G, G.abs() >= tiny);
    for (int64_t k = 0; k < p; ++k) {
      const Vec gk = Vec::loadu(masks + k * hw + x, n) * (Vec::loadu(grad_out + k * hw + x, n) - sg);
      gk.store(grad_logits + k * hw + x, n);
    }
    if (grad_gate != nullptr) (rg * (Vec(T(1)) - G)).store(grad_gate + x, n);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
