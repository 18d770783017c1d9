// Tensor-core forward of pdnet::part_attention for float16 / bfloat16 (FlashAttention-2 manner),
// launched by part_attention_kernel.cu through launch_attn_fwd_mma<T>.
//
// One block = BM queries of one head (b, part); kWarps warps, warp w owns the kMT m-tiles of 16
// query rows wrow .. wrow + 16 kMT - 1 (wrow = 16 kMT w). Per key tile of BN keys:
//   S = Q K^T            mma.sync m16n8k16, float32 accumulators in registers; Q's A fragments from
//                        ldmatrix (held in registers for the whole key loop when kQRegs, else
//                        reloaded from shared memory per tile), K's B fragments by ldmatrix (load_b_nk)
//   x = S scale log2(e) + mask log2(e)   (the log2 domain; -inf for keys past Nk)
//   online softmax per row, in registers: running max m, alpha = 2^(m_old - m_new),
//   p = 2^(x - m_new); each lane keeps the partial row sum l of its own columns (the 4 lanes of a
//   row are summed once, in the epilogue)
//   O = O alpha + P V    P's A fragments straight from the S accumulators (c_to_a), V's B fragments
//                        by ldmatrix.trans (load_b_kn), O in float32 registers.
// K and V (and the tile's key mask) are double-buffered: tile j + 1 is copied by cp.async while tile j
// is computed, with one __syncthreads per tile. Epilogue: out = O / l rounded to T, staged through
// the warp's own rows of the Q tile for 16-byte global stores; lse = (m + log2 l) ln 2.
//
// Semantics (as the float32 kernel and the reference): a row whose scores are all -inf has weights 0:
// out = 0 V, l = 0, lse = -inf. A NaN score gives p = NaN, a +inf score p = 2^(inf - inf) = NaN: the
// row's l, out and lse are NaN. Keys past Nk get -inf whatever q holds, and their K
// and V rows are zero, so padding contributes exactly 0; query rows past Nq are never stored.
#pragma once

#include <string>

#include "../kernel_smem.h"
#include "attention_mma_io.cuh"
#include "attention_params.cuh"
#include "attention_tiles.cuh"
#include "mma_sm80.cuh"

namespace pdnet::cuda {

// Tiles of the tensor-core forward per storage type and head dim D (32, 64, 128). Four warps of 32
// query rows (two m-tiles each: every K / V fragment loaded from shared memory feeds two mma, which
// keeps shared-memory traffic below the tensor cores' rate). Key tiles of 64; 32 at D = 128, where
// 64 would need 104448 bytes of shared memory (sm_86 allows 101376) and O alone takes 128
// registers, so Q's fragments are reloaded from shared memory per tile rather than held.
template <typename T, int D>
struct FwdMmaCfg {
  static constexpr int kWarps = 4;
  static constexpr int kMT = 2;                  // 16-row m-tiles per warp
  static constexpr int BM = kWarps * 16 * kMT;   // queries per block
  static constexpr int BN = D == 128 ? 32 : 64;  // keys per tile
  static constexpr bool kQRegs = D <= 64;        // Q's A fragments held in registers
  static constexpr int kMinBlocks = 2;           // __launch_bounds__: at most 255 registers
  static constexpr int kThreads = kWarps * 32;
  static constexpr int LD = D + 8;  // row stride of the tiles (elements; mma_io's): a 16-byte pad
  static constexpr int kQBytes = BM * LD * sizeof(T);
  static constexpr int kKVBytes = BN * LD * sizeof(T);  // one K or V buffer
  static constexpr int Q_OFF = 0;
  static constexpr int K_OFF = Q_OFF + kQBytes;       // 2 buffers
  static constexpr int V_OFF = K_OFF + 2 * kKVBytes;  // 2 buffers
  static constexpr int MASK_OFF = V_OFF + 2 * kKVBytes;
  static constexpr int kSmem = MASK_OFF + 2 * BN * static_cast<int>(sizeof(float));  // 2 mask buffers

  static_assert(D % 16 == 0 && BN % 16 == 0, "FwdMmaCfg: D and BN must be multiples of 16");
  static_assert(BN <= kThreads, "FwdMmaCfg: one thread per key loads the tile's mask");
  static_assert(kQBytes % 16 == 0 && kKVBytes % 16 == 0, "FwdMmaCfg: 16-byte aligned buffers (cp.async)");
  static_assert(kSmem <= 101376, "FwdMmaCfg: tiles must fit sm_86's 99 KB per block");
};

namespace fwd_mma {

// s (C fragments of the [16 kMT x BN] score tile) -> the log2 domain: s scale_log2 + mask. Lane (g, t)
// holds columns 8 nt + 2t, 8 nt + 2t + 1 of n-tile nt (C layout, mma_sm80.cuh) for both of its rows;
// sMask[c] is column c's mask times log2(e). TAIL: columns at or past n_live are keys past Nk: -inf.
template <bool TAIL, int MT, int NT>
__device__ __forceinline__ void scores_log2(float (&s)[MT][NT][4], const float* sMask, float scale_log2, int n_live) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int c = 8 * nt + 2 * t;
    const float2 mk = *reinterpret_cast<const float2*>(sMask + c);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // i = 0, 1: row g; 2, 3: row g + 8; column c + (i & 1)
        const float x = fmaf(s[mt][nt][i], scale_log2, (i & 1) ? mk.y : mk.x);
        s[mt][nt][i] = (TAIL && c + (i & 1) >= n_live) ? -INFINITY : x;
      }
    }
  }
}

// Online softmax of one tile for the lane's 2 MT rows (h = 0: row g, c[0..1]; h = 1: row g + 8,
// c[2..3]): the row max over the tile (the lane's columns, then the 4 lanes of the group: xor 1, 2),
// the running max m, alpha rescaling O and the lane's partial sum l, and s -> p = 2^(s - m).
// The max is fmaxf's, which skips NaN (one instruction; max_nan takes two): a NaN score still makes
// its row NaN, as max_nan would, because its p = 2^(NaN - m) is NaN, and so are l, O and lse.
template <int MT, int NT, int DT>
__device__ __forceinline__ void online_softmax(float (&s)[MT][NT][4], float (&m)[MT][2], float (&l)[MT][2],
                                               float (&o)[MT][DT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[mt][h], mx);  // never NaN
      // every key so far masked (m_new = -inf): subtract 0, so that p = 2^-inf = 0 (not 2^NaN)
      const float m_sub = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = mma::exp2_approx(m[mt][h] - m_sub);  // 0 on the first live tile
      m[mt][h] = m_new;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 2 * h; i < 2 * h + 2; ++i) {
          s[mt][nt][i] = mma::exp2_approx(s[mt][nt][i] - m_sub);
          sum += s[mt][nt][i];
        }
      }
      l[mt][h] = l[mt][h] * alpha + sum;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        o[mt][dt][2 * h] *= alpha;
        o[mt][dt][2 * h + 1] *= alpha;
      }
    }
  }
}

}  // namespace fwd_mma

template <typename T, int D>
__global__ void __launch_bounds__(FwdMmaCfg<T, D>::kThreads, FwdMmaCfg<T, D>::kMinBlocks)
    attn_fwd_mma_kernel(const AttnFwdParams p) {
  using Cfg = FwdMmaCfg<T, D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, MT = Cfg::kMT, THREADS = Cfg::kThreads;
  constexpr int KS = D / 16;  // 16-wide k-steps of Q K^T
  constexpr int NT = BN / 8;  // 8-key n-tiles of S
  constexpr int DT = D / 8;   // 8-column n-tiles of O
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + Cfg::Q_OFF);           // [BM, LD]; the epilogue's staging
  T* sK = reinterpret_cast<T*>(smem + Cfg::K_OFF);           // [2][BN, LD]
  T* sV = reinterpret_cast<T*>(smem + Cfg::V_OFF);           // [2][BN, LD]
  float* sMask = reinterpret_cast<float*>(smem + Cfg::MASK_OFF);  // [2][BN] mask * log2(e)

  const int64_t Nq = p.Nq, Nk = p.Nk;
  const int d = p.d;
  const int64_t n_qblocks = (Nq + BM - 1) / BM;
  const int64_t bh = blockIdx.x / n_qblocks;  // consecutive blocks: the query tiles of one head
  const int64_t m0 = (blockIdx.x - bh * n_qblocks) * BM;
  const T* q = static_cast<const T*>(p.q) + bh * Nq * d;
  const T* k = static_cast<const T*>(p.k) + bh * Nk * d;
  const T* v = static_cast<const T*>(p.v) + bh * Nk * d;
  const float* mask = p.mask != nullptr ? p.mask + bh * Nk : nullptr;
  T* out = static_cast<T*>(p.out) + bh * Nq * d;
  float* lse = p.lse + bh * Nq;
  const bool vec16 = p.vec16;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // C layout: rows g, g + 8 of an m-tile; columns 2t, 2t + 1
  const int wrow = warp * 16 * MT;        // the warp's first row in the block's tile

  // this thread's key of a tile (BN <= THREADS): its mask * log2(e) (0 without a mask or past Nk)
  auto mask_of = [&](int64_t n0) {
    const int64_t key = n0 + threadIdx.x;
    return (mask != nullptr && threadIdx.x < BN && key < Nk) ? mask[key] : 0.f;
  };
  auto load_kv = [&](int buf, int64_t n0) {
    mma_io::load_tile<T, BN, D, THREADS>(sK + buf * BN * LD, k, n0, Nk, d, vec16);
    mma_io::load_tile<T, BN, D, THREADS>(sV + buf * BN * LD, v, n0, Nk, d, vec16);
  };

  // prologue: Q (group 1), then key tile 0 (group 2)
  mma_io::load_tile<T, BM, D, THREADS>(sQ, q, m0, Nq, d, vec16);
  mma::cp_async_commit();
  load_kv(0, 0);
  mma::cp_async_commit();
  if (threadIdx.x < BN) sMask[threadIdx.x] = mask_of(0) * kLog2e;

  uint32_t qf[Cfg::kQRegs ? MT : 1][Cfg::kQRegs ? KS : 1][4];  // A fragments of the warp's Q rows
  if constexpr (Cfg::kQRegs) {
    mma::cp_async_wait<1>();  // this thread's Q chunks have landed
    __syncthreads();          // and every thread's
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) mma::load_a<T>(qf[mt][kk], sQ, LD, wrow + 16 * mt, 16 * kk);
  }

  float o[MT][DT][4];  // O accumulators (C layout)
  float m_run[MT][2], l_run[MT][2];  // per lane row (m-tile, h): running max (log2 domain), partial sum
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[mt][dt][i] = 0.f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }

  int buf = 0;
  for (int64_t n0 = 0; n0 < Nk; n0 += BN, buf ^= 1) {
    mma::cp_async_wait<0>();  // this thread's copies of tile n0 have landed
    __syncthreads();          // every thread's have; every warp is done with the other buffer
    const bool has_next = n0 + BN < Nk;
    float mask_next = 0.f;
    if (has_next) {  // prefetch the next tile into the other buffer while this one is computed
      load_kv(buf ^ 1, n0 + BN);
      mma::cp_async_commit();
      mask_next = mask_of(n0 + BN);  // stored after the compute, so that the load's latency is hidden
    }
    const T* tK = sK + buf * BN * LD;
    const T* tV = sV + buf * BN * LD;

    // S = Q K^T: s[mt][nt] is the C fragment of rows wrow + 16 mt .., keys n0 + 8 nt ..
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[mt][nt][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Cfg::kQRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mt][i] = qf[mt][kk][i];
        } else {
          mma::load_a<T>(a[mt], sQ, LD, wrow + 16 * mt, 16 * kk);
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t b[2][2];  // keys 16 np .. 16 np + 15 (n-tiles 2 np, 2 np + 1), dims 16 kk ..
        mma::load_b_nk<T>(b, tK, LD, 16 * np, 16 * kk);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma::mma16816<T>(s[mt][2 * np], a[mt], b[0]);
          mma::mma16816<T>(s[mt][2 * np + 1], a[mt], b[1]);
        }
      }
    }

    const float* tMask = sMask + buf * BN;
    if (n0 + BN <= Nk) {
      fwd_mma::scores_log2<false>(s, tMask, p.scale_log2, BN);
    } else {
      fwd_mma::scores_log2<true>(s, tMask, p.scale_log2, static_cast<int>(Nk - n0));
    }
    fwd_mma::online_softmax(s, m_run, l_run, o);

    // O += P V: P's A fragment of keys 16 kk .. 16 kk + 15 is n-tiles 2 kk, 2 kk + 1 of s (c_to_a)
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma::c_to_a<T>(a[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[2][2];  // keys 16 kk .., dims 16 dp .. 16 dp + 15 (n-tiles 2 dp, 2 dp + 1)
        mma::load_b_kn<T>(b, tV, LD, 16 * kk, 16 * dp);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma::mma16816<T>(o[mt][2 * dp], a[mt], b[0]);
          mma::mma16816<T>(o[mt][2 * dp + 1], a[mt], b[1]);
        }
      }
    }
    if (has_next && threadIdx.x < BN) sMask[(buf ^ 1) * BN + threadIdx.x] = mask_next * kLog2e;
  }

  // epilogue: the row sums of the 4 lanes of each row, lse, then out = O / l, staged in the warp's
  // own rows of the Q tile (no other warp reads them; store_warp_rows waits for this warp's reads)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = l_run[mt][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const bool live = l != 0.f;  // 0 only when every key is masked; NaN stays NaN
      const int64_t row = m0 + wrow + 16 * mt + g + 8 * h;
      if (t == 0 && row < Nq) lse[row] = live ? (m_run[mt][h] + log2f(l)) * kLn2 : -INFINITY;
      const float inv = live ? 1.f / l : 0.f;
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {  // C layout: c[2h], c[2h + 1] are row g + 8h
        o[mt][dt][2 * h] *= inv;
        o[mt][dt][2 * h + 1] *= inv;
      }
    }
    mma_io::store_warp_rows<T, D>(o[mt], 1.f, sQ + (wrow + 16 * mt) * LD, out, m0 + wrow + 16 * mt, Nq, d, vec16);
  }
}

// ---------------------------------------------------------------------------------
// Host side

// records the launch shape of attn_fwd_mma_kernel<T, D> for every D (kernel_smem.h)
template <typename T>
bool record_attn_fwd_mma() {
  auto one = [](auto dc) {
    constexpr int D = decltype(dc)::value;
    const std::string name =
        std::string("attn_fwd_mma_kernel<") + mma_io::type_name<T>() + ", " + std::to_string(D) + ">";
    pdnet::ops::record_kernel_smem(name.c_str(), FwdMmaCfg<T, D>::kThreads, FwdMmaCfg<T, D>::kSmem);
  };
  one(std::integral_constant<int, 32>{});
  one(std::integral_constant<int, 64>{});
  one(std::integral_constant<int, 128>{});
  return true;
}
inline const bool kAttnFwdMmaRecorded = record_attn_fwd_mma<__half>() && record_attn_fwd_mma<__nv_bfloat16>();

// out, lse of p for T = __half or __nv_bfloat16 (AttnFwdParams' contract); `what` names the tensor
// the grid comes from in errors.
template <typename T>
void launch_attn_fwd_mma(const char* where, const at::Tensor& what, const AttnFwdParams& p) {
  dispatch_head_dim(where, p.d, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    using Cfg = FwdMmaCfg<T, D>;
    AttnFwdParams pd = p;
    pd.vec16 = p.vec16 && p.d == D;
    launch_with_smem(where, what, attn_fwd_mma_kernel<T, D>, p.BH * ((p.Nq + Cfg::BM - 1) / Cfg::BM), Cfg::kThreads,
                     Cfg::kSmem, pd);
  });
}

}  // namespace pdnet::cuda
