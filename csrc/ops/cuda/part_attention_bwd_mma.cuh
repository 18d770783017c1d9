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

// dst[r * (D + 8) + c] = src[(row0 + r) * d + c] for r < ROWS, c < D, zero past n rows and d
// columns. vec16 (d == D, src 16-byte aligned): cp.async of 16-byte chunks, zero-filled past n,
// completed by the caller's cp_async_wait; otherwise synchronous element-wise loads.
template <typename T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row0, int64_t n, int d, bool vec16) {
  constexpr int LD = D + 8, kChunks = D * int(sizeof(T)) / 16;  // 16-byte chunks per row
  constexpr int kE = 16 / int(sizeof(T));                        // elements per chunk
  static_assert(ROWS * kChunks % THREADS == 0, "whole chunks per thread");
  if (vec16) {
#pragma unroll
    for (int i = 0; i < ROWS * kChunks / THREADS; ++i) {
      const int idx = threadIdx.x + i * THREADS;
      const int r = idx / kChunks, c = (idx % kChunks) * kE;
      const int64_t row = row0 + r;
      const bool live = row < n;
      mma::cp_async_16(dst + r * LD + c, src + (live ? row * D + c : 0), live);  // src: row 0 exists (n >= 1)
    }
  } else {
    load_rows<T, ROWS, D, LD>(dst, src, row0, n, d, false);
  }
}

// A warp's 16 x D float accumulator (C fragments acc[j] of columns 8j .. 8j+7), times scale and
// rounded to T, written to rows row0 .. row0+15 (those below n) of the row-major [n, d] array
// dst, through stage: the warp's own 16 rows of shared memory (row stride D + 8), which no other
// warp touches. x * 1.f is x exactly, so scale 1 writes the accumulator as it is.
template <typename T, int D>
__device__ __forceinline__ void store_warp_rows(const float (&acc)[D / 8][4], float scale, T* stage, T* dst,
                                                int64_t row0, int64_t n, int d, bool vec16) {
  constexpr int LD = D + 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __syncwarp();  // the warp's last reads of stage are done
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {  // C layout: c[0], c[1] = (g, 8j + 2t, +1); c[2], c[3] = (g + 8, ...)
    *reinterpret_cast<uint32_t*>(stage + g * LD + 8 * j + 2 * t) = mma::pack2<T>(acc[j][0] * scale, acc[j][1] * scale);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * LD + 8 * j + 2 * t) =
        mma::pack2<T>(acc[j][2] * scale, acc[j][3] * scale);
  }
  __syncwarp();
  if (vec16) {  // d == D: 16-byte chunks, a warp writes 16 whole rows
    constexpr int kE = 16 / int(sizeof(T)), kChunks = D / kE;
    static_assert(16 * kChunks % 32 == 0, "whole chunks per lane");
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
      const int idx = lane + 32 * i;
      const int r = idx / kChunks, c = (idx % kChunks) * kE;
      if (row0 + r < n) {
        *reinterpret_cast<uint4*>(dst + (row0 + r) * D + c) = *reinterpret_cast<const uint4*>(stage + r * LD + c);
      }
    }
  } else {
    for (int idx = lane; idx < 16 * d; idx += 32) {
      const int r = idx / d, c = idx - r * d;
      if (row0 + r < n) dst[(row0 + r) * d + c] = stage[r * LD + c];
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
  T* sK = reinterpret_cast<T*>(smem + Cfg::KV_K);               // [BN, LD]
  T* sV = reinterpret_cast<T*>(smem + Cfg::KV_V);               // [BN, LD]
  T* sQ = reinterpret_cast<T*>(smem + Cfg::KV_Q);               // [2][BM, LD]
  T* sdO = reinterpret_cast<T*>(smem + Cfg::KV_DO);             // [2][BM, LD]
  float* sLse = reinterpret_cast<float*>(smem + Cfg::KV_LSE);   // [2][BM] lse_log2
  float* sDelta = reinterpret_cast<float*>(smem + Cfg::KV_DELTA);  // [2][BM]

  const int64_t Nq = p.Nq, Nk = p.Nk;
  const int d = p.d;
  const int64_t bh = blockIdx.x / n_kblocks;
  const int64_t n0 = (blockIdx.x % n_kblocks) * BN;
  const T* q = static_cast<const T*>(p.q) + bh * Nq * d;        // [Nq, d]
  const T* dout = static_cast<const T*>(p.dout) + bh * Nq * d;  // [Nq, d]
  const T* k = static_cast<const T*>(p.k) + bh * Nk * d;        // [Nk, d]
  const T* v = static_cast<const T*>(p.v) + bh * Nk * d;        // [Nk, d]
  T* dk = static_cast<T*>(p.dk) + bh * Nk * d;                  // [Nk, d]
  T* dv = static_cast<T*>(p.dv) + bh * Nk * d;                  // [Nk, d]
  const float* lse = p.lse + bh * Nq;                           // [Nq]
  const float* delta = p.delta + bh * Nq;                       // [Nq]
  const float* mask = p.mask != nullptr ? p.mask + bh * Nk : nullptr;  // [Nk]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // C fragments: rows g, g + 8; columns 2t, 2t + 1 of each 8

  attn_bwd::load_tile<T, BN, D, THREADS>(sK, k, n0, Nk, d, p.vec16);
  attn_bwd::load_tile<T, BN, D, THREADS>(sV, v, n0, Nk, d, p.vec16);
  attn_bwd::load_tile<T, BM, D, THREADS>(sQ, q, 0, Nq, d, p.vec16);
  attn_bwd::load_tile<T, BM, D, THREADS>(sdO, dout, 0, Nq, d, p.vec16);
  mma::cp_async_commit();
  if (threadIdx.x < BM) {
    const int i = threadIdx.x;
    sLse[i] = attn_bwd::lse_log2(i < Nq ? lse[i] : -INFINITY);
    sDelta[i] = i < Nq ? delta[i] : 0.f;
  }
  // the lane's two keys: rows g and g + 8 of the warp's C fragments
  bool key_live[2];
  float mk[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t key = n0 + warp * 16 + g + 8 * h;
    key_live[h] = key < Nk;
    mk[h] = attn_bwd::mask_log2(mask, key, Nk);
  }
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t kf[KR][4], vf[KR][4];  // A fragments of K_w, V_w (16 x D) when kept in registers
  if constexpr (Cfg::KV_FRAGS_IN_REGS) {
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
      mma::load_a(kf[kd], sK, LD, warp * 16, kd * 16);
      mma::load_a(vf[kd], sV, LD, warp * 16, kd * 16);
    }
  }

  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};  // [16 keys x D] each, C fragments
  float dmask_acc[2] = {0.f, 0.f};                      // keys g, g + 8
  const int64_t n_tiles = (Nq + BM - 1) / BM;
  for (int64_t it = 0; it < n_tiles; ++it) {
    const int s = static_cast<int>(it & 1);
    const int64_t m0 = it * BM;
    mma::cp_async_wait<0>();
    __syncthreads();  // tile it is in stage s for every thread; stage s ^ 1 is free (tile it - 1 consumed)
    const bool next = it + 1 < n_tiles;
    float lse_next = 0.f, delta_next = 0.f;  // this thread's row of tile it + 1, stored after the compute
    if (next) {
      attn_bwd::load_tile<T, BM, D, THREADS>(sQ + (s ^ 1) * BM * LD, q, m0 + BM, Nq, d, p.vec16);
      attn_bwd::load_tile<T, BM, D, THREADS>(sdO + (s ^ 1) * BM * LD, dout, m0 + BM, Nq, d, p.vec16);
      if (threadIdx.x < BM) {
        const int64_t row = m0 + BM + threadIdx.x;
        lse_next = row < Nq ? lse[row] : -INFINITY;
        delta_next = row < Nq ? delta[row] : 0.f;
      }
    }
    mma::cp_async_commit();
    const T* cQ = sQ + s * BM * LD;
    const T* cdO = sdO + s * BM * LD;
    const float* cLse = sLse + s * BM;
    const float* cDelta = sDelta + s * BM;

    // S^T_w = K_w Q^T and dP^T_w = V_w dO^T, [16 keys x BM queries]; n-tile j = queries 8j .. 8j+7.
    // B(k = head column, n = query) = Q[query][column]: an [n][k] tile, load_b_nk.
    float st[BM / 8][4] = {}, dpt[BM / 8][4] = {};
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
      uint32_t ak[4], av[4];
      if constexpr (Cfg::KV_FRAGS_IN_REGS) {
#pragma unroll
        for (int i = 0; i < 4; ++i) ak[i] = kf[kd][i], av[i] = vf[kd][i];
      } else {
        mma::load_a(ak, sK, LD, warp * 16, kd * 16);
        mma::load_a(av, sV, LD, warp * 16, kd * 16);
      }
#pragma unroll
      for (int jj = 0; jj < BM / 16; ++jj) {
        uint32_t b[2][2];
        mma::load_b_nk(b, cQ, LD, jj * 16, kd * 16);
        mma::mma16816<T>(st[2 * jj], ak, b[0]);
        mma::mma16816<T>(st[2 * jj + 1], ak, b[1]);
        mma::load_b_nk(b, cdO, LD, jj * 16, kd * 16);
        mma::mma16816<T>(dpt[2 * jj], av, b[0]);
        mma::mma16816<T>(dpt[2 * jj + 1], av, b[1]);
      }
    }
    // P^T and dS^T in place of S^T and dP^T. C element e of n-tile j: key g + 8 (e / 2), query
    // 8j + 2t + e % 2 of the tile. Dead keys and queries (padding) give exactly 0.
    const int m_live = Nq - m0 < BM ? static_cast<int>(Nq - m0) : BM;
#pragma unroll
    for (int j = 0; j < BM / 8; ++j) {
      const int col = 8 * j + 2 * t;
      const float2 L = *reinterpret_cast<const float2*>(cLse + col);
      const float2 Dl = *reinterpret_cast<const float2*>(cDelta + col);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        const bool live = key_live[h] && col + (e & 1) < m_live;
        const float pv = live ? mma::exp2_approx(fmaf(st[j][e], p.scale_log2, mk[h]) - ((e & 1) ? L.y : L.x)) : 0.f;
        const float ds = live ? pv * (dpt[j][e] - ((e & 1) ? Dl.y : Dl.x)) : 0.f;
        st[j][e] = pv;
        dpt[j][e] = ds;
        dmask_acc[h] += ds;
      }
    }
    // dV_w += P^T_w dO, dK_w += dS^T_w Q: A = 16 queries kk of P^T / dS^T (c_to_a of n-tiles
    // 2kk, 2kk+1); B(k = query, n = head column) = dO[query][column]: a [k][n] tile, load_b_kn.
#pragma unroll
    for (int kk = 0; kk < BM / 16; ++kk) {
      uint32_t ap[4], as[4];
      mma::c_to_a<T>(ap, st[2 * kk], st[2 * kk + 1]);
      mma::c_to_a<T>(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
      for (int jj = 0; jj < D / 16; ++jj) {
        uint32_t b[2][2];
        mma::load_b_kn(b, cdO, LD, kk * 16, jj * 16);
        mma::mma16816<T>(dv_acc[2 * jj], ap, b[0]);
        mma::mma16816<T>(dv_acc[2 * jj + 1], ap, b[1]);
        mma::load_b_kn(b, cQ, LD, kk * 16, jj * 16);
        mma::mma16816<T>(dk_acc[2 * jj], as, b[0]);
        mma::mma16816<T>(dk_acc[2 * jj + 1], as, b[1]);
      }
    }
    if (next && threadIdx.x < BM) {  // stage s ^ 1 is read only after the next barrier
      sLse[(s ^ 1) * BM + threadIdx.x] = attn_bwd::lse_log2(lse_next);
      sDelta[(s ^ 1) * BM + threadIdx.x] = delta_next;
    }
  }

  // dmask: a key's row of dS^T lives in the 4 lanes of group g; one block owns the key
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = dmask_acc[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (p.dmask != nullptr && t == 0 && key_live[h]) p.dmask[bh * Nk + n0 + warp * 16 + g + 8 * h] = sum;
  }
  // the warp's own rows of sK and sV (read by no other warp) stage dK and dV
  attn_bwd::store_warp_rows<T, D>(dv_acc, 1.f, sV + warp * 16 * LD, dv, n0 + warp * 16, Nk, d, vec16_out);
  attn_bwd::store_warp_rows<T, D>(dk_acc, p.scale, sK + warp * 16 * LD, dk, n0 + warp * 16, Nk, d, vec16_out);
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
  const int d = p.d;
  const int64_t bh = blockIdx.x / n_qblocks;
  const int64_t m0 = (blockIdx.x % n_qblocks) * BM;
  const T* q = static_cast<const T*>(p.q) + bh * Nq * d;        // [Nq, d]
  const T* dout = static_cast<const T*>(p.dout) + bh * Nq * d;  // [Nq, d]
  const T* k = static_cast<const T*>(p.k) + bh * Nk * d;        // [Nk, d]
  const T* v = static_cast<const T*>(p.v) + bh * Nk * d;        // [Nk, d]
  T* dq = static_cast<T*>(p.dq) + bh * Nq * d;                  // [Nq, d]
  const float* mask = p.mask != nullptr ? p.mask + bh * Nk : nullptr;  // [Nk]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // C fragments: rows g, g + 8; columns 2t, 2t + 1 of each 8

  attn_bwd::load_tile<T, BM, D, THREADS>(sQ, q, m0, Nq, d, p.vec16);
  attn_bwd::load_tile<T, BM, D, THREADS>(sdO, dout, m0, Nq, d, p.vec16);
  attn_bwd::load_tile<T, BN, D, THREADS>(sK, k, 0, Nk, d, p.vec16);
  attn_bwd::load_tile<T, BN, D, THREADS>(sV, v, 0, Nk, d, p.vec16);
  mma::cp_async_commit();
  if (threadIdx.x < BN) sMask[threadIdx.x] = attn_bwd::mask_log2(mask, threadIdx.x, Nk);
  // the lane's two queries: rows g and g + 8 of the warp's C fragments (rows past Nq are computed
  // from zero rows of Q and dO and never stored)
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = m0 + warp * 16 + g + 8 * h;
    lse_r[h] = attn_bwd::lse_log2(row < Nq ? p.lse[bh * Nq + row] : -INFINITY);
    delta_r[h] = row < Nq ? p.delta[bh * Nq + row] : 0.f;
  }
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4], of[D / 16][4];  // A fragments of Q_w and dO_w (16 x D)
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) {
    mma::load_a(qf[kd], sQ, LD, warp * 16, kd * 16);
    mma::load_a(of[kd], sdO, LD, warp * 16, kd * 16);
  }

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
      attn_bwd::load_tile<T, BN, D, THREADS>(sK + (s ^ 1) * BN * LD, k, n0 + BN, Nk, d, p.vec16);
      attn_bwd::load_tile<T, BN, D, THREADS>(sV + (s ^ 1) * BN * LD, v, n0 + BN, Nk, d, p.vec16);
      if (threadIdx.x < BN) mask_next = attn_bwd::mask_log2(mask, n0 + BN + threadIdx.x, Nk);
    }
    mma::cp_async_commit();
    const T* cK = sK + s * BN * LD;
    const T* cV = sV + s * BN * LD;
    const float* cMask = sMask + s * BN;

    // S_w = Q_w K^T and dP_w = dO_w V^T, [16 queries x BN keys]; n-tile j = keys 8j .. 8j+7.
    // B(k = head column, n = key) = K[key][column]: an [n][k] tile, load_b_nk.
    float sc[BN / 8][4] = {}, dp[BN / 8][4] = {};
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
#pragma unroll
      for (int jj = 0; jj < BN / 16; ++jj) {
        uint32_t b[2][2];
        mma::load_b_nk(b, cK, LD, jj * 16, kd * 16);
        mma::mma16816<T>(sc[2 * jj], qf[kd], b[0]);
        mma::mma16816<T>(sc[2 * jj + 1], qf[kd], b[1]);
        mma::load_b_nk(b, cV, LD, jj * 16, kd * 16);
        mma::mma16816<T>(dp[2 * jj], of[kd], b[0]);
        mma::mma16816<T>(dp[2 * jj + 1], of[kd], b[1]);
      }
    }
    // dS in place of S. C element e of n-tile j: query g + 8 (e / 2), key 8j + 2t + e % 2 of the
    // tile. Keys past Nk give exactly 0.
    const int n_live = Nk - n0 < BN ? static_cast<int>(Nk - n0) : BN;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int col = 8 * j + 2 * t;
      const float2 M = *reinterpret_cast<const float2*>(cMask + col);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        const bool live = col + (e & 1) < n_live;
        const float pv = live ? mma::exp2_approx(fmaf(sc[j][e], p.scale_log2, (e & 1) ? M.y : M.x) - lse_r[h]) : 0.f;
        sc[j][e] = live ? pv * (dp[j][e] - delta_r[h]) : 0.f;
      }
    }
    // dQ_w += dS_w K: A = 16 keys kk of dS (c_to_a of n-tiles 2kk, 2kk+1); B(k = key, n = head
    // column) = K[key][column]: a [k][n] tile, load_b_kn.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      mma::c_to_a<T>(a, sc[2 * kk], sc[2 * kk + 1]);
#pragma unroll
      for (int jj = 0; jj < D / 16; ++jj) {
        uint32_t b[2][2];
        mma::load_b_kn(b, cK, LD, kk * 16, jj * 16);
        mma::mma16816<T>(dq_acc[2 * jj], a, b[0]);
        mma::mma16816<T>(dq_acc[2 * jj + 1], a, b[1]);
      }
    }
    if (next && threadIdx.x < BN) sMask[(s ^ 1) * BN + threadIdx.x] = mask_next;  // read after the next barrier
  }
  // the warp's own rows of sQ (read by no other warp, and no longer by this one) stage dQ
  attn_bwd::store_warp_rows<T, D>(dq_acc, p.scale, sQ + warp * 16 * LD, dq, m0 + warp * 16, Nq, d, vec16_out);
}

namespace attn_bwd {

template <typename T>
constexpr const char* type_name() {
  return std::is_same<T, __half>::value ? "__half" : "__nv_bfloat16";
}

// the launch shapes of both kernels of (T, D)
template <typename T, int D>
void record_launch() {
  using Cfg = AttnBwdMmaCfg<T, D>;
  const std::string args = std::string("<") + type_name<T>() + ", " + std::to_string(D) + ">";
  pdnet::ops::record_kernel_smem(("attn_bwd_dkdv_mma_kernel" + args).c_str(), Cfg::KV_THREADS, Cfg::KV_SMEM);
  pdnet::ops::record_kernel_smem(("attn_bwd_dq_mma_kernel" + args).c_str(), Cfg::Q_THREADS, Cfg::Q_SMEM);
}

// every instantiation launch_attn_bwd_mma can launch, recorded when the library loads
inline bool record_launches() {
  record_launch<__half, 32>();
  record_launch<__half, 64>();
  record_launch<__half, 128>();
  record_launch<__nv_bfloat16, 32>();
  record_launch<__nv_bfloat16, 64>();
  record_launch<__nv_bfloat16, 128>();
  return true;
}
[[maybe_unused]] const bool kLaunchesRecorded = record_launches();

inline bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

}  // namespace attn_bwd

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
    const bool vec16_out =
        p.d == D && attn_bwd::aligned16(p.dq) && attn_bwd::aligned16(p.dk) && attn_bwd::aligned16(p.dv);
    const int64_t n_kblocks = (p.Nk + Cfg::KV_BN - 1) / Cfg::KV_BN;
    launch_with_smem(where, what, attn_bwd_dkdv_mma_kernel<T, D>, p.BH * n_kblocks, Cfg::KV_THREADS, Cfg::KV_SMEM, p,
                     n_kblocks, vec16_out);
    const int64_t n_qblocks = (p.Nq + Cfg::Q_BM - 1) / Cfg::Q_BM;
    launch_with_smem(where, what, attn_bwd_dq_mma_kernel<T, D>, p.BH * n_qblocks, Cfg::Q_THREADS, Cfg::Q_SMEM, p,
                     n_qblocks, vec16_out);
  });
}

}  // namespace pdnet::cuda
