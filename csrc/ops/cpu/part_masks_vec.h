// CPU compute cores of part_masks: R_k = softmax_k(D) * G with G = sigmoid(gate) or gate.
// Vectorised across pixels; the parts of one pixel are hw elements apart.
//
// Backward, with s = softmax(D), go = grad_out, sg = sum_k s_k go_k, a_k = go_k G and
// sa = sum_k s_k a_k (the reference's order of operations, so that an infinite
// ground-truth gate gives NaN where the reference does, not s_k G (go_k - sg) = inf):
//   grad_D_k = s_k * (a_k - sa),   grad_gate = sg * (G (1 - G) if gate_is_logit else 1)
// (skipped when grad_gate is null). part_masks_backward recomputes s from D (p exps per
// pixel); part_masks_backward_from_masks takes the forward's output R = s G instead and
// needs no exp for the parts: with rg = sum_k R_k go_k = G sg,
//   grad_D_k = R_k (go_k - rg / G),   grad_gate = rg (1 - G)   (gate_is_logit only)
// where rg / G is taken as 0 unless |G| is a normal number: then |R_k| <= |G| and the
// error of grad_D is below |G| max|go|, far under any rounding of the other pixels
// (and with p = 1, rg / G is go itself: the gradient is exactly 0). The
// gradient of a ground-truth gate (sg itself) cannot be recovered from R where G = 0,
// so that case keeps the recomputing core.
//
// The cores take one vector of pixels at a time. For p <= kMaxFixedParts (the model
// uses 5) the part count is a compile-time constant and all parts of the vector stay in
// registers: every stream is loaded and stored once, with no second pass over a buffer
// (forward + backward at 2x5x480x480 on 2 AVX-512 cores: 1.9 -> 1.2 ms, and 1.7 -> 0.93 ms
// for the ground-truth variant, against the exps kept in the output buffer).
// Above that, the output buffer (resp. grad_logits) holds the exps between passes.
#pragma once

#include <type_traits>

#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

constexpr int kMaxFixedParts = 8;

// fixed(std::integral_constant<int, P>{}) for P = p when 1 <= p <= kMaxFixedParts, else any()
template <typename Fixed, typename Any>
inline void with_parts(int64_t p, const Fixed& fixed, const Any& any) {
  switch (p) {
    case 1: return fixed(std::integral_constant<int, 1>{});
    case 2: return fixed(std::integral_constant<int, 2>{});
    case 3: return fixed(std::integral_constant<int, 3>{});
    case 4: return fixed(std::integral_constant<int, 4>{});
    case 5: return fixed(std::integral_constant<int, 5>{});
    case 6: return fixed(std::integral_constant<int, 6>{});
    case 7: return fixed(std::integral_constant<int, 7>{});
    case 8: return fixed(std::integral_constant<int, 8>{});
    default: return any();
  }
}

// Runs core(x, n) over the pixels [s, e) one vector at a time (n live lanes); the full
// vectors get a compile-time n, so that their loads and stores are unmasked.
template <typename T, typename Core>
inline void over_vectors(int64_t s, int64_t e, const Core& core) {
  constexpr int64_t V = Vectorized<T>::size();
  int64_t x = s;
  for (; x + V <= e; x += V) core(x, V);
  if (x < e) core(x, e - x);
}

template <typename T>
inline Vectorized<T> gate_value(const Vectorized<T>& g, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  return gate_is_logit ? Vec(T(1)) / (Vec(T(1)) + fast_exp(Vec(T(0)) - g)) : g;
}

// ek[k] = exp(D_k - max_j D_j) for the P parts of the pixel vector at x; returns their sum
template <int P, typename T>
inline Vectorized<T> part_exps(const T* logits, int64_t hw, int64_t x, int64_t n, Vectorized<T>* ek) {
  using Vec = Vectorized<T>;
  ek[0] = Vec::loadu(logits + x, n);
  Vec mx = ek[0];
  for (int k = 1; k < P; ++k) {
    ek[k] = Vec::loadu(logits + k * hw + x, n);
    mx = at::vec::maximum(mx, ek[k]);
  }
  Vec sum(T(0));
  for (int k = 0; k < P; ++k) {
    ek[k] = fast_exp(ek[k] - mx);
    sum = sum + ek[k];
  }
  return sum;
}

// --- forward ----------------------------------------------------------------------------

template <int P, typename T>
void part_masks_forward_fixed(const T* logits, const T* gate, T* out, int64_t hw, int64_t s,
                              int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    Vec ek[P];
    const Vec sum = part_exps<P>(logits, hw, x, n, ek);
    const Vec scale = gate_value(Vec::loadu(gate + x, n), gate_is_logit) / sum;
    for (int k = 0; k < P; ++k) (ek[k] * scale).store(out + k * hw + x, n);
  });
}

template <typename T>
void part_masks_forward_any(const T* logits, const T* gate, T* out, int64_t p, int64_t hw,
                            int64_t s, int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
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
  });
}

template <typename T>
void part_masks_forward(const T* logits, const T* gate, T* out, int64_t p, int64_t hw, int64_t s,
                        int64_t e, bool gate_is_logit) {
  with_parts(
      p, [&](auto P) { part_masks_forward_fixed<P()>(logits, gate, out, hw, s, e, gate_is_logit); },
      [&] { part_masks_forward_any(logits, gate, out, p, hw, s, e, gate_is_logit); });
}

// --- backward, recomputing the softmax from the logits ------------------------------------

template <int P, typename T>
void part_masks_backward_fixed(const T* grad_out, const T* logits, const T* gate, T* grad_logits,
                               T* grad_gate, int64_t hw, int64_t s, int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    Vec ek[P], ag[P];
    const Vec inv = Vec(T(1)) / part_exps<P>(logits, hw, x, n, ek);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    Vec sg(T(0)), sa(T(0));  // sum_k s_k go_k, sum_k s_k go_k G
    for (int k = 0; k < P; ++k) {
      ek[k] = ek[k] * inv;  // s_k
      const Vec go = Vec::loadu(grad_out + k * hw + x, n);
      ag[k] = go * G;
      sg = at::vec::fmadd(ek[k], go, sg);
      sa = at::vec::fmadd(ek[k], ag[k], sa);
    }
    for (int k = 0; k < P; ++k) (ek[k] * (ag[k] - sa)).store(grad_logits + k * hw + x, n);
    if (grad_gate != nullptr) (gate_is_logit ? sg * G * (Vec(T(1)) - G) : sg).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward_any(const T* grad_out, const T* logits, const T* gate, T* grad_logits,
                             T* grad_gate, int64_t p, int64_t hw, int64_t s, int64_t e,
                             bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    Vec mx = Vec::loadu(logits + x, n);
    for (int64_t k = 1; k < p; ++k) mx = at::vec::maximum(mx, Vec::loadu(logits + k * hw + x, n));
    Vec sum(T(0));
    for (int64_t k = 0; k < p; ++k) {
      const Vec ek = fast_exp(Vec::loadu(logits + k * hw + x, n) - mx);
      ek.store(grad_logits + k * hw + x, n);  // grad_logits holds the exps until the end
      sum = sum + ek;
    }
    const Vec inv = Vec(T(1)) / sum;
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    Vec sg(T(0)), sa(T(0));  // sum_k s_k go_k, sum_k s_k go_k G
    for (int64_t k = 0; k < p; ++k) {
      const Vec sk = Vec::loadu(grad_logits + k * hw + x, n) * inv;
      const Vec go = Vec::loadu(grad_out + k * hw + x, n);
      sg = at::vec::fmadd(sk, go, sg);
      sa = at::vec::fmadd(sk, go * G, sa);
    }
    for (int64_t k = 0; k < p; ++k) {
      const Vec sk = Vec::loadu(grad_logits + k * hw + x, n) * inv;
      (sk * (Vec::loadu(grad_out + k * hw + x, n) * G - sa)).store(grad_logits + k * hw + x, n);
    }
    if (grad_gate != nullptr) (gate_is_logit ? sg * G * (Vec(T(1)) - G) : sg).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward(const T* grad_out, const T* logits, const T* gate, T* grad_logits,
                         T* grad_gate, int64_t p, int64_t hw, int64_t s, int64_t e,
                         bool gate_is_logit) {
  with_parts(
      p,
      [&](auto P) {
        part_masks_backward_fixed<P()>(grad_out, logits, gate, grad_logits, grad_gate, hw, s, e, gate_is_logit);
      },
      [&] { part_masks_backward_any(grad_out, logits, gate, grad_logits, grad_gate, p, hw, s, e, gate_is_logit); });
}

// --- backward from the forward's output ------------------------------------------------

// sg = rg / G where |G| is normal, 0 elsewhere (see the top of the file); with one part
// sg is go itself, so that the gradient of the (constant) softmax is exactly 0
template <typename T>
inline Vectorized<T> sg_from_masks(const Vectorized<T>& rg, const Vectorized<T>& G,
                                   const Vectorized<T>& go0, int64_t p) {
  using Vec = Vectorized<T>;
  if (p == 1) return go0;
  return Vec::blendv(Vec(T(0)), rg / G, G.abs() >= Vec(std::numeric_limits<T>::min()));
}

template <int P, typename T>
void part_masks_backward_from_masks_fixed(const T* grad_out, const T* masks, const T* gate,
                                          T* grad_logits, T* grad_gate, int64_t hw, int64_t s,
                                          int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    Vec r[P], go[P];
    Vec rg(T(0));  // sum_k R_k go_k
    for (int k = 0; k < P; ++k) {
      r[k] = Vec::loadu(masks + k * hw + x, n);
      go[k] = Vec::loadu(grad_out + k * hw + x, n);
      rg = at::vec::fmadd(r[k], go[k], rg);
    }
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    const Vec sg = sg_from_masks(rg, G, go[0], P);
    for (int k = 0; k < P; ++k) (r[k] * (go[k] - sg)).store(grad_logits + k * hw + x, n);
    if (grad_gate != nullptr) (rg * (Vec(T(1)) - G)).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward_from_masks_any(const T* grad_out, const T* masks, const T* gate,
                                        T* grad_logits, T* grad_gate, int64_t p, int64_t hw,
                                        int64_t s, int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    Vec rg(T(0));
    for (int64_t k = 0; k < p; ++k)
      rg = at::vec::fmadd(Vec::loadu(masks + k * hw + x, n), Vec::loadu(grad_out + k * hw + x, n), rg);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    const Vec sg = sg_from_masks(rg, G, Vec::loadu(grad_out + x, n), p);
    for (int64_t k = 0; k < p; ++k) {
      const Vec gk = Vec::loadu(masks + k * hw + x, n) * (Vec::loadu(grad_out + k * hw + x, n) - sg);
      gk.store(grad_logits + k * hw + x, n);
    }
    if (grad_gate != nullptr) (rg * (Vec(T(1)) - G)).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward_from_masks(const T* grad_out, const T* masks, const T* gate, T* grad_logits,
                                    T* grad_gate, int64_t p, int64_t hw, int64_t s, int64_t e,
                                    bool gate_is_logit) {
  with_parts(
      p,
      [&](auto P) {
        part_masks_backward_from_masks_fixed<P()>(grad_out, masks, gate, grad_logits, grad_gate, hw, s, e,
                                                  gate_is_logit);
      },
      [&] {
        part_masks_backward_from_masks_any(grad_out, masks, gate, grad_logits, grad_gate, p, hw, s, e,
                                           gate_is_logit);
      });
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
