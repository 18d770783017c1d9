// CUDA backward of pdnet::part_attention (the op pdnet::part_attention_backward).
//
// 1. attn_delta_kernel (every dtype): delta = rowsum(dO * O) - dlse, one warp per query row.
// 2. float16 / bfloat16: the tensor-core kernels of part_attention_bwd_mma.cuh.
//    float32, two kernels with plain FMA (WarpTile<float>); each gradient element is written by
//    one block, summed in a fixed order (no atomics: bitwise reproducible):
//    attn_bwd_dkdv_kernel, one block = one head x BN keys; warp w owns keys 16w .. 16w+15,
//    whose dK, dV accumulate in registers over every query tile of BM rows:
//      S^T_w = K_w Q^T, dP^T_w = V_w dO^T,
//      P^T = exp2(S^T * scale * log2 e + mask - lse * log2 e), dS^T = P^T (dP^T - delta),
//      dV_w += P^T_w dO, dK_w += dS^T_w Q, dmask_w += row sums of dS^T_w;
//      dK is scaled by `scale` at the end.
//    attn_bwd_dq_kernel, one block = one head x BM queries; warp w owns queries 16w .. 16w+15,
//    whose dQ accumulates in registers over every key tile of BN keys:
//      S_w = Q_w K^T, dP_w = dO_w V^T, P and dS as above, dQ_w += dS_w K; dQ = scale * dQ_w.
//    P is 0 for rows whose keys are all masked (lse = -inf) and NaN for NaN rows (lse = NaN);
//    P and dS are exactly 0 on the padding past Nq and Nk, even next to a NaN or inf.
#include <string>

#ifndef PDNET_CUDA_EMULATION  // the CPU emulator (tests/cuda_emu) compiles the kernels and launchers only
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common.h"
#include "../ops.h"
#endif

#include "../kernel_smem.h"
#include "attention_params.cuh"
#include "attention_tiles.cuh"
#include "part_attention_bwd_mma.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

constexpr int kDeltaThreads = 256;  // 8 rows per block

template <typename T>
__global__ void attn_delta_kernel(const T* __restrict__ dout,      // [rows, d]
                                  const T* __restrict__ out,       // [rows, d]
                                  const float* __restrict__ dlse,  // [rows] or nullptr
                                  float* __restrict__ delta,       // [rows]
                                  int64_t rows, int d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; row < rows; row += warps) {
    float acc = 0.f;
    for (int c = lane; c < d; c += 32) acc += to_float(dout[row * d + c]) * to_float(out[row * d + c]);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) delta[row] = acc - (dlse != nullptr ? dlse[row] : 0.f);
  }
}

// sLse[i], sDelta[i] = attn_bwd::query_stats of the query rows m0 + i of a tile of BM rows: lse * log2(e)
// (+inf for a row with no live key, lse = -inf, which makes its P = 0) and delta; padding rows get
// +inf and 0.
template <int BM>
__device__ __forceinline__ void load_row_stats(float* sLse, float* sDelta, const float* lse, const float* delta,
                                               int64_t m0, int64_t Nq) {
  for (int i = threadIdx.x; i < BM; i += blockDim.x) {
    const float2 st = attn_bwd::query_stats(lse, delta, m0 + i, Nq);
    sLse[i] = st.x;
    sDelta[i] = st.y;
  }
}

// P and dS of one (query, key) pair, from its score s, dP, the key's mask and the query's lse
// (both in the log2 domain, as loaded above) and delta; both exactly 0 when !live (a key
// past Nk or a query past Nq), even where s or dp is NaN or inf. float32: the accurate exp2f.
struct ProbGrad {
  float p, ds;
};
__device__ __forceinline__ ProbGrad prob_grad(float s, float dp, float mask_log2, float lse_log2, float delta,
                                              float scale_log2, bool live) {
  const float p = live ? exp2f(fmaf(s, scale_log2, mask_log2) - lse_log2) : 0.f;
  return {p, live ? p * (dp - delta) : 0.f};
}

template <typename T, int D>
__global__ void __launch_bounds__(AttnCfg<T, D>::BWD_THREADS)
    attn_bwd_dkdv_kernel(const AttnBwdParams prm, int64_t n_kblocks) {
  using Cfg = AttnCfg<T, D>;  // float32 only (static_assert there)
  using Smem = typename Cfg::BwdSmem;
  constexpr int BN = Cfg::BWD_BN, BM = Cfg::BWD_BM, LDT = Smem::LDT, LDS = Smem::LDS;
  extern __shared__ __align__(128) unsigned char smem[];
  // s[0]: S^T, then P^T; s[1]: dP^T, then dS^T  [BN, LDS] (rows: keys, columns: queries)
  const Smem sm(smem);

  const int64_t Nq = prm.Nq, Nk = prm.Nk;
  const int d = prm.d;
  const int64_t n0 = (blockIdx.x % n_kblocks) * BN;
  const attn_bwd::HeadArrays<T> a(prm, blockIdx.x / n_kblocks);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, h = lane & 1;  // two lanes per key row of the warp

  load_rows<T, BN, D, LDT>(sm.k, a.k, n0, Nk, d, prm.vec16);
  load_rows<T, BN, D, LDT>(sm.v, a.v, n0, Nk, d, prm.vec16);
  load_mask_tile<BN>(sm.mask, a.mask, n0, Nk);
  WarpTile<T, D> dK_acc, dV_acc;
  dK_acc.zero();
  dV_acc.zero();
  float dmask_acc = 0.f;
  const T* sKw = sm.k + warp * 16 * LDT;
  const T* sVw = sm.v + warp * 16 * LDT;
  float* sSw = sm.s[0] + warp * 16 * LDS;
  float* sdPw = sm.s[1] + warp * 16 * LDS;
  const bool key_live = n0 + warp * 16 + r < Nk;

  for (int64_t m0 = 0; m0 < Nq; m0 += BM) {
    __syncthreads();  // the previous query tile is consumed (first pass: sm.k, sm.v, sm.mask loaded)
    load_rows<T, BM, D, LDT>(sm.q, a.q, m0, Nq, d, prm.vec16);
    load_rows<T, BM, D, LDT>(sm.dout, a.dout, m0, Nq, d, prm.vec16);
    load_row_stats<BM>(sm.lse, sm.delta, a.lse, a.delta, m0, Nq);
    __syncthreads();
    {  // S^T_w = K_w Q^T  [16 x BM]
      WarpTile<T, BM> t;
      t.zero();
      t.template mma<D, false, true>(sKw, LDT, sm.q, LDT);
      t.store(sSw, LDS);
    }
    {  // dP^T_w = V_w dO^T  [16 x BM]
      WarpTile<T, BM> t;
      t.zero();
      t.template mma<D, false, true>(sVw, LDT, sm.dout, LDT);
      t.store(sdPw, LDS);
    }
    __syncwarp();
    {  // row r of the warp's keys, columns (queries) h, h + 2, ...: P^T over S^T, dS^T over dP^T
      const float mk = sm.mask[warp * 16 + r];
      float* srow = sSw + r * LDS;
      float* dprow = sdPw + r * LDS;
      const int m_live = Nq - m0 < BM ? static_cast<int>(Nq - m0) : BM;
      for (int i = h; i < BM; i += 2) {
        const ProbGrad g =
            prob_grad(srow[i], dprow[i], mk, sm.lse[i], sm.delta[i], prm.scale_log2, key_live && i < m_live);
        srow[i] = g.p;
        dprow[i] = g.ds;
        dmask_acc += g.ds;
      }
    }
    __syncwarp();
    dV_acc.template mma<BM, false, false>(sSw, LDS, sm.dout, LDT);  // += P^T_w dO
    dK_acc.template mma<BM, false, false>(sdPw, LDS, sm.q, LDT);  // += dS^T_w Q
  }

  dmask_acc += __shfl_xor_sync(0xffffffffu, dmask_acc, 1);
  if (a.dmask != nullptr && h == 0 && key_live) a.dmask[n0 + warp * 16 + r] = dmask_acc;
  dV_acc.store_rows(a.dv, n0 + warp * 16, Nk, d, 1.f);
  dK_acc.store_rows(a.dk, n0 + warp * 16, Nk, d, prm.scale);
}

template <typename T, int D>
__global__ void __launch_bounds__(AttnCfg<T, D>::DQ_THREADS)
    attn_bwd_dq_kernel(const AttnBwdParams prm, int64_t n_qblocks) {
  using Cfg = AttnCfg<T, D>;  // float32 only (static_assert there)
  using Smem = typename Cfg::DqSmem;
  constexpr int BM = Cfg::DQ_BM, BN = Cfg::DQ_BN, LDT = Smem::LDT, LDS = Smem::LDS;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem sm(smem);  // s[0]: dS  [BM, LDS] (rows: queries, columns: keys)

  const int64_t Nq = prm.Nq, Nk = prm.Nk;
  const int d = prm.d;
  const int64_t m0 = (blockIdx.x % n_qblocks) * BM;
  const attn_bwd::HeadArrays<T> a(prm, blockIdx.x / n_qblocks);
  const int warp = threadIdx.x >> 5;

  load_rows<T, BM, D, LDT>(sm.q, a.q, m0, Nq, d, prm.vec16);
  load_rows<T, BM, D, LDT>(sm.dout, a.dout, m0, Nq, d, prm.vec16);
  load_row_stats<BM>(sm.lse, sm.delta, a.lse, a.delta, m0, Nq);
  WarpTile<T, D> dQ_acc;
  dQ_acc.zero();
  const T* sQw = sm.q + warp * 16 * LDT;
  const T* sdOw = sm.dout + warp * 16 * LDT;
  float* sdSw = sm.s[0] + warp * 16 * LDS;
  // element (i, j) of a lane's [16 x N] WarpTile is row r0 + i, column c0 + 16 j of the tile
  const int r0 = dQ_acc.row0(), c0 = dQ_acc.col0();
  const int m_live = Nq - m0 < BM ? static_cast<int>(Nq - m0) : BM;

  for (int64_t n0 = 0; n0 < Nk; n0 += BN) {
    __syncthreads();  // the previous key tile is consumed (first pass: nothing to wait for)
    load_rows<T, BN, D, LDT>(sm.k, a.k, n0, Nk, d, prm.vec16);
    load_rows<T, BN, D, LDT>(sm.v, a.v, n0, Nk, d, prm.vec16);
    load_mask_tile<BN>(sm.mask, a.mask, n0, Nk);
    __syncthreads();  // also, on the first pass, sm.q, sm.dout, sm.lse and sm.delta
    WarpTile<T, BN> s, dp;
    s.zero();
    s.template mma<D, false, true>(sQw, LDT, sm.k, LDT);  // S_w = Q_w K^T  [16 x BN]
    dp.zero();
    dp.template mma<D, false, true>(sdOw, LDT, sm.v, LDT);  // dP_w = dO_w V^T  [16 x BN]
    const int n_live = Nk - n0 < BN ? static_cast<int>(Nk - n0) : BN;
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // s becomes dS_w
      const int row = warp * 16 + r0 + i;
      const float L = sm.lse[row], De = sm.delta[row];
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        const int col = c0 + 16 * j;
        const bool live = row < m_live && col < n_live;
        s.c[i][j] = prob_grad(s.c[i][j], dp.c[i][j], sm.mask[col], L, De, prm.scale_log2, live).ds;
      }
    }
    s.store(sdSw, LDS);
    __syncwarp();
    dQ_acc.template mma<BN, false, false>(sdSw, LDS, sm.k, LDT);  // dQ_w += dS_w K  [16 x D]
  }
  dQ_acc.store_rows(a.dq, m0 + warp * 16, Nq, d, prm.scale);
}

// The two float32 kernels for prm (a launch each, dK / dV first), with the grids' checks
// naming q (dQ's grid) and k (dK / dV's).
void launch_attn_bwd_float(const char* where, const at::Tensor& q, const at::Tensor& k, const AttnBwdParams& prm) {
  dispatch_head_dim(where, prm.d, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    using Cfg = AttnCfg<float, D>;
    const int64_t n_kblocks = (prm.Nk + Cfg::BWD_BN - 1) / Cfg::BWD_BN;
    const int64_t n_qblocks = (prm.Nq + Cfg::DQ_BM - 1) / Cfg::DQ_BM;
    launch_with_smem(where, k, attn_bwd_dkdv_kernel<float, D>, prm.BH * n_kblocks, Cfg::BWD_THREADS, Cfg::BWD_SMEM, prm,
                     n_kblocks);
    launch_with_smem(where, q, attn_bwd_dq_kernel<float, D>, prm.BH * n_qblocks, Cfg::DQ_THREADS, Cfg::DQ_SMEM, prm,
                     n_qblocks);
  });
}

// The launch shapes of this file's kernels, recorded at library load for the resource test.
bool record_launch_shapes() {
  record_kernel_smem("attn_delta_kernel<float>", kDeltaThreads, 0);
  record_kernel_smem("attn_delta_kernel<__half>", kDeltaThreads, 0);
  record_kernel_smem("attn_delta_kernel<__nv_bfloat16>", kDeltaThreads, 0);
  for (const int d : {32, 64, 128}) {  // every head-dim instantiation dispatch_head_dim launches
    dispatch_head_dim("record_launch_shapes", d, [](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cfg = AttnCfg<float, D>;
      const std::string args = "<float, " + std::to_string(D) + ">";
      record_kernel_smem(("attn_bwd_dkdv_kernel" + args).c_str(), Cfg::BWD_THREADS, Cfg::BWD_SMEM);
      record_kernel_smem(("attn_bwd_dq_kernel" + args).c_str(), Cfg::DQ_THREADS, Cfg::DQ_SMEM);
    });
  }
  return true;
}
[[maybe_unused]] const bool kLaunchShapesRecorded = record_launch_shapes();

#ifndef PDNET_CUDA_EMULATION

// delta (into prm.delta), then the gradient kernels of the storage type T
template <typename T>
void launch_backward(const char* where, const at::Tensor& q, const at::Tensor& k, const at::Tensor& dout,
                     const at::Tensor& out, const float* dlse, float* delta, const AttnBwdParams& prm) {
  const int64_t rows = prm.BH * prm.Nq;
  const int64_t delta_blocks = std::min<int64_t>((rows + kDeltaThreads / 32 - 1) / (kDeltaThreads / 32), 65535LL * 32);
  attn_delta_kernel<T><<<static_cast<unsigned>(delta_blocks), kDeltaThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const T*>(dout.const_data_ptr()), static_cast<const T*>(out.const_data_ptr()), dlse, delta, rows,
      prm.d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if constexpr (std::is_same<T, float>::value) {
    launch_attn_bwd_float(where, q, k, prm);
  } else {
    launch_attn_bwd_mma<T>(where, q, prm);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> part_attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& key_mask, bool key_mask_grad) {
  const char* where = "pdnet::part_attention_backward (CUDA)";
  detail::check_part_attention_backward(where, grad_out, grad_lse, q, k, v, out, lse, key_mask);
  check_cuda_dtype(where, q);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), p = q.size(1), Nq = q.size(2), Nk = k.size(2), d = q.size(3);
  const bool want_dmask = key_mask_grad && key_mask.has_value();
  const auto fopts = q.options().dtype(at::kFloat);
  at::Tensor dq = at::empty({B, p, Nq, d}, q.options());
  at::Tensor dk = at::empty({B, p, Nk, d}, q.options());
  at::Tensor dv = at::empty({B, p, Nk, d}, q.options());
  at::Tensor dmask = want_dmask ? at::empty({B, p, Nk}, fopts) : at::empty({0}, fopts);
  const auto mask_dtype = key_mask.has_value() ? key_mask->scalar_type() : at::kFloat;
  if (B * p * Nq == 0 || Nk == 0) {  // no query (or no key): every gradient is zero
    dq.zero_();
    dk.zero_();
    dv.zero_();
    dmask.zero_();
  } else {
    const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    const at::Tensor oc = out.to(q.scalar_type()).contiguous();
    const at::Tensor doc = grad_out.to(q.scalar_type()).contiguous();
    const at::Tensor lc = lse.to(at::kFloat).contiguous();
    at::Tensor dlc, mc;
    if (grad_lse.has_value()) dlc = grad_lse->to(at::kFloat).contiguous();
    if (key_mask.has_value()) mc = key_mask->to(at::kFloat).contiguous();
    at::Tensor delta = at::empty({B, p, Nq}, fopts);
    AttnBwdParams prm{};
    prm.q = qc.const_data_ptr();
    prm.k = kc.const_data_ptr();
    prm.v = vc.const_data_ptr();
    prm.mask = mc.defined() ? mc.const_data_ptr<float>() : nullptr;
    prm.dout = doc.const_data_ptr();
    prm.lse = lc.const_data_ptr<float>();
    prm.delta = delta.mutable_data_ptr<float>();
    prm.dq = dq.mutable_data_ptr();
    prm.dk = dk.mutable_data_ptr();
    prm.dv = dv.mutable_data_ptr();
    prm.dmask = want_dmask ? dmask.mutable_data_ptr<float>() : nullptr;
    prm.BH = B * p;
    prm.Nq = Nq;
    prm.Nk = Nk;
    prm.d = static_cast<int>(d);
    prm.scale = static_cast<float>(scale);
    prm.scale_log2 = static_cast<float>(scale) * kLog2e;
    // d == D of its instantiation (d rounded up to 32, 64 or 128) exactly when d is one of them
    prm.vec16 = (d == 32 || d == 64 || d == 128) && aligned16(qc, kc, vc, doc);
    const float* dlse = dlc.defined() ? dlc.const_data_ptr<float>() : nullptr;
    PDNET_DISPATCH_CUDA_TYPES(qc.scalar_type(), "part_attention_backward_cuda", [&] {
      launch_backward<device_t<scalar_t>>(where, qc, kc, doc, oc, dlse, delta.mutable_data_ptr<float>(), prm);
    });
  }
  return {dq, dk, dv, want_dmask ? dmask.to(mask_dtype) : dmask};
}

#endif  // PDNET_CUDA_EMULATION

}  // namespace

#ifndef PDNET_CUDA_EMULATION
TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("part_attention_backward", &part_attention_backward_cuda);
}
#endif

}  // namespace pdnet::ops
