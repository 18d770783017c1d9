// CPU compute cores of part_attention (forward and backward), vectorised.
//
// Forward, per head and block of BQ query rows: for each tile of kAttnFwdBK keys,
// S = q k^T * scale (+ mask) in a BQ x kAttnFwdBK buffer, online softmax per row (running
// max m and sum l; the accumulator O is rescaled by exp(m_old - m_new)), O += P v.
// Finally out = O / l and lse = m + log(l). A row whose scores are all -inf (every key
// masked) has attention weights 0: out = 0 v (0 for finite v) and lse = -inf. NaN and inf
// propagate as in the reference: the running max keeps a NaN score (max_nan), so that
// the row's sum, output and lse are NaN, and a +inf score gives exp(inf - inf) = NaN.
//
// Backward, per head and chunk of keys (the work unit of one thread, so dk, dv and the
// key-mask gradient of the chunk need no synchronisation), for each query block and
// key tile: P = exp(q k^T * scale + mask - lse) (0 where lse = -inf), dP = dO v^T,
// dS = P (dP - delta) with delta = rowsum(dO * out) - dlse (in the epilogues of the two
// register-tiled products, bwd_scores), then dv += P^T dO,
// dk += scale dS^T q, dq += scale dS k and dmask += column sums of dS.
#pragma once

#include "kernel_table.h"
#include "vec_common.h"

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

constexpr int64_t kAttnBQ = 48;  // query rows per block (a multiple of the GEMM row tiles)
constexpr int64_t kAttnBK = 192;  // keys per tile of the backward (likewise)
// keys per tile of the forward: large, so that rows pay the online-softmax bookkeeping
// (horizontal reductions, rescaling) rarely; Nk <= 1024 takes one tile
constexpr int64_t kAttnFwdBK = 1024;

inline int64_t attention_scratch(int64_t d) {
  // forward: S [BQ, BK], O [BQ, d], m [BQ], l [BQ], q^T [d, BQ]
  // backward: P [BQ, BK], dS [BQ, BK], delta [BQ], q^T [d, BQ], dO^T [d, BQ], lse [BQ]
  return std::max(kAttnBQ * kAttnFwdBK + 2 * kAttnBQ * d + 2 * kAttnBQ,
                  2 * kAttnBQ * kAttnBK + 2 * kAttnBQ + 2 * kAttnBQ * d);
}

template <typename T>
void attention_forward(const AttnFwdArgs<T>& a, int64_t bh, int64_t q0, int64_t q1, T* scratch) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t Nq = a.Nq, Nk = a.Nk, d = a.d;
  const T* q = a.q + bh * Nq * d;      // [Nq, d]
  const T* kt = a.kt + bh * d * Nk;    // [d, Nk]
  const T* v = a.v + bh * Nk * d;      // [Nk, d]
  const T* mask = a.mask != nullptr ? a.mask + bh * Nk : nullptr;  // [Nk]
  T* out = a.out + bh * Nq * d;        // [Nq, d]
  T* lse = a.lse + bh * Nq;            // [Nq]
  T* S = scratch;                      // [BQ, BK]
  T* O = S + kAttnBQ * kAttnFwdBK;        // [BQ, d]
  T* m = O + kAttnBQ * d;              // [BQ]
  T* l = m + kAttnBQ;                  // [BQ]
  T* qt = l + kAttnBQ;                 // [d, BQ] the query block transposed (GEMM A operand)

  for (int64_t i0 = q0; i0 < q1; i0 += kAttnBQ) {
    const int64_t nq = std::min(kAttnBQ, q1 - i0);
    std::fill(O, O + nq * d, T(0));
    std::fill(m, m + nq, kNegInf);
    std::fill(l, l + nq, T(0));
    transpose_rows(q + i0 * d, nq, d, qt, kAttnBQ);
    for (int64_t j0 = 0; j0 < Nk; j0 += kAttnFwdBK) {
      const int64_t bk = std::min(kAttnFwdBK, Nk - j0);
      gemm<T, 1, kAttnBQ>(nq, bk, d, qt, kt + j0, Nk, S, kAttnFwdBK, a.scale, false);  // S = q k^T * scale
      for (int64_t i = 0; i < nq; ++i) {
        T* s = S + i * kAttnFwdBK;
        const T mx = mask != nullptr ? add_row_max(s, mask + j0, bk) : row_max(s, bk);  // s += mask
        const T m_new = max_nan(m[i], mx);  // a NaN score makes the row NaN
        if (m_new == kNegInf) {  // every key so far is masked: nothing to accumulate
          std::fill(s, s + bk, T(0));
          continue;
        }
        const T sum = exp_sub_sum(s, bk, m_new);  // s = exp(s - m_new)
        const T alpha = m_new == m[i] ? T(1) : std::exp(m[i] - m_new);  // 0 on the first live tile
        if (alpha != T(1)) row_axpby<T>(O + i * d, alpha, nullptr, T(0), d);
        l[i] = l[i] * alpha + sum;
        m[i] = m_new;
      }
      gemm<T, kAttnFwdBK, 1>(nq, d, bk, S, v + j0 * d, d, O, d, T(1), true);  // O += P v
    }
    for (int64_t i = 0; i < nq; ++i) {
      const bool live = l[i] != T(0);  // l is 0 only when every key was masked; NaN stays NaN
      T* orow = out + (i0 + i) * d;
      std::copy(O + i * d, O + (i + 1) * d, orow);
      row_axpby<T>(orow, live ? T(1) / l[i] : T(0), nullptr, T(0), d);
      lse[i0 + i] = live ? m[i] + std::log(l[i]) : kNegInf;
    }
  }
}

// Backward scores of a [nq x bk] block, from the block's transposed queries qt and
// output gradients dot ([d, BQ]) and the key tile's kt, vt ([d, ldk] at its first key):
//   P = exp(q k^T * scale + mask - L)      (L: +inf for rows without a live key -> P = 0)
//   dS = P * (dO v^T - delta)
// Two register-tiled products whose epilogues apply the softmax pieces, so neither S
// nor dP is written to memory; P, dS: [BQ, BK].
template <typename T>
inline void bwd_scores(int64_t nq, int64_t bk, int64_t d, const T* qt, const T* dot, const T* kt, const T* vt,
                       int64_t ldk, const T* mask, const T* L, const T* delta, T scale, T* P, T* dS) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  auto load = [](const T* p, int64_t live) { return live == V ? Vec::loadu(p) : Vec::loadu(p, live); };
  auto store = [](const Vec& x, T* p, int64_t live) {
    if (live == V)
      x.store(p);
    else
      x.store(p, live);
  };
  for_each_tile<T, 1, kAttnBQ>(nq, bk, d, qt, kt, ldk, [=](int64_t i, int64_t j) {
    return [=](int r, int u, const Vec& s, int64_t live) {
      const int64_t col = j + u * V;
      Vec x = s * Vec(scale);
      if (mask != nullptr) x = x + load(mask + col, live);
      store(fast_exp(x - Vec(L[i + r])), P + (i + r) * kAttnBK + col, live);
    };
  });
  for_each_tile<T, 1, kAttnBQ>(nq, bk, d, dot, vt, ldk, [=](int64_t i, int64_t j) {
    return [=](int r, int u, const Vec& dp, int64_t live) {
      const int64_t off = (i + r) * kAttnBK + j + u * V;
      store(load(P + off, live) * (dp - Vec(delta[i + r])), dS + off, live);
    };
  });
}

template <typename T>
void attention_backward(const AttnBwdArgs<T>& a, int64_t bh, int64_t k0, int64_t k1, T* dq, T* scratch) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t Nq = a.Nq, Nk = a.Nk, d = a.d;
  const T* q = a.q + bh * Nq * d;        // [Nq, d]
  const T* k = a.k + bh * Nk * d;        // [Nk, d]
  const T* kt = a.kt + bh * d * Nk;      // [d, Nk]
  const T* vt = a.vt + bh * d * Nk;      // [d, Nk]
  const T* mask = a.mask != nullptr ? a.mask + bh * Nk : nullptr;  // [Nk]
  const T* out = a.out + bh * Nq * d;    // [Nq, d]
  const T* lse = a.lse + bh * Nq;        // [Nq]
  const T* dout = a.dout + bh * Nq * d;  // [Nq, d]
  const T* dlse = a.dlse != nullptr ? a.dlse + bh * Nq : nullptr;  // [Nq]
  T* dk = a.dk + bh * Nk * d;            // [Nk, d]
  T* dv = a.dv + bh * Nk * d;            // [Nk, d]
  T* dmask = a.dmask != nullptr ? a.dmask + bh * Nk : nullptr;  // [Nk]
  T* P = scratch;                        // [BQ, BK]
  T* dS = P + kAttnBQ * kAttnBK;         // [BQ, BK]
  T* delta = dS + kAttnBQ * kAttnBK;     // [BQ]
  T* qt = delta + kAttnBQ;               // [d, BQ] query block transposed
  T* dot = qt + kAttnBQ * d;             // [d, BQ] dO block transposed
  T* Lrow = dot + kAttnBQ * d;           // [BQ] lse of the block's rows (+inf: no live key)

  for (int64_t i0 = 0; i0 < Nq; i0 += kAttnBQ) {
    const int64_t nq = std::min(kAttnBQ, Nq - i0);
    for (int64_t i = 0; i < nq; ++i) {
      delta[i] = row_dot(dout + (i0 + i) * d, out + (i0 + i) * d, d) - (dlse != nullptr ? dlse[i0 + i] : T(0));
      // +inf for a row without any live key: then P = exp(S - inf) = 0 and no gradient flows
      Lrow[i] = lse[i0 + i] == kNegInf ? -kNegInf : lse[i0 + i];
    }
    transpose_rows(q + i0 * d, nq, d, qt, kAttnBQ);
    transpose_rows(dout + i0 * d, nq, d, dot, kAttnBQ);
    for (int64_t j0 = k0; j0 < k1; j0 += kAttnBK) {
      const int64_t bk = std::min(kAttnBK, k1 - j0);
      bwd_scores<T>(nq, bk, d, qt, dot, kt + j0, vt + j0, Nk, mask != nullptr ? mask + j0 : nullptr, Lrow, delta,
                    a.scale, P, dS);
      // dv[j0:] += P^T dO ; dk[j0:] += scale * dS^T q ; dq[i0:] += scale * dS k
      gemm<T, 1, kAttnBK>(bk, d, nq, P, dout + i0 * d, d, dv + j0 * d, d, T(1), true);
      gemm<T, 1, kAttnBK>(bk, d, nq, dS, q + i0 * d, d, dk + j0 * d, d, a.scale, true);
      gemm<T, kAttnBK, 1>(nq, d, bk, dS, k + j0 * d, d, dq + i0 * d, d, a.scale, true);
      if (dmask != nullptr)
        for (int64_t i = 0; i < nq; ++i) row_axpby<T>(dmask + j0, T(1), dS + i * kAttnBK, T(1), bk);
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace pdnet::cpu
