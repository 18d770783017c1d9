// CUDA backward of pdnet::part_attention (the op pdnet::part_attention_backward).
//
// 1. attn_delta_kernel: delta = rowsum(dO * O) - dlse, one warp per query row.
// 2. attn_bwd_kernel, one block = one head x BN keys; NW = BN / 16 warps, warp w owns
//    keys 16w .. 16w+15, whose dK, dV accumulate in registers (WarpTile) over every
//    query tile of BM rows:
//      S^T_w = K_w Q^T, dP^T_w = V_w dO^T (tensor cores for float16 / bfloat16),
//      P^T = exp2(S^T * scale * log2 e + mask - lse * log2 e) (0 for rows whose keys are
//      all masked: lse = -inf; NaN for NaN rows: lse = NaN), dS^T = P^T (dP^T - delta)
//      (both exactly 0 on the padding past Nq and Nk),
//      dV_w += P^T_w dO, dK_w += dS^T_w Q, dmask_w += row sums of dS^T_w,
//      dQ += scale * dS K (the block's slice of keys; atomicAdd into a float32 buffer).
//    dK is scaled by `scale` at the end; dK, dV and dmask are owned by one block each.
//    dQ sums float atomics in an unspecified order: it is not bitwise reproducible, and
//    torch.use_deterministic_algorithms(True) is told so (alertNotDeterministic).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../common.h"
#include "../ops.h"
#include "attention_tiles.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

constexpr int kDeltaThreads = 256;  // 8 rows per block

template <typename T>
__global__ void attn_delta_kernel(const T* __restrict__ dout,    // [rows, d]
                                  const T* __restrict__ out,     // [rows, d]
                                  const float* __restrict__ dlse,  // [rows] or nullptr
                                  float* __restrict__ delta,     // [rows]
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

// dst[n0 + j] = acc's row j * scale for the BN keys of the block (those below Nk), through the
// float staging tile stage [BN, LDD] (every warp stores its 16 rows, then the block writes).
// x * 1.f is x exactly, so scale 1 writes the accumulator as it is.
template <typename T, int D, int BN>
__device__ __forceinline__ void store_key_rows(const WarpTile<T, D>& acc, float* stage, T* dst, int64_t n0, int64_t Nk,
                                               int d, float scale) {
  constexpr int LDD = AttnCfg<T, D>::LDD;
  const int warp = threadIdx.x >> 5;
  __syncthreads();  // the staging tile's memory is free
  acc.store(stage + warp * 16 * LDD, LDD);
  __syncthreads();
  for (int idx = threadIdx.x; idx < BN * d; idx += blockDim.x) {
    const int j = idx / d, c = idx - j * d;
    const int64_t key = n0 + j;
    if (key < Nk) dst[key * d + c] = from_float<T>(stage[j * LDD + c] * scale);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(AttnCfg<T, D>::BWD_BN * 2)
    attn_bwd_kernel(const T* __restrict__ q,          // [BH, Nq, d]
                    const T* __restrict__ k,          // [BH, Nk, d]
                    const T* __restrict__ v,          // [BH, Nk, d]
                    const float* __restrict__ mask,   // [BH, Nk] or nullptr
                    const T* __restrict__ dout,       // [BH, Nq, d]
                    const float* __restrict__ lse,    // [BH, Nq]
                    const float* __restrict__ delta,  // [BH, Nq]
                    float* __restrict__ dq_acc,       // [BH, Nq, d] zero-initialised
                    T* __restrict__ dk,               // [BH, Nk, d]
                    T* __restrict__ dv,               // [BH, Nk, d]
                    float* __restrict__ dmask,        // [BH, Nk] or nullptr
                    int64_t Nq, int64_t Nk, int d, float scale, float scale_log2, int64_t n_kblocks, bool vec16) {
  using Cfg = AttnCfg<T, D>;
  constexpr int BN = Cfg::BWD_BN, BM = Cfg::BWD_BM, NW = BN / 16;
  constexpr int LDT = Cfg::LDT, LDS = Cfg::BWD_LDS, LDP = Cfg::BWD_LDP, LDD = Cfg::LDD;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem + Cfg::BWD_K);             // [BN, LDT]
  T* sV = reinterpret_cast<T*>(smem + Cfg::BWD_V);             // [BN, LDT]
  T* sQ = reinterpret_cast<T*>(smem + Cfg::BWD_Q);             // [BM, LDT]
  T* sdO = reinterpret_cast<T*>(smem + Cfg::BWD_DO);           // [BM, LDT]
  float* sS = reinterpret_cast<float*>(smem + Cfg::BWD_S);     // [BN, LDS] S^T
  float* sdP = reinterpret_cast<float*>(smem + Cfg::BWD_DP);   // [BN, LDS] dP^T
  T* sPT = Cfg::kMma ? reinterpret_cast<T*>(smem + Cfg::BWD_PT) : reinterpret_cast<T*>(sS);     // [BN, LDP]
  T* sdST = Cfg::kMma ? reinterpret_cast<T*>(smem + Cfg::BWD_DST) : reinterpret_cast<T*>(sdP);  // [BN, LDP]
  float* sdQ = reinterpret_cast<float*>(smem + Cfg::BWD_DQ);        // [BM, LDD]
  float* sLse = reinterpret_cast<float*>(smem + Cfg::BWD_LSE);      // [BM] lse * log2 e, +inf: no key
  float* sDelta = reinterpret_cast<float*>(smem + Cfg::BWD_DELTA);  // [BM]
  float* sMask = reinterpret_cast<float*>(smem + Cfg::BWD_MASK);    // [BN] mask * log2 e

  const int64_t bh = blockIdx.x / n_kblocks;
  const int64_t n0 = (blockIdx.x % n_kblocks) * BN;
  offset_all(bh * Nq * d, q, dout, dq_acc);
  offset_all(bh * Nk * d, k, v, dk, dv);
  offset_all(bh * Nq, lse, delta);
  if (mask != nullptr) mask += bh * Nk;
  if (dmask != nullptr) dmask += bh * Nk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, h = lane & 1;  // two lanes per key row of the warp

  load_rows<T, BN, D, LDT>(sK, k, n0, Nk, d, vec16);
  load_rows<T, BN, D, LDT>(sV, v, n0, Nk, d, vec16);
  load_mask_tile<BN>(sMask, mask, n0, Nk);
  WarpTile<T, D> dK_acc, dV_acc;
  dK_acc.zero();
  dV_acc.zero();
  float dmask_acc = 0.f;
  const T* sKw = sK + warp * 16 * LDT;
  const T* sVw = sV + warp * 16 * LDT;

  for (int64_t m0 = 0; m0 < Nq; m0 += BM) {
    __syncthreads();  // the previous query tile is consumed (first pass: sK, sV, sMask loaded)
    load_rows<T, BM, D, LDT>(sQ, q, m0, Nq, d, vec16);
    load_rows<T, BM, D, LDT>(sdO, dout, m0, Nq, d, vec16);
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
      const int64_t row = m0 + i;
      const float L = row < Nq ? lse[row] : -INFINITY;
      sLse[i] = L == -INFINITY ? INFINITY : L * kLog2e;  // +inf makes P = 0
      sDelta[i] = row < Nq ? delta[row] : 0.f;
    }
    __syncthreads();
    {  // S^T_w = K_w Q^T  [16 x BM]
      WarpTile<T, BM> t;
      t.zero();
      t.template mma<D, false, true>(sKw, LDT, sQ, LDT);
      t.store(sS + warp * 16 * LDS, LDS);
    }
    {  // dP^T_w = V_w dO^T  [16 x BM]
      WarpTile<T, BM> t;
      t.zero();
      t.template mma<D, false, true>(sVw, LDT, sdO, LDT);
      t.store(sdP + warp * 16 * LDS, LDS);
    }
    __syncwarp();
    {
      const float mk = sMask[warp * 16 + r];
      const float* srow = sS + (warp * 16 + r) * LDS;
      const float* dprow = sdP + (warp * 16 + r) * LDS;
      T* ptrow = sPT + (warp * 16 + r) * LDP;    // float32: in place of srow (same lane)
      T* dstrow = sdST + (warp * 16 + r) * LDP;  // float32: in place of dprow
      // padding (keys past Nk, queries past Nq) gives exactly 0, even next to a NaN or inf
      const bool key_live = n0 + warp * 16 + r < Nk;
      const int m_live = Nq - m0 < BM ? static_cast<int>(Nq - m0) : BM;
      for (int i = h; i < BM; i += 2) {
        const bool live = key_live && i < m_live;
        const float pv = live ? exp2f(fmaf(srow[i], scale_log2, mk) - sLse[i]) : 0.f;
        const float ds = live ? pv * (dprow[i] - sDelta[i]) : 0.f;
        ptrow[i] = from_float<T>(pv);
        dstrow[i] = from_float<T>(ds);
        dmask_acc += ds;
      }
    }
    __syncwarp();
    dV_acc.template mma<BM, false, false>(sPT + warp * 16 * LDP, LDP, sdO, LDT);   // += P^T_w dO
    dK_acc.template mma<BM, false, false>(sdST + warp * 16 * LDP, LDP, sQ, LDT);  // += dS^T_w Q
    __syncthreads();  // every warp's rows of dS^T are written
    for (int slab = warp; slab < BM / 16; slab += NW) {  // dQ rows 16 slab .. : dS K
      WarpTile<T, D> t;
      t.zero();
      t.template mma<BN, true, false>(sdST + slab * 16, LDP, sK, LDT);
      t.store(sdQ + slab * 16 * LDD, LDD);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < BM * d; idx += blockDim.x) {
      const int i = idx / d, c = idx - i * d;
      const int64_t row = m0 + i;
      if (row < Nq) atomicAdd(dq_acc + row * d + c, sdQ[i * LDD + c] * scale);
    }
  }

  dmask_acc += __shfl_xor_sync(0xffffffffu, dmask_acc, 1);
  if (dmask != nullptr && h == 0) {
    const int64_t key = n0 + warp * 16 + r;
    if (key < Nk) dmask[key] = dmask_acc;
  }
  // epilogue: dV, then dK, through a float staging tile at the start of smem
  float* stage = reinterpret_cast<float*>(smem);
  store_key_rows<T, D, BN>(dV_acc, stage, dv, n0, Nk, d, 1.f);
  store_key_rows<T, D, BN>(dK_acc, stage, dk, n0, Nk, d, scale);
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
  const int64_t BH = B * p;
  const bool want_dmask = key_mask_grad && key_mask.has_value();
  const auto fopts = q.options().dtype(at::kFloat);
  at::Tensor dk = at::empty({B, p, Nk, d}, q.options());
  at::Tensor dv = at::empty({B, p, Nk, d}, q.options());
  at::Tensor dmask = want_dmask ? at::empty({B, p, Nk}, fopts) : at::empty({0}, fopts);
  at::Tensor dq_acc = at::zeros({B, p, Nq, d}, fopts);
  const auto mask_dtype = key_mask.has_value() ? key_mask->scalar_type() : at::kFloat;
  if (BH * Nq == 0 || Nk == 0) {  // no query (or no key): every gradient is zero
    dk.zero_();
    dv.zero_();
    dmask.zero_();
    return {dq_acc.to(q.scalar_type()), dk, dv, want_dmask ? dmask.to(mask_dtype) : dmask};
  }
  // dq: atomicAdd from every key block of a head, in no fixed order
  at::globalContext().alertNotDeterministic("pdnet::part_attention_backward (CUDA)");
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor oc = out.to(q.scalar_type()).contiguous();
  const at::Tensor doc = grad_out.to(q.scalar_type()).contiguous();
  const at::Tensor lc = lse.to(at::kFloat).contiguous();
  at::Tensor dlc, mc;
  if (grad_lse.has_value()) dlc = grad_lse->to(at::kFloat).contiguous();
  if (key_mask.has_value()) mc = key_mask->to(at::kFloat).contiguous();
  at::Tensor delta = at::empty({B, p, Nq}, fopts);
  auto stream = at::cuda::getCurrentCUDAStream();
  PDNET_DISPATCH_CUDA_TYPES(qc.scalar_type(), "part_attention_backward_cuda", [&] {
    using T = device_t<scalar_t>;
    const int64_t rows = BH * Nq;
    const int64_t delta_blocks =
        std::min<int64_t>((rows + kDeltaThreads / 32 - 1) / (kDeltaThreads / 32), 65535LL * 32);
    attn_delta_kernel<T><<<static_cast<unsigned>(delta_blocks), kDeltaThreads, 0, stream>>>(
        dptr<scalar_t>(doc), dptr<scalar_t>(oc), dlc.defined() ? dlc.const_data_ptr<float>() : nullptr,
        delta.mutable_data_ptr<float>(), rows, static_cast<int>(d));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    dispatch_head_dim(where, d, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cfg = AttnCfg<T, D>;
      const bool vec16 = d == D && aligned16(qc, kc, vc, doc);
      const int64_t n_kblocks = (Nk + Cfg::BWD_BN - 1) / Cfg::BWD_BN;
      launch_with_smem(where, k, attn_bwd_kernel<T, D>, BH * n_kblocks, Cfg::BWD_BN * 2, Cfg::BWD_SMEM,
                       dptr<scalar_t>(qc), dptr<scalar_t>(kc), dptr<scalar_t>(vc),
                       mc.defined() ? mc.const_data_ptr<float>() : nullptr, dptr<scalar_t>(doc),
                       lc.const_data_ptr<float>(), delta.const_data_ptr<float>(), dq_acc.mutable_data_ptr<float>(),
                       mptr<scalar_t>(dk), mptr<scalar_t>(dv), want_dmask ? dmask.mutable_data_ptr<float>() : nullptr,
                       Nq, Nk, static_cast<int>(d), static_cast<float>(scale), static_cast<float>(scale) * kLog2e,
                       n_kblocks, vec16);
    });
  });
  return {dq_acc.to(q.scalar_type()), dk, dv, want_dmask ? dmask.to(mask_dtype) : dmask};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("part_attention_backward", &part_attention_backward_cuda);
}

}  // namespace pdnet::ops
