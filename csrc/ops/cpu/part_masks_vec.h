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
// The cores take one vector of pixels at a time and are each one template over the part count
// P: for p <= kMaxFixedParts (the model uses 5) P = p is a compile-time constant and all parts of
// the vector stay in registers, so that every stream is loaded and stored once; any other p runs
// with P = kAnyParts, and the values that the passes over the parts share are kept in the output
// buffer (grad_logits for the backward) instead. Both compute the same operations in the same
// order.
#pragma once

#include <c10/macros/Macros.h>

#include <type_traits>
#include <utility>

#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

constexpr int kMaxFixedParts = 8;
constexpr int kAnyParts = 0;

// f(std::integral_constant<int, P>{}) with P = p when 1 <= p <= kMaxFixedParts, else kAnyParts
template <typename F>
inline void with_part_count(int64_t p, const F& f) {
  [&]<int... Ps>(std::integer_sequence<int, Ps...>) {
    const bool fixed = ((p == Ps + 1 && (f(std::integral_constant<int, Ps + 1>{}), true)) || ...);
    if (!fixed) f(std::integral_constant<int, kAnyParts>{});
  }(std::make_integer_sequence<int, kMaxFixedParts>{});
}

// The number of parts a core of part count P loops over.
template <int P>
constexpr int64_t parts_of(int64_t p) {
  return P == kAnyParts ? p : P;
}

// The vectors f(k) of the parts k of one pixel vector: for a compile-time part count computed
// once, into registers; for kAnyParts computed again (and so read from memory again) at each use.
template <int P, typename T, typename F>
struct PartVecs {
  Vectorized<T> v[P];
  explicit PartVecs(const F& f) {
    for (int k = 0; k < P; ++k) v[k] = f(k);
  }
  Vectorized<T> operator[](int64_t k) const { return v[k]; }
};

template <typename T, typename F>
struct PartVecs<kAnyParts, T, F> {
  F f;
  explicit PartVecs(const F& f_) : f(f_) {}
  Vectorized<T> operator[](int64_t k) const { return f(k); }
};

template <int P, typename T, typename F>
PartVecs<P, T, F> part_vecs(const F& f) {
  return PartVecs<P, T, F>(f);
}

// The part rows src + k * hw at the pixel vector x (n live lanes).
template <int P, typename T>
auto part_rows(const T* src, int64_t hw, int64_t x, int64_t n) {
  return part_vecs<P, T>([=](int64_t k) { return Vectorized<T>::loadu(src + k * hw + x, n); });
}

// Per-part values of one pixel vector that a later pass over the parts reads again: registers
// for a compile-time part count; for kAnyParts the rows buf + k * hw (the core's output, which
// is written later anyway).
template <int P, typename T>
struct PartValues {
  Vectorized<T> v[P];
  PartValues(T* /*buf*/, int64_t /*hw*/, int64_t /*x*/, int64_t /*n*/) {}
  Vectorized<T> operator[](int64_t k) const { return v[k]; }
  void set(int64_t k, const Vectorized<T>& value) { v[k] = value; }
};

template <typename T>
struct PartValues<kAnyParts, T> {
  T* buf;
  int64_t hw, x, n;
  Vectorized<T> operator[](int64_t k) const { return Vectorized<T>::loadu(buf + k * hw + x, n); }
  void set(int64_t k, const Vectorized<T>& value) { value.store(buf + k * hw + x, n); }
};

// Runs core(x, n) over the pixels [s, e) one vector at a time (n live lanes); the full
// vectors get a compile-time n, so that their loads and stores are unmasked.
template <typename T, typename Core>
inline void over_vectors(int64_t s, int64_t e, const Core& core) {
  constexpr int64_t V = Vectorized<T>::size();
  int64_t x = s;
  for (; x + V <= e; x += V) core(x, V);
  if (x < e) core(x, e - x);
}

// G = sigmoid(g) or g (always inlined: GCC would call it once per pixel vector otherwise)
template <typename T>
C10_ALWAYS_INLINE Vectorized<T> gate_value(const Vectorized<T>& g, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  return gate_is_logit ? Vec(T(1)) / (Vec(T(1)) + fast_exp(Vec(T(0)) - g)) : g;
}

// ek[k] = exp(D_k - max_j D_j) for the np parts of the pixel vector x (n live lanes), D_k read
// from the rows logits + k * hw; returns their sum. With a compile-time part count the logits are
// loaded into ek's registers and replaced by their exps there.
template <int P, typename T>
inline Vectorized<T> part_exps(const T* logits, int64_t hw, int64_t x, int64_t n, int64_t np, PartValues<P, T>& ek) {
  using Vec = Vectorized<T>;
  if constexpr (P != kAnyParts) {
    for (int64_t k = 0; k < np; ++k) ek.set(k, Vec::loadu(logits + k * hw + x, n));
  }
  auto logit = [&](int64_t k) {
    if constexpr (P != kAnyParts) {
      return ek[k];
    } else {
      return Vec::loadu(logits + k * hw + x, n);
    }
  };
  Vec mx = logit(0);
  for (int64_t k = 1; k < np; ++k) mx = at::vec::maximum(mx, logit(k));
  Vec sum(T(0));
  for (int64_t k = 0; k < np; ++k) {
    const Vec e = fast_exp(logit(k) - mx);
    ek.set(k, e);
    sum = sum + e;
  }
  return sum;
}

// --- forward ----------------------------------------------------------------------------

template <int P, typename T>
void part_masks_forward_p(const T* logits, const T* gate, T* out, int64_t p, int64_t hw, int64_t s, int64_t e,
                          bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    const int64_t np = parts_of<P>(p);  // in the loop body: a constant where P is
    PartValues<P, T> ek{out, hw, x, n};
    const Vec sum = part_exps(logits, hw, x, n, np, ek);
    const Vec scale = gate_value(Vec::loadu(gate + x, n), gate_is_logit) / sum;
    for (int64_t k = 0; k < np; ++k) (ek[k] * scale).store(out + k * hw + x, n);
  });
}

template <typename T>
void part_masks_forward(const T* logits, const T* gate, T* out, int64_t p, int64_t hw, int64_t s, int64_t e,
                        bool gate_is_logit) {
  with_part_count(
      p, [&](auto P) { part_masks_forward_p<decltype(P)::value>(logits, gate, out, p, hw, s, e, gate_is_logit); });
}

// --- backward, recomputing the softmax from the logits ------------------------------------

template <int P, typename T>
void part_masks_backward_p(const T* grad_out, const T* logits, const T* gate, T* grad_logits, T* grad_gate, int64_t p,
                           int64_t hw, int64_t s, int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    const int64_t np = parts_of<P>(p);  // in the loop body: a constant where P is
    PartValues<P, T> ek{grad_logits, hw, x, n};  // the exps until the gradient overwrites them
    const Vec inv = Vec(T(1)) / part_exps(logits, hw, x, n, np, ek);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    const auto go = part_rows<P>(grad_out, hw, x, n);
    const auto ag = part_vecs<P, T>([&](int64_t k) { return go[k] * G; });  // a_k = go_k G
    Vec sg(T(0)), sa(T(0));  // sum_k s_k go_k, sum_k s_k a_k
    for (int64_t k = 0; k < np; ++k) {
      const Vec sk = ek[k] * inv;
      sg = at::vec::fmadd(sk, go[k], sg);
      sa = at::vec::fmadd(sk, ag[k], sa);
    }
    for (int64_t k = 0; k < np; ++k) (ek[k] * inv * (ag[k] - sa)).store(grad_logits + k * hw + x, n);
    if (grad_gate != nullptr) (gate_is_logit ? sg * G * (Vec(T(1)) - G) : sg).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward(const T* grad_out, const T* logits, const T* gate, T* grad_logits, T* grad_gate, int64_t p,
                         int64_t hw, int64_t s, int64_t e, bool gate_is_logit) {
  with_part_count(p, [&](auto P) {
    part_masks_backward_p<decltype(P)::value>(grad_out, logits, gate, grad_logits, grad_gate, p, hw, s, e,
                                              gate_is_logit);
  });
}

// --- backward from the forward's output ------------------------------------------------

// sg = rg / G where |G| is normal, 0 elsewhere (see the top of the file); with one part
// sg is go itself, so that the gradient of the (constant) softmax is exactly 0
template <typename T>
inline Vectorized<T> sg_from_masks(const Vectorized<T>& rg, const Vectorized<T>& G, const Vectorized<T>& go0,
                                   int64_t p) {
  using Vec = Vectorized<T>;
  if (p == 1) return go0;
  return Vec::blendv(Vec(T(0)), rg / G, G.abs() >= Vec(std::numeric_limits<T>::min()));
}

template <int P, typename T>
void part_masks_backward_from_masks_p(const T* grad_out, const T* masks, const T* gate, T* grad_logits, T* grad_gate,
                                      int64_t p, int64_t hw, int64_t s, int64_t e, bool gate_is_logit) {
  using Vec = Vectorized<T>;
  over_vectors<T>(s, e, [&](int64_t x, int64_t n) {
    const int64_t np = parts_of<P>(p);  // in the loop body: a constant where P is
    const auto r = part_rows<P>(masks, hw, x, n);
    const auto go = part_rows<P>(grad_out, hw, x, n);
    Vec rg(T(0));  // sum_k R_k go_k
    for (int64_t k = 0; k < np; ++k) rg = at::vec::fmadd(r[k], go[k], rg);
    const Vec G = gate_value(Vec::loadu(gate + x, n), gate_is_logit);
    const Vec sg = sg_from_masks(rg, G, go[0], np);
    for (int64_t k = 0; k < np; ++k) (r[k] * (go[k] - sg)).store(grad_logits + k * hw + x, n);
    if (grad_gate != nullptr) (rg * (Vec(T(1)) - G)).store(grad_gate + x, n);
  });
}

template <typename T>
void part_masks_backward_from_masks(const T* grad_out, const T* masks, const T* gate, T* grad_logits, T* grad_gate,
                                    int64_t p, int64_t hw, int64_t s, int64_t e, bool gate_is_logit) {
  with_part_count(p, [&](auto P) {
    part_masks_backward_from_masks_p<decltype(P)::value>(grad_out, masks, gate, grad_logits, grad_gate, p, hw, s, e,
                                                         gate_is_logit);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
