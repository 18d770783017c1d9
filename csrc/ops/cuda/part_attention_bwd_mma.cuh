// Tensor-core backward of part_attention for float16 / bfloat16 (mma.sync m16n8k16, ldmatrix,
// cp.async; primitives and fragment layouts in mma_sm80.cuh), in the FlashAttention-2 manner and
// deterministic: no float atomics, every gradient element is summed by one thread in a fixed order.
//
// Given delta = rowsum(dO * O) - dlse (float32, computed by the caller) and the forward's lse:
//   P = exp2(S * scale * log2 e + mask * log2 e - lse * log2 e), S = Q K^T   (P = 0 where lse = -inf)
//   dP = dO V^T, dS = P (dP - delta)
//   dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K, dmask = column sums of dS.
// Two kernels, both recomputing S and dP:
// * attn_bwd_dkdv_mma_kernel: one block = KV_BN keys of one head, warp w owns keys 16w .. 16w+15
//   (the M rows of its products). Over query tiles of KV_BM rows (Q, dO, lse, delta double-
//   buffered): S^T = K_w Q^T, dP^T = V_w dO^T, P^T and dS^T in registers, dV_w += P^T dO,
//   dK_w += dS^T Q, dmask_w += row sums of dS^T.
// * attn_bwd_dq_mma_kernel: one block = Q_BM queries of one head, warp w owns queries 16w ..
//   16w+15. Over key tiles of Q_BN keys (K, V, mask double-buffered): S = Q_w K^T, dP = dO_w V^T,
//   dS in registers, dQ_w += dS K.
// P and dS are rounded to T before they multiply (the tensor cores' operand type); everything
// else is float32. Padding (keys past Nk, queries past Nq, columns past d) is zero in shared
// memory, and P = dS = 0 there even next to a NaN or inf; NaN and inf elsewhere propagate as in
// the reference (a NaN lse gives NaN P; lse = -inf with a finite score gives P = 0).
#pragma once

#include <string>
#include <type_traits>

#include "../kernel_smem.h"
#include "attention_mma_io.cuh"
#include "attention_params.cuh"
#include "attention_tiles.cuh"
#include "mma_sm80.cuh"

namespace pdnet::cuda {

// Tiles of the two backward kernels per storage type and head dim D (32, 64 or 128), and their
// shared-memory layouts (byte offsets from the start of the dynamic shared memory).
template <typename T, int D>
struct AttnBwdMmaCfg {
  static_assert(D == 32 || D == 64 || D == 128, "head dims 32, 64, 128");
  static constexpr int kT = sizeof(T);
  static constexpr int LD = D + 8;  // row stride of every shared tile (elements): a 16-byte pad

  // dK / dV: 4 warps x 16 keys. The warp's dK and dV accumulators take D registers per lane,
  // S^T and dP^T KV_BM, K_w and V_w fragments D / 2 when kept in registers: at D = 128 the
  // query tile is 32 and K_w, V_w are read from shared memory at each tile instead.
  static constexpr int KV_WARPS = 4;
  static constexpr int KV_THREADS = 32 * KV_WARPS;
  static constexpr int KV_BN = 16 * KV_WARPS;       // keys per block
  static constexpr int KV_BM = D == 128 ? 32 : 64;  // queries per tile
  static constexpr bool KV_FRAGS_IN_REGS = D <= 64;
  static constexpr int KV_K = 0;                                           // [KV_BN, LD]
  static constexpr int KV_V = KV_K + round128(KV_BN * LD * kT);            // [KV_BN, LD]
  static constexpr int KV_Q_STAGE = round128(KV_BM * LD * kT);             // bytes per stage
  static constexpr int KV_Q = KV_V + round128(KV_BN * LD * kT);            // [2][KV_BM, LD]
  static constexpr int KV_DO = KV_Q + 2 * KV_Q_STAGE;                      // [2][KV_BM, LD]
  static constexpr int KV_LSE = KV_DO + 2 * KV_Q_STAGE;                    // [2][KV_BM] float
  static constexpr int KV_DELTA = KV_LSE + round128(2 * KV_BM * 4);        // [2][KV_BM] float
  static constexpr int KV_SMEM = KV_DELTA + round128(2 * KV_BM * 4);

  // dQ: 4 warps x 16 queries; dQ_w takes D / 2 registers, the Q_w and dO_w fragments D / 2,
  // S and dP Q_BN.
  static constexpr int Q_WARPS = 4;
  static constexpr int Q_THREADS = 32 * Q_WARPS;
  static constexpr int Q_BM = 16 * Q_WARPS;        // queries per block
  static constexpr int Q_BN = D == 128 ? 32 : 64;  // keys per tile
  static constexpr int Q_Q = 0;                                    // [Q_BM, LD]
  static constexpr int Q_DO = Q_Q + round128(Q_BM * LD * kT);      // [Q_BM, LD]
  static constexpr int Q_K_STAGE = round128(Q_BN * LD * kT);       // bytes per stage
  static constexpr int Q_K = Q_DO + round128(Q_BM * LD * kT);      // [2][Q_BN, LD]
  static constexpr int Q_V = Q_K + 2 * Q_K_STAGE;                  // [2][Q_BN, LD]
  static constexpr int Q_MASK = Q_V + 2 * Q_K_STAGE;               // [2][Q_BN] float
  static constexpr int Q_SMEM = Q_MASK + round128(2 * Q_BN * 4);

  static_assert(KV_SMEM <= 101376 && Q_SMEM <= 101376, "tiles must fit sm_86's 99 KB per block");
  static_assert(KV_BM % 16 == 0 && Q_BN % 16 == 0, "tiles are made of 16 x 16 blocks");
  static_assert(KV_BM <= KV_THREADS && Q_BN <= Q_THREADS, "one thread per row of lse / delta / mask");
  static_assert(KV_Q_STAGE == KV_BM * LD * kT && Q_K_STAGE == Q_BN * LD * kT, "stages are contiguous");
};

namespace attn_bwd {

// lse in the log2 domain as P = exp2(x - lse) needs it: -inf (no live key) becomes +inf so that
// P = 0; NaN stays NaN.
__device__ __forceinline__ float lse_log2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// the additive mask of key `key` in the log2 domain (0 without a mask, -inf past the Nk keys)
__device__ __forceinline__ float mask_log2(const float* mask, int64_t key, int64_t Nk) {
  return key < Nk ? (mask != nullptr ? mask[key] * kLog2e : 0.f) : -INFINITY;
}

// p's arrays moved to head bh: q, dout, dq [Nq, d]; k, v, dk, dv [Nk, d]; lse, delta [Nq];
// mask, dmask [Nk] or nullptr
template <typename T>
struct HeadArrays {
  const T *q, *k, *v, *dout;
  T *dq, *dk, *dv;
  const float *lse, *delta, *mask;
  float* dmask;
  __device__ __forceinline__ HeadArrays(const AttnBwdParams& p, int64_t bh)
      : q(static_cast<const T*>(p.q) + bh * p.Nq * p.d),
        k(static_cast<const T*>(p.k) + bh * p.Nk * p.d),
        v(static_cast<const T*>(p.v) + bh * p.Nk * p.d),
        dout(static_cast<const T*>(p.dout) + bh * p.Nq * p.d),
        dq(static_cast<T*>(p.dq) + bh * p.Nq * p.d),
        dk(static_cast<T*>(p.dk) + bh * p.Nk * p.d),
        dv(static_cast<T*>(p.dv) + bh * p.Nk * p.d),
        lse(p.lse + bh * p.Nq),
        delta(p.delta + bh * p.Nq),
        mask(p.mask != nullptr ? p.mask + bh * p.Nk : nullptr),
        dmask(p.dmask != nullptr ? p.dmask + bh * p.Nk : nullptr) {}
};

// The A fragments of a warp's 16 rows (row-major tiles, stride D + 8) of two tiles, all D columns.
template <typename T, int D>
__device__ __forceinline__ void load_warp_a(uint32_t (&fx)[D / 16][4], uint32_t (&fy)[D / 16][4], const T* x,
                                            const T* y) {
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) {
    mma::load_a(fx[kd], x, D + 8, 0, kd * 16);
    mma::load_a(fy[kd], y, D + 8, 0, kd * 16);
  }
}

// x = X_w B_x^T and y = Y_w B_y^T for one warp, [16 x N] C fragments (n-tile j: columns 8j ..
// 8j+7). X_w, Y_w: the warp's 16 x D operands, as A fragments fx, fy when KR = D / 16, else (KR = 1)
// loaded at each k-step from their rows sx, sy in shared memory. B_x, B_y: rows 0 .. N-1 of the
// row-major [N x D] tiles bx, by (B(k = column, n = row) = b[n][k]: load_b_nk).
template <typename T, int D, int N, int KR>
__device__ __forceinline__ void warp_products_nt(float (&x)[N / 8][4], float (&y)[N / 8][4],
                                                 const uint32_t (&fx)[KR][4], const uint32_t (&fy)[KR][4], const T* sx,
                                                 const T* sy, const T* bx, const T* by) {
  static_assert(KR == D / 16 || KR == 1, "fragments of every k-step, or none");
#pragma unroll
  for (int j = 0; j < N / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) x[j][i] = y[j][i] = 0.f;
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) {
    uint32_t ax[4], ay[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (KR == D / 16) ax[i] = fx[kd][i], ay[i] = fy[kd][i];
    }
    if constexpr (KR != D / 16) {
      mma::load_a(ax, sx, D + 8, 0, kd * 16);
      mma::load_a(ay, sy, D + 8, 0, kd * 16);
    }
#pragma unroll
    for (int jj = 0; jj < N / 16; ++jj) {
      uint32_t b[2][2];
      mma::load_b_nk(b, bx, D + 8, jj * 16, kd * 16);
      mma::mma16816<T>(x[2 * jj], ax, b[0]);
      mma::mma16816<T>(x[2 * jj + 1], ax, b[1]);
      mma::load_b_nk(b, by, D + 8, jj * 16, kd * 16);
      mma::mma16816<T>(y[2 * jj], ay, b[0]);
      mma::mma16816<T>(y[2 * jj + 1], ay, b[1]);
    }
  }
}

// acc += A B for one warp: A = the [16 x N] C fragments a rounded to T (the A fragment of columns
// 16kk .. 16kk+15 is c_to_a of n-tiles 2kk, 2kk+1), B = rows 0 .. N-1 of the row-major [N x D]
// tile b (B(k = row, n = column) = b[k][n]: load_b_kn); acc: [16 x D] C fragments.
template <typename T, int D, int N>
__device__ __forceinline__ void warp_product_nn(float (&acc)[D / 8][4], const float (&a)[N / 8][4], const T* b) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t af[4];
    mma::c_to_a<T>(af, a[2 * kk], a[2 * kk + 1]);
#pragma unroll
    for (int jj = 0; jj < D / 16; ++jj) {
      uint32_t bf[2][2];
      mma::load_b_kn(bf, b, D + 8, kk * 16, jj * 16);
      mma::mma16816<T>(acc[2 * jj], af, bf[0]);
      mma::mma16816<T>(acc[2 * jj + 1], af, bf[1]);
    }
  }
}

}  // namespace attn_bwd

// dK, dV (and dmask) of KV_BN keys of one head. Grid: BH * n_kblocks blocks; p as documented in
// attention_params.cuh; vec16_out: d == D and dk, dv start on 16-byte boundaries.
template <typename T, int D>
__global__ void __launch_bounds__(AttnBwdMmaCfg<T, D>::KV_THREADS)
    attn_bwd_dkdv_mma_kernel(const AttnBwdParams p, int64_t n_kblocks, bool vec16_out) {
  using Cfg = AttnBwdMmaCfg<T, D>;
  constexpr int BN = Cfg::KV_BN, BM = Cfg::KV_BM, LD = Cfg::LD, THREADS = Cfg::KV_THREADS;
  constexpr int KR = Cfg::KV_FRAGS_IN_REGS ? D / 16 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem + Cfg::KV_K);                  // [BN, LD]
  T* sV = reinterpret_cast<T*>(smem + Cfg::KV_V);                  // [BN, LD]
  T* sQ = reinterpret_cast<T*>(smem + Cfg::KV_Q);                  // [2][BM, LD]
  T* sdO = reinterpret_cast<T*>(smem + Cfg::KV_DO);                // [2][BM, LD]
  float* sLse = reinterpret_cast<float*>(smem + Cfg::KV_LSE);      // [2][BM] lse_log2
  float* sDelta = reinterpret_cast<float*>(smem + Cfg::KV_DELTA);  // [2][BM]

  const int64_t Nq = p.Nq, Nk = p.Nk;
  const int64_t bh = blockIdx.x / n_kblocks;
  const int64_t n0 = (blockIdx.x % n_kblocks) * BN;
  const attn_bwd::HeadArrays<T> h(p, bh);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // C fragments: rows g, g + 8; columns 2t, 2t + 1 of each 8
  T* sKw = sK + warp * 16 * LD;           // the warp's keys
  T* sVw = sV + warp * 16 * LD;

  mma_io::load_tile<T, BN, D, THREADS>(sK, h.k, n0, Nk, p.d, p.vec16);
  mma_io::load_tile<T, BN, D, THREADS>(sV, h.v, n0, Nk, p.d, p.vec16);
  mma_io::load_tile<T, BM, D, THREADS>(sQ, h.q, 0, Nq, p.d, p.vec16);
  mma_io::load_tile<T, BM, D, THREADS>(sdO, h.dout, 0, Nq, p.d, p.vec16);
  mma::cp_async_commit();
  if (threadIdx.x < BM) {
    const int i = threadIdx.x;
    sLse[i] = attn_bwd::lse_log2(i < Nq ? h.lse[i] : -INFINITY);
    sDelta[i] = i < Nq ? h.delta[i] : 0.f;
  }
  bool key_live[2];  // the lane's keys: rows g and g + 8 of the warp's C fragments
  float mk[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = n0 + warp * 16 + g + 8 * r;
    key_live[r] = key < Nk;
    mk[r] = attn_bwd::mask_log2(h.mask, key, Nk);
  }
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t kf[KR][4], vf[KR][4];  // A fragments of K_w, V_w when kept in registers
  if constexpr (KR == D / 16) attn_bwd::load_warp_a<T, D>(kf, vf, sKw, sVw);

  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};  // [16 keys x D] each, C fragments
  float dmask_acc[2] = {0.f, 0.f};                      // keys g, g + 8
  const int64_t n_tiles = (Nq + BM - 1) / BM;
  for (int64_t it = 0; it < n_tiles; ++it) {
    const int s = static_cast<int>(it & 1);
    const int64_t m0 = it * BM;
    mma::cp_async_wait<0>();
    __syncthreads();  // tile it is in stage s for every thread; stage s ^ 1 is free (tile it - 1 consumed)
    const bool next = it + 1 < n_tiles;
    float lse_next = -INFINITY, delta_next = 0.f;  // this thread's row of tile it + 1, stored after the compute
    if (next) {
      mma_io::load_tile<T, BM, D, THREADS>(sQ + (s ^ 1) * BM * LD, h.q, m0 + BM, Nq, p.d, p.vec16);
      mma_io::load_tile<T, BM, D, THREADS>(sdO + (s ^ 1) * BM * LD, h.dout, m0 + BM, Nq, p.d, p.vec16);
      const int64_t row = m0 + BM + threadIdx.x;
      if (threadIdx.x < BM && row < Nq) lse_next = h.lse[row], delta_next = h.delta[row];
    }
    mma::cp_async_commit();
    const T* cQ = sQ + s * BM * LD;
    const T* cdO = sdO + s * BM * LD;

    // S^T_w = K_w Q^T, dP^T_w = V_w dO^T: [16 keys x BM queries]
    float st[BM / 8][4], dpt[BM / 8][4];
    attn_bwd::warp_products_nt<T, D, BM, KR>(st, dpt, kf, vf, sKw, sVw, cQ, cdO);
    // P^T and dS^T in their place. C element e of n-tile j: key g + 8 (e / 2), query 8j + 2t + e % 2
    // of the tile. Dead keys and queries (padding) give exactly 0.
    const int m_live = Nq - m0 < BM ? static_cast<int>(Nq - m0) : BM;
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
      const int col = 8 * j + 2 * t;
      const float2 L = *reinterpret_cast<const float2*>(sLse + s * BM + col);
      const float2 Dl = *reinterpret_cast<const float2*>(sDelta + s * BM + col);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const bool live = key_live[r] && col + (e & 1) < m_live;
        const float pv = live ? mma::exp2_approx(fmaf(st[j][e], p.scale_log2, mk[r]) - ((e & 1) ? L.y : L.x)) : 0.f;
        const float ds = live ? pv * (dpt[j][e] - ((e & 1) ? Dl.y : Dl.x)) : 0.f;
        st[j][e] = pv;
        dpt[j][e] = ds;
        dmask_acc[r] += ds;
      }
    }
    attn_bwd::warp_product_nn<T, D, BM>(dv_acc, st, cdO);  // dV_w += P^T_w dO
    attn_bwd::warp_product_nn<T, D, BM>(dk_acc, dpt, cQ);  // dK_w += dS^T_w Q
    if (next && threadIdx.x < BM) {                         // stage s ^ 1 is read after the next barrier
      sLse[(s ^ 1) * BM + threadIdx.x] = attn_bwd::lse_log2(lse_next);
      sDelta[(s ^ 1) * BM + threadIdx.x] = delta_next;
    }
  }

  // dmask: a key's row of dS^T lives in the 4 lanes of group g; one block owns the key
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = dmask_acc[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (h.dmask != nullptr && t == 0 && key_live[r]) h.dmask[n0 + warp * 16 + g + 8 * r] = sum;
  }
  // the warp's own rows of sK and sV (read by no other warp) stage dK and dV
  mma_io::store_warp_rows<T, D>(dv_acc, 1.f, sVw, h.dv, n0 + warp * 16, Nk, p.d, vec16_out);
  mma_io::store_warp_rows<T, D>(dk_acc, p.scale, sKw, h.dk, n0 + warp * 16, Nk, p.d, vec16_out);
}

// dQ of Q_BM queries of one head. Grid: BH * n_qblocks blocks; vec16_out: d == D and dq starts
// on a 16-byte boundary.
template <typename T, int D>
__global__ void __launch_bounds__(AttnBwdMmaCfg<T, D>::Q_THREADS)
    attn_bwd_dq_mma_kernel(const AttnBwdParams p, int64_t n_qblocks, bool vec16_out) {
  using Cfg = AttnBwdMmaCfg<T, D>;
  constexpr int BM = Cfg::Q_BM, BN = Cfg::Q_BN, LD = Cfg::LD, THREADS = Cfg::Q_THREADS;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + Cfg::Q_Q);                // [BM, LD]
  T* sdO = reinterpret_cast<T*>(smem + Cfg::Q_DO);              // [BM, LD]
  T* sK = reinterpret_cast<T*>(smem + Cfg::Q_K);                // [2][BN, LD]
  T* sV = reinterpret_cast<T*>(smem + Cfg::Q_V);                // [2][BN, LD]
  float* sMask = reinterpret_cast<float*>(smem + Cfg::Q_MASK);  // [2][BN] mask_log2

  const int64_t Nq = p.Nq, Nk = p.Nk;
  const int64_t bh = blockIdx.x / n_qblocks;
  const int64_t m0 = (blockIdx.x % n_qblocks) * BM;
  const attn_bwd::HeadArrays<T> h(p, bh);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // C fragments: rows g, g + 8; columns 2t, 2t + 1 of each 8
  T* sQw = sQ + warp * 16 * LD;           // the warp's queries
  T* sdOw = sdO + warp * 16 * LD;

  mma_io::load_tile<T, BM, D, THREADS>(sQ, h.q, m0, Nq, p.d, p.vec16);
  mma_io::load_tile<T, BM, D, THREADS>(sdO, h.dout, m0, Nq, p.d, p.vec16);
  mma_io::load_tile<T, BN, D, THREADS>(sK, h.k, 0, Nk, p.d, p.vec16);
  mma_io::load_tile<T, BN, D, THREADS>(sV, h.v, 0, Nk, p.d, p.vec16);
  mma::cp_async_commit();
  if (threadIdx.x < BN) sMask[threadIdx.x] = attn_bwd::mask_log2(h.mask, threadIdx.x, Nk);
  // the lane's queries: rows g and g + 8 of the warp's C fragments (rows past Nq are computed from
  // zero rows of Q and dO and never stored)
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = m0 + warp * 16 + g + 8 * r;
    lse_r[r] = attn_bwd::lse_log2(row < Nq ? h.lse[row] : -INFINITY);
    delta_r[r] = row < Nq ? h.delta[row] : 0.f;
  }
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4], of[D / 16][4];  // A fragments of Q_w and dO_w
  attn_bwd::load_warp_a<T, D>(qf, of, sQw, sdOw);

  float dq_acc[D / 8][4] = {};  // [16 queries x D], C fragments
  const int64_t n_tiles = (Nk + BN - 1) / BN;
  for (int64_t it = 0; it < n_tiles; ++it) {
    const int s = static_cast<int>(it & 1);
    const int64_t n0 = it * BN;
    mma::cp_async_wait<0>();
    __syncthreads();  // tile it is in stage s for every thread; stage s ^ 1 is free (tile it - 1 consumed)
    const bool next = it + 1 < n_tiles;
    float mask_next = 0.f;  // this thread's key of tile it + 1, stored after the compute
    if (next) {
      mma_io::load_tile<T, BN, D, THREADS>(sK + (s ^ 1) * BN * LD, h.k, n0 + BN, Nk, p.d, p.vec16);
      mma_io::load_tile<T, BN, D, THREADS>(sV + (s ^ 1) * BN * LD, h.v, n0 + BN, Nk, p.d, p.vec16);
      if (threadIdx.x < BN) mask_next = attn_bwd::mask_log2(h.mask, n0 + BN + threadIdx.x, Nk);
    }
    mma::cp_async_commit();
    const T* cK = sK + s * BN * LD;

    // S_w = Q_w K^T, dP_w = dO_w V^T: [16 queries x BN keys]
    float sc[BN / 8][4], dp[BN / 8][4];
    attn_bwd::warp_products_nt<T, D, BN, D / 16>(sc, dp, qf, of, sQw, sdOw, cK, sV + s * BN * LD);
    // dS in place of S. C element e of n-tile j: query g + 8 (e / 2), key 8j + 2t + e % 2 of the
    // tile. Keys past Nk give exactly 0.
    const int n_live = Nk - n0 < BN ? static_cast<int>(Nk - n0) : BN;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int col = 8 * j + 2 * t;
      const float2 M = *reinterpret_cast<const float2*>(sMask + s * BN + col);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const bool live = col + (e & 1) < n_live;
        const float pv = live ? mma::exp2_approx(fmaf(sc[j][e], p.scale_log2, (e & 1) ? M.y : M.x) - lse_r[r]) : 0.f;
        sc[j][e] = live ? pv * (dp[j][e] - delta_r[r]) : 0.f;
      }
    }
    attn_bwd::warp_product_nn<T, D, BN>(dq_acc, sc, cK);  // dQ_w += dS_w K
    if (next && threadIdx.x < BN) sMask[(s ^ 1) * BN + threadIdx.x] = mask_next;  // read after the next barrier
  }
  // the warp's own rows of sQ (read by no other warp, and no longer by this one) stage dQ
  mma_io::store_warp_rows<T, D>(dq_acc, p.scale, sQw, h.dq, m0 + warp * 16, Nq, p.d, vec16_out);
}

// ---------------------------------------------------------------------------------
// Host side (not compiled in the CPU emulator of the kernels)
#ifndef PDNET_CUDA_EMULATION

// records the launch shapes of both kernels of every D for T (kernel_smem.h)
template <typename T>
bool record_attn_bwd_mma() {
  auto one = [](auto dc) {
    constexpr int D = decltype(dc)::value;
    using Cfg = AttnBwdMmaCfg<T, D>;
    const std::string args = std::string("<") + mma_io::type_name<T>() + ", " + std::to_string(D) + ">";
    pdnet::ops::record_kernel_smem(("attn_bwd_dkdv_mma_kernel" + args).c_str(), Cfg::KV_THREADS, Cfg::KV_SMEM);
    pdnet::ops::record_kernel_smem(("attn_bwd_dq_mma_kernel" + args).c_str(), Cfg::Q_THREADS, Cfg::Q_SMEM);
  };
  one(std::integral_constant<int, 32>{});
  one(std::integral_constant<int, 64>{});
  one(std::integral_constant<int, 128>{});
  return true;
}
inline const bool kAttnBwdMmaRecorded = record_attn_bwd_mma<__half>() && record_attn_bwd_mma<__nv_bfloat16>();

// dq, dk, dv (every element written) and dmask (when non-null) of the float16 / bfloat16 backward
// on the current stream: attn_bwd_dkdv_mma_kernel, then attn_bwd_dq_mma_kernel. p.delta is
// computed; BH, Nq, Nk >= 1 (the caller returns zeros for empty inputs). `what` names the tensor
// in the too-many-blocks error.
template <typename T>
void launch_attn_bwd_mma(const char* where, const at::Tensor& what, const AttnBwdParams& p) {
  TORCH_CHECK(p.BH >= 1 && p.Nq >= 1 && p.Nk >= 1, where, ": the tensor-core backward needs BH, Nq, Nk >= 1, got ",
              p.BH, ", ", p.Nq, ", ", p.Nk);
  dispatch_head_dim(where, p.d, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    using Cfg = AttnBwdMmaCfg<T, D>;
    AttnBwdParams pd = p;
    pd.vec16 = p.vec16 && p.d == D;
    const auto a16 = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    const bool vec16_out = p.d == D && a16(p.dq) && a16(p.dk) && a16(p.dv);
    const int64_t n_kblocks = (p.Nk + Cfg::KV_BN - 1) / Cfg::KV_BN;
    launch_with_smem(where, what, attn_bwd_dkdv_mma_kernel<T, D>, p.BH * n_kblocks, Cfg::KV_THREADS, Cfg::KV_SMEM, pd,
                     n_kblocks, vec16_out);
    const int64_t n_qblocks = (p.Nq + Cfg::Q_BM - 1) / Cfg::Q_BM;
    launch_with_smem(where, what, attn_bwd_dq_mma_kernel<T, D>, p.BH * n_qblocks, Cfg::Q_THREADS, Cfg::Q_SMEM, pd,
                     n_qblocks, vec16_out);
  });
}

#endif  // PDNET_CUDA_EMULATION

}  // namespace pdnet::cuda
