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
// shared-memory layouts (the dynamic shared memory as a struct; every row 16-byte aligned).
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
  struct KVSmem {
    T k[KV_BN * LD], v[KV_BN * LD];                // the block's keys
    T q[2][KV_BM * LD], dout[2][KV_BM * LD];       // two stages of query tiles
    float2 stats[2][KV_BM];                        // their query_stats
  };
  static constexpr int KV_SMEM = sizeof(KVSmem);

  // dQ: 4 warps x 16 queries; dQ_w takes D / 2 registers, the Q_w and dO_w fragments D / 2,
  // S and dP Q_BN.
  static constexpr int Q_WARPS = 4;
  static constexpr int Q_THREADS = 32 * Q_WARPS;
  static constexpr int Q_BM = 16 * Q_WARPS;        // queries per block
  static constexpr int Q_BN = D == 128 ? 32 : 64;  // keys per tile
  struct QSmem {
    T q[Q_BM * LD], dout[Q_BM * LD];               // the block's queries
    T k[2][Q_BN * LD], v[2][Q_BN * LD];            // two stages of key tiles
    float mask[2][Q_BN];                           // their key_mask
  };
  static constexpr int Q_SMEM = sizeof(QSmem);

  static_assert(KV_SMEM <= 101376 && Q_SMEM <= 101376, "tiles must fit sm_86's 99 KB per block");
  static_assert(KV_BM % 16 == 0 && Q_BN % 16 == 0, "tiles are made of 16 x 16 blocks");
  static_assert(KV_BM <= KV_THREADS && Q_BN <= Q_THREADS, "one thread per row of a tile's lse, delta or mask");
  static_assert(LD * kT % 16 == 0, "16-byte aligned rows (cp.async, ldmatrix)");
};

namespace attn_bwd {

// The per-query values P and dS need, {lse * log2 e, delta}: lse = -inf (no live key) becomes
// +inf so that P = 0, NaN stays NaN; queries past Nq get {+inf, 0}.
__device__ __forceinline__ float2 query_stats(const float* lse, const float* delta, int64_t row, int64_t Nq) {
  if (row >= Nq) return float2{INFINITY, 0.f};
  const float L = lse[row];
  return float2{L == -INFINITY ? INFINITY : L * kLog2e, delta[row]};
}

// the additive mask of key `key` in the log2 domain (0 without a mask, -inf past the Nk keys)
__device__ __forceinline__ float key_mask(const float* mask, int64_t key, int64_t Nk) {
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

// One block's view of p: the arrays of its head (blockIdx.x / n_blocks), its first resident row
// row0 (a key in the dK / dV kernel, a query in the dQ kernel) and the warp's, wrow = row0 +
// 16 warp; the lane's C fragment coordinates (rows g, g + 8; columns 2t, 2t + 1 of each 8-column
// n-tile, mma_sm80.cuh).
template <typename T>
struct BlockView : HeadArrays<T> {
  int64_t row0, wrow;
  int warp, g, t;
  __device__ __forceinline__ BlockView(const AttnBwdParams& p, int64_t n_blocks, int rows)
      : HeadArrays<T>(p, blockIdx.x / n_blocks),
        row0((blockIdx.x % n_blocks) * rows),
        wrow(row0 + 16 * (threadIdx.x >> 5)),
        warp(threadIdx.x >> 5),
        g((threadIdx.x & 31) >> 2),
        t(threadIdx.x & 3) {}
};

// Two row-major [n, d] arrays x, y of one head and the shared tiles sx, sy their rows go to.
template <typename T>
struct RowPair {
  T *sx, *sy;
  const T *x, *y;
  int64_t n;
};

// rows row0 .. row0 + ROWS - 1 of r.x, r.y into r.sx + at, r.sy + at (mma_io::load_tile)
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_pair(const RowPair<T>& r, int at, int64_t row0, const AttnBwdParams& p) {
  mma_io::load_tile<T, ROWS, D, THREADS>(r.sx + at, r.x, row0, r.n, p.d, p.vec16);
  mma_io::load_tile<T, ROWS, D, THREADS>(r.sy + at, r.y, row0, r.n, p.d, p.vec16);
}

// The pipeline of both kernels. The block keeps ROWS rows of `res` from row0 in shared memory and
// streams `str` in tiles of TILE rows, double-buffered (str.sx, str.sy: [2][TILE, D + 8]), with a
// per-row value fetch(row) of type V (rows past str.n included) in sRow ([2][TILE]). First the
// resident rows and tile 0 (one cp.async group) and tile 0's values, then ready() once all are in
// shared memory. Per tile it: wait for its copies and __syncthreads (the one barrier per tile: the
// other stage is free after it), issue tile it + 1's copies into the other stage, load this
// thread's value of tile it + 1 into a register, compute(x tile, y tile, values, first row), then
// store the value (read after the next barrier: the load's latency hides behind the compute).
template <typename T, int D, int ROWS, int TILE, int THREADS, typename V, typename Fetch, typename Ready,
          typename Compute>
__device__ __forceinline__ void pipeline(const RowPair<T>& res, int64_t row0, const RowPair<T>& str, V* sRow,
                                         const AttnBwdParams& p, Fetch fetch, Ready ready, Compute compute) {
  constexpr int STAGE = TILE * (D + 8);
  load_pair<T, D, ROWS, THREADS>(res, 0, row0, p);
  load_pair<T, D, TILE, THREADS>(str, 0, 0, p);
  mma::cp_async_commit();
  if (threadIdx.x < TILE) sRow[threadIdx.x] = fetch(threadIdx.x);
  mma::cp_async_wait<0>();
  __syncthreads();
  ready();
  const int64_t n_tiles = (str.n + TILE - 1) / TILE;
  for (int64_t it = 0; it < n_tiles; ++it) {
    const int s = static_cast<int>(it & 1);
    const int64_t first = it * TILE;
    mma::cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < n_tiles) load_pair<T, D, TILE, THREADS>(str, (s ^ 1) * STAGE, first + TILE, p);
    mma::cp_async_commit();
    V next{};
    if (threadIdx.x < TILE) next = fetch(first + TILE + threadIdx.x);
    compute(str.sx + s * STAGE, str.sy + s * STAGE, sRow + s * TILE, first);
    if (threadIdx.x < TILE) sRow[(s ^ 1) * TILE + threadIdx.x] = next;
  }
}

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

// c[n] += a B for the N / 8 n-tiles of one 16-row k-step k0 .. k0 + 15 of a tile b (stride D + 8;
// ldmatrix gives two n-tiles at a time): B(k, n) = b[n][k] when NK (load_b_nk), else b[k][n]
// (load_b_kn). One warp; a: an A fragment (16 x 16), c: [16 x N] C fragments.
template <typename T, int D, int N, bool NK>
__device__ __forceinline__ void mma_k_step(float (&c)[N / 8][4], const uint32_t (&a)[4], const T* b, int k0) {
#pragma unroll
  for (int jj = 0; jj < N / 16; ++jj) {
    uint32_t bf[2][2];
    if constexpr (NK) {
      mma::load_b_nk(bf, b, D + 8, jj * 16, k0);
    } else {
      mma::load_b_kn(bf, b, D + 8, k0, jj * 16);
    }
    mma::mma16816<T>(c[2 * jj], a, bf[0]);
    mma::mma16816<T>(c[2 * jj + 1], a, bf[1]);
  }
}

// x = X_w B_x^T and y = Y_w B_y^T for one warp, [16 x N] C fragments (n-tile j: columns 8j ..
// 8j+7). X_w, Y_w: the warp's 16 x D operands, as A fragments fx, fy when KR = D / 16, else (KR = 1)
// loaded at each k-step from their rows sx, sy in shared memory. B_x, B_y: rows 0 .. N-1 of the
// row-major [N x D] tiles bx, by (B(k = column, n = row) = b[n][k]).
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
    mma_k_step<T, D, N, true>(x, ax, bx, kd * 16);
    mma_k_step<T, D, N, true>(y, ay, by, kd * 16);
  }
}

// What P and dS need of one score besides S and dP: its key's mask and its query's stats in the
// log2 domain (key_mask, query_stats), and whether both are live (not padding).
struct ScoreArgs {
  float mk;
  float2 stats;
  bool live;
};

// A warp's [16 x N] tiles of P and dS (or of their transposes): pt = X_w B_x^T, ds = Y_w B_y^T
// (S and dP: warp_products_nt's arguments), then elementwise P = 2^(S scale_log2 + mk - lse2),
// dS = P (dP - delta) with {mk, {lse2, delta}, live} = args(h, c) for C element (row g + 8h,
// column c); exactly 0 where !live (padding), whatever S and dP hold there.
template <typename T, int D, int N, int KR, typename Args>
__device__ __forceinline__ void warp_p_ds(float (&pt)[N / 8][4], float (&ds)[N / 8][4], const uint32_t (&fx)[KR][4],
                                          const uint32_t (&fy)[KR][4], const T* sx, const T* sy, const T* bx,
                                          const T* by, float scale_log2, Args args) {
  warp_products_nt<T, D, N, KR>(pt, ds, fx, fy, sx, sy, bx, by);
#pragma unroll
  for (int j = 0; j < N / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // C layout: element e at row g + 8 (e / 2), column 8j + 2t + e % 2
      const ScoreArgs a = args(e >> 1, 8 * j + 2 * (threadIdx.x & 3) + (e & 1));
      const float pv = a.live ? mma::exp2_approx(fmaf(pt[j][e], scale_log2, a.mk) - a.stats.x) : 0.f;
      ds[j][e] = a.live ? pv * (ds[j][e] - a.stats.y) : 0.f;
      pt[j][e] = pv;
    }
  }
}

// acc += A B for one warp: A = the [16 x N] C fragments a rounded to T (the A fragment of columns
// 16kk .. 16kk+15 is c_to_a of n-tiles 2kk, 2kk+1), B = rows 0 .. N-1 of the row-major [N x D]
// tile b (B(k = row, n = column) = b[k][n]); acc: [16 x D] C fragments.
template <typename T, int D, int N>
__device__ __forceinline__ void warp_product_nn(float (&acc)[D / 8][4], const float (&a)[N / 8][4], const T* b) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    uint32_t af[4];
    mma::c_to_a<T>(af, a[2 * kk], a[2 * kk + 1]);
    mma_k_step<T, D, D, false>(acc, af, b, kk * 16);
  }
}

}  // namespace attn_bwd

// dK, dV (and dmask) of KV_BN keys of one head. Grid: BH * n_kblocks blocks; p as documented in
// attention_params.cuh; vec16_out: d == D and dk, dv start on 16-byte boundaries.
template <typename T, int D>
__global__ void __launch_bounds__(AttnBwdMmaCfg<T, D>::KV_THREADS)
    attn_bwd_dkdv_mma_kernel(const AttnBwdParams p, int64_t n_kblocks, bool vec16_out) {
  using Cfg = AttnBwdMmaCfg<T, D>;
  constexpr int BN = Cfg::KV_BN, BM = Cfg::KV_BM, LD = Cfg::LD;
  constexpr int KR = Cfg::KV_FRAGS_IN_REGS ? D / 16 : 1;
  extern __shared__ __align__(128) unsigned char smem[];
  auto& sm = *reinterpret_cast<typename Cfg::KVSmem*>(smem);
  const attn_bwd::BlockView<T> blk(p, n_kblocks, BN);
  T* sKw = sm.k + blk.warp * 16 * LD;  // the warp's rows of the key tiles: keys wrow ..
  T* sVw = sm.v + blk.warp * 16 * LD;
  bool key_live[2];  // the lane's keys wrow + g, wrow + g + 8: rows g, g + 8 of the C fragments
  float mk[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    key_live[r] = blk.wrow + blk.g + 8 * r < p.Nk;
    mk[r] = attn_bwd::key_mask(blk.mask, blk.wrow + blk.g + 8 * r, p.Nk);
  }
  uint32_t kf[KR][4], vf[KR][4];                        // A fragments of K_w, V_w when kept in registers
  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};  // [16 keys x D] each, C fragments
  float dmask_acc[2] = {0.f, 0.f};                      // the lane's two keys

  attn_bwd::pipeline<T, D, BN, BM, Cfg::KV_THREADS>(
      {sm.k, sm.v, blk.k, blk.v, p.Nk}, blk.row0, {sm.q[0], sm.dout[0], blk.q, blk.dout, p.Nq}, sm.stats[0], p,
      [&](int64_t row) { return attn_bwd::query_stats(blk.lse, blk.delta, row, p.Nq); },
      [&] {
        if constexpr (KR == D / 16) attn_bwd::load_warp_a<T, D>(kf, vf, sKw, sVw);
      },
      [&](const T* cQ, const T* cdO, const float2* cStats, int64_t m0) {
        // P^T_w, dS^T_w [16 keys x BM queries] from S^T_w = K_w Q^T, dP^T_w = V_w dO^T
        const int m_live = p.Nq - m0 < BM ? static_cast<int>(p.Nq - m0) : BM;
        float pt[BM / 8][4], dst[BM / 8][4];
        attn_bwd::warp_p_ds<T, D, BM, KR>(pt, dst, kf, vf, sKw, sVw, cQ, cdO, p.scale_log2, [&](int r, int c) {
          return attn_bwd::ScoreArgs{mk[r], cStats[c], key_live[r] && c < m_live};
        });
#pragma unroll
        for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) dmask_acc[e >> 1] += dst[j][e];
        }
        attn_bwd::warp_product_nn<T, D, BM>(dv_acc, pt, cdO);  // dV_w += P^T_w dO
        attn_bwd::warp_product_nn<T, D, BM>(dk_acc, dst, cQ);  // dK_w += dS^T_w Q
      });

  // dmask: a key's row of dS^T lives in the 4 lanes of group g; one block owns the key
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = dmask_acc[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (blk.dmask != nullptr && blk.t == 0 && key_live[r]) blk.dmask[blk.wrow + blk.g + 8 * r] = sum;
  }
  // the warp's own rows of the key tiles (read by no other warp) stage dK and dV
  mma_io::store_warp_rows<T, D>(dv_acc, 1.f, sVw, blk.dv, blk.wrow, p.Nk, p.d, vec16_out);
  mma_io::store_warp_rows<T, D>(dk_acc, p.scale, sKw, blk.dk, blk.wrow, p.Nk, p.d, vec16_out);
}

// dQ of Q_BM queries of one head. Grid: BH * n_qblocks blocks; vec16_out: d == D and dq starts
// on a 16-byte boundary.
template <typename T, int D>
__global__ void __launch_bounds__(AttnBwdMmaCfg<T, D>::Q_THREADS)
    attn_bwd_dq_mma_kernel(const AttnBwdParams p, int64_t n_qblocks, bool vec16_out) {
  using Cfg = AttnBwdMmaCfg<T, D>;
  constexpr int BM = Cfg::Q_BM, BN = Cfg::Q_BN, LD = Cfg::LD;
  extern __shared__ __align__(128) unsigned char smem[];
  auto& sm = *reinterpret_cast<typename Cfg::QSmem*>(smem);
  const attn_bwd::BlockView<T> blk(p, n_qblocks, BM);
  T* sQw = sm.q + blk.warp * 16 * LD;  // the warp's rows of the query tiles: queries wrow ..
  T* sdOw = sm.dout + blk.warp * 16 * LD;
  // the lane's queries wrow + g, wrow + g + 8: rows g, g + 8 of the C fragments (rows past Nq are
  // computed from zero rows of Q and dO and never stored)
  const float2 qs[2] = {attn_bwd::query_stats(blk.lse, blk.delta, blk.wrow + blk.g, p.Nq),
                        attn_bwd::query_stats(blk.lse, blk.delta, blk.wrow + blk.g + 8, p.Nq)};
  uint32_t qf[D / 16][4], of[D / 16][4];  // A fragments of Q_w and dO_w
  float dq_acc[D / 8][4] = {};            // [16 queries x D], C fragments

  attn_bwd::pipeline<T, D, BM, BN, Cfg::Q_THREADS>(
      {sm.q, sm.dout, blk.q, blk.dout, p.Nq}, blk.row0, {sm.k[0], sm.v[0], blk.k, blk.v, p.Nk}, sm.mask[0], p,
      [&](int64_t key) { return attn_bwd::key_mask(blk.mask, key, p.Nk); },
      [&] { attn_bwd::load_warp_a<T, D>(qf, of, sQw, sdOw); },
      [&](const T* cK, const T* cV, const float* cMask, int64_t n0) {
        // P_w, dS_w [16 queries x BN keys] from S_w = Q_w K^T, dP_w = dO_w V^T
        const int n_live = p.Nk - n0 < BN ? static_cast<int>(p.Nk - n0) : BN;
        float pw[BN / 8][4], ds[BN / 8][4];
        attn_bwd::warp_p_ds<T, D, BN, D / 16>(pw, ds, qf, of, sQw, sdOw, cK, cV, p.scale_log2, [&](int r, int c) {
          return attn_bwd::ScoreArgs{cMask[c], qs[r], c < n_live};
        });
        attn_bwd::warp_product_nn<T, D, BN>(dq_acc, ds, cK);  // dQ_w += dS_w K
      });
  // the warp's own rows of the query tile (read by no other warp, and no longer by this one) stage dQ
  mma_io::store_warp_rows<T, D>(dq_acc, p.scale, sQw, blk.dq, blk.wrow, p.Nq, p.d, vec16_out);
}

// ---------------------------------------------------------------------------------
// Host side

// records the launch shapes of both kernels of every D for T (kernel_smem.h)
template <typename T>
bool record_attn_bwd_mma() {
  for (const int d : {32, 64, 128}) {
    dispatch_head_dim("record_attn_bwd_mma", d, [](auto dc) {
      using Cfg = AttnBwdMmaCfg<T, decltype(dc)::value>;
      const std::string args = std::string("<") + mma_io::type_name<T>() + ", " + std::to_string(dc.value) + ">";
      pdnet::ops::record_kernel_smem(("attn_bwd_dkdv_mma_kernel" + args).c_str(), Cfg::KV_THREADS, Cfg::KV_SMEM);
      pdnet::ops::record_kernel_smem(("attn_bwd_dq_mma_kernel" + args).c_str(), Cfg::Q_THREADS, Cfg::Q_SMEM);
    });
  }
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

}  // namespace pdnet::cuda
