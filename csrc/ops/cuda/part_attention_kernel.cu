// CUDA forward of pdnet::part_attention: tiled online softmax (flash-attention style), never
// materialising the Nq x Nk scores. float16 / bfloat16 run the tensor-core kernel of
// part_attention_fwd_mma.cuh; float32 runs attn_fwd_kernel below.
//
// attn_fwd_kernel (float32, FMA): one block = one head (b, part) x BM queries; NW = BM / 16
// warps, warp w owns query rows 16w .. 16w+15. Per key tile of BN keys, staged with the values
// in shared memory: S_w = Q_w K^T (WarpTile<float>), online softmax in the log2 domain (two
// lanes per row, running max m and sum l in registers), O_w = O_w * alpha + P_w V (O
// accumulated in float32 in shared memory).
// Epilogue: out = O / l, lse = (m + log2 l) * ln 2. A row whose scores are all -inf (every key
// masked) has attention weights 0 (the reference's softmax gives NaN there): out = 0 V (0 for
// finite V) and lse = -inf. NaN and inf propagate as in the reference: the running max keeps a
// NaN score (max_nan) and a +inf score gives exp2(inf - inf) = NaN, so the row's sum, output
// and lse are NaN (as in the CPU kernel).
// The backward is in part_attention_backward_kernel.cu.
#include <string>
#include <type_traits>

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
#include "part_attention_fwd_mma.cuh"

namespace pdnet::ops {
namespace {

using namespace pdnet::cuda;

// float32 only (T = float). At least 2 blocks per SM in __launch_bounds__ (255 registers at most):
// ptxas then allocates every D without a spill (with no minimum it spilled at sm_90, D = 32).
template <typename T, int D>
__global__ void __launch_bounds__(AttnCfg<T, D>::FWD_BM * 2, 2)
    attn_fwd_kernel(const T* __restrict__ q,        // [BH, Nq, d]
                    const T* __restrict__ k,        // [BH, Nk, d]
                    const T* __restrict__ v,        // [BH, Nk, d]
                    const float* __restrict__ mask, // [BH, Nk] additive, or nullptr
                    T* __restrict__ out,            // [BH, Nq, d]
                    float* __restrict__ lse,        // [BH, Nq]
                    int64_t Nq, int64_t Nk, int d, float scale_log2, int64_t n_qblocks, bool vec16) {
  using Cfg = AttnCfg<T, D>;
  constexpr int BM = Cfg::FWD_BM, BN = Cfg::FWD_BN;
  static_assert(std::is_same<T, float>::value, "attn_fwd_kernel: float32 (float16 / bfloat16: attn_fwd_mma_kernel)");
  constexpr int LDT = Cfg::LDT, LDS = Cfg::FWD_LDS, LDO = Cfg::LDD;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem + Cfg::FWD_Q);          // [BM, LDT]
  T* sK = reinterpret_cast<T*>(smem + Cfg::FWD_K);          // [BN, LDT]
  T* sV = reinterpret_cast<T*>(smem + Cfg::FWD_V);          // [BN, LDT]
  float* sS = reinterpret_cast<float*>(smem + Cfg::FWD_S);  // [BM, LDS] scores, then probabilities
  float* sO = reinterpret_cast<float*>(smem + Cfg::FWD_O);        // [BM, LDO] accumulator
  float* sMask = reinterpret_cast<float*>(smem + Cfg::FWD_MASK);  // [BN] mask * log2(e)
  float* sRow = reinterpret_cast<float*>(smem + Cfg::FWD_ROW);    // [BM] 1 / l

  const int64_t bh = blockIdx.x / n_qblocks;
  const int64_t m0 = (blockIdx.x % n_qblocks) * BM;
  offset_all(bh * Nq * d, q, out);
  offset_all(bh * Nk * d, k, v);
  lse += bh * Nq;
  if (mask != nullptr) mask += bh * Nk;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 1, h = lane & 1;  // two lanes per query row of the warp

  load_rows<T, BM, D, LDT>(sQ, q, m0, Nq, d, vec16);
  float* sOw = sO + warp * 16 * LDO;
  for (int i = lane; i < 16 * LDO; i += 32) sOw[i] = 0.f;
  float m_i = -INFINITY, l_i = 0.f;  // running max (log2 domain) and sum of the row

  for (int64_t n0 = 0; n0 < Nk; n0 += BN) {
    __syncthreads();  // the previous tile is consumed (first pass: sQ is loaded)
    load_rows<T, BN, D, LDT>(sK, k, n0, Nk, d, vec16);
    load_rows<T, BN, D, LDT>(sV, v, n0, Nk, d, vec16);
    load_mask_tile<BN>(sMask, mask, n0, Nk);
    __syncthreads();
    {  // S_w = Q_w K^T  [16 x BN]
      WarpTile<T, BN> st;
      st.zero();
      st.template mma<D, false, true>(sQ + warp * 16 * LDT, LDT, sK, LDT);
      st.store(sS + warp * 16 * LDS, LDS);
    }
    __syncwarp();
    float* srow = sS + (warp * 16 + r) * LDS;  // the row's scores, overwritten by its probabilities
    // scores in the log2 domain; keys past Nk are -inf even where q is not finite
    const int n_live = Nk - n0 < BN ? static_cast<int>(Nk - n0) : BN;
    auto score = [&](int c) { return c < n_live ? fmaf(srow[c], scale_log2, sMask[c]) : -INFINITY; };
    float mx = -INFINITY;
    for (int c = h; c < BN; c += 2) mx = max_nan(mx, score(c));
    mx = max_nan(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = max_nan(m_i, mx);  // NaN once a score is NaN: l, out, lse NaN
    float alpha = 1.f, sum = 0.f;
    if (m_new == -INFINITY) {  // every key so far is masked
      for (int c = h; c < BN; c += 2) srow[c] = 0.f;
    } else {
      alpha = exp2f(m_i - m_new);  // 0 on the first live tile
      for (int c = h; c < BN; c += 2) {
        const float pv = exp2f(score(c) - m_new);
        srow[c] = pv;  // score(c) was read just above, by this lane only
        sum += pv;
      }
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l_i = l_i * alpha + sum;
    m_i = m_new;
    if (alpha != 1.f) {
      float* orow = sOw + r * LDO;
      for (int c = h; c < D; c += 2) orow[c] *= alpha;
    }
    __syncwarp();
    {  // O_w += P_w V  [16 x D]
      WarpTile<T, D> ot;
      ot.load(sOw, LDO);
      ot.template mma<BN, false, false>(sS + warp * 16 * LDS, LDS, sV, LDT);
      ot.store(sOw, LDO);
    }
  }
  __syncwarp();
  if (h == 0) {
    const bool live = l_i != 0.f;  // 0 only when every key was masked; NaN stays NaN
    sRow[warp * 16 + r] = live ? 1.f / l_i : 0.f;
    const int64_t row = m0 + warp * 16 + r;
    if (row < Nq) lse[row] = live ? (m_i + log2f(l_i)) * kLn2 : -INFINITY;
  }
  __syncwarp();
  for (int idx = lane; idx < 16 * d; idx += 32) {
    const int rr = idx / d, c = idx - rr * d;
    const int64_t row = m0 + warp * 16 + rr;
    if (row < Nq) out[row * d + c] = from_float<T>(sOw[rr * LDO + c] * sRow[warp * 16 + rr]);
  }
}

// the launch shapes of attn_fwd_kernel<float, D> (kernel_smem.h)
template <int D>
bool record_attn_fwd_float() {
  using Cfg = AttnCfg<float, D>;
  const std::string name = "attn_fwd_kernel<float, " + std::to_string(D) + ">";
  record_kernel_smem(name.c_str(), Cfg::FWD_BM * 2, Cfg::FWD_SMEM);
  return true;
}
const bool kAttnFwdFloatRecorded =
    record_attn_fwd_float<32>() && record_attn_fwd_float<64>() && record_attn_fwd_float<128>();

#ifndef PDNET_CUDA_EMULATION
std::tuple<at::Tensor, at::Tensor> part_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       double scale, const std::optional<at::Tensor>& key_mask) {
  const char* where = "pdnet::part_attention (CUDA)";
  detail::check_part_attention(where, q, k, v, key_mask);
  check_cuda_dtype(where, q);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), p = q.size(1), Nq = q.size(2), Nk = k.size(2), d = q.size(3);
  const int64_t BH = B * p;
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  at::Tensor mc;
  if (key_mask.has_value()) mc = key_mask->to(at::kFloat).contiguous();
  at::Tensor out = at::empty({B, p, Nq, d}, qc.options());
  at::Tensor lse = at::empty({B, p, Nq}, qc.options().dtype(at::kFloat));
  if (BH * Nq == 0) return {out, lse};
  if (qc.scalar_type() == at::kFloat) {
    dispatch_head_dim(where, d, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cfg = AttnCfg<float, D>;
      const bool vec16 = d == D && aligned16(qc, kc, vc);
      const int64_t n_qblocks = (Nq + Cfg::FWD_BM - 1) / Cfg::FWD_BM;
      launch_with_smem(where, q, attn_fwd_kernel<float, D>, BH * n_qblocks, Cfg::FWD_BM * 2, Cfg::FWD_SMEM,
                       qc.const_data_ptr<float>(), kc.const_data_ptr<float>(), vc.const_data_ptr<float>(),
                       mc.defined() ? mc.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
                       lse.mutable_data_ptr<float>(), Nq, Nk, static_cast<int>(d), static_cast<float>(scale) * kLog2e,
                       n_qblocks, vec16);
    });
  } else {
    AttnFwdParams params{qc.const_data_ptr(),
                         kc.const_data_ptr(),
                         vc.const_data_ptr(),
                         mc.defined() ? mc.const_data_ptr<float>() : nullptr,
                         out.mutable_data_ptr(),
                         lse.mutable_data_ptr<float>(),
                         BH,
                         Nq,
                         Nk,
                         static_cast<int>(d),
                         static_cast<float>(scale) * kLog2e,
                         aligned16(qc, kc, vc, out)};  // the launcher also requires d == its D
    if (qc.scalar_type() == at::kHalf) {
      launch_attn_fwd_mma<__half>(where, q, params);
    } else {
      launch_attn_fwd_mma<__nv_bfloat16>(where, q, params);
    }
  }
  return {out, lse};
}
#endif  // PDNET_CUDA_EMULATION

}  // namespace

#ifndef PDNET_CUDA_EMULATION
TORCH_LIBRARY_IMPL(pdnet, CUDA, m) {
  m.impl("part_attention", &part_attention_cuda);
}
#endif  // PDNET_CUDA_EMULATION

}  // namespace pdnet::ops
