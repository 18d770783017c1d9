// CPU kernels of pdnet::part_attention and pdnet::part_attention_backward.
// float32 and float64 run natively; float16 / bfloat16 inputs are computed in float32
// and rounded back. The vectorised cores are in part_attention_vec.h.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../../cpu/parallel.h"
#include "../common.h"
#include "../ops.h"
#include "kernel_table.h"

namespace pdnet::ops {
namespace {

constexpr int64_t kQueryChunk = 96;  // query rows per forward work item
constexpr int64_t kKeyAlign = 192;   // key chunks of the backward are multiples of this

std::tuple<at::Tensor, at::Tensor> part_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      double scale, const std::optional<at::Tensor>& key_mask) {
  const char* where = "pdnet::part_attention (CPU)";
  detail::check_part_attention(where, q, k, v, key_mask);
  const auto work = detail::opmath_type(q.scalar_type());
  const int64_t B = q.size(0), p = q.size(1), Nq = q.size(2), Nk = k.size(2), d = q.size(3);
  const int64_t BH = B * p;
  const at::Tensor qc = q.to(work).contiguous();
  const at::Tensor kt = k.to(work).transpose(2, 3).contiguous();  // [B, p, d, Nk]
  const at::Tensor vc = v.to(work).contiguous();
  at::Tensor mc;
  if (key_mask.has_value()) mc = key_mask->to(work).contiguous();
  at::Tensor out = at::empty({B, p, Nq, d}, qc.options());
  at::Tensor lse = at::empty({B, p, Nq}, qc.options());
  if (BH == 0 || Nq == 0) return {out.to(q.scalar_type()), lse};

  AT_DISPATCH_FLOATING_TYPES(work, "part_attention_cpu", [&] {
    const auto& K = pdnet::cpu::kernels<scalar_t>();
    pdnet::cpu::AttnFwdArgs<scalar_t> a{qc.const_data_ptr<scalar_t>(),
                                        kt.const_data_ptr<scalar_t>(),
                                        vc.const_data_ptr<scalar_t>(),
                                        mc.defined() ? mc.const_data_ptr<scalar_t>() : nullptr,
                                        out.mutable_data_ptr<scalar_t>(),
                                        lse.mutable_data_ptr<scalar_t>(),
                                        Nq,
                                        Nk,
                                        d,
                                        static_cast<scalar_t>(scale)};
    const int64_t nqc = (Nq + kQueryChunk - 1) / kQueryChunk;
    pdnet::cpu::parallel_items(
        BH * nqc, [&] { return std::vector<scalar_t>(K.attention_scratch(d)); },
        [&](int64_t item, std::vector<scalar_t>& scratch) {
          const int64_t bh = item / nqc, qb = item % nqc;
          K.attention_forward(a, bh, qb * kQueryChunk, std::min(Nq, (qb + 1) * kQueryChunk), scratch.data());
        });
  });
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> part_attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& key_mask, bool key_mask_grad) {
  const char* where = "pdnet::part_attention_backward (CPU)";
  detail::check_part_attention_backward(where, grad_out, grad_lse, q, k, v, out, lse, key_mask);
  const auto work = detail::opmath_type(q.scalar_type());
  const int64_t B = q.size(0), p = q.size(1), Nq = q.size(2), Nk = k.size(2), d = q.size(3);
  const int64_t BH = B * p;
  const at::Tensor qc = q.to(work).contiguous();
  const at::Tensor kc = k.to(work).contiguous();
  const at::Tensor kt = kc.transpose(2, 3).contiguous();             // [B, p, d, Nk]
  const at::Tensor vt = v.to(work).transpose(2, 3).contiguous();     // [B, p, d, Nk]
  const at::Tensor oc = out.to(work).contiguous();
  const at::Tensor doc = grad_out.to(work).contiguous();
  const at::Tensor lc = lse.to(work).contiguous();
  at::Tensor dlc, mc;
  if (grad_lse.has_value()) dlc = grad_lse->to(work).contiguous();
  if (key_mask.has_value()) mc = key_mask->to(work).contiguous();
  const bool want_dmask = key_mask_grad && key_mask.has_value();

  at::Tensor dk = at::zeros({B, p, Nk, d}, qc.options());
  at::Tensor dv = at::zeros({B, p, Nk, d}, qc.options());
  at::Tensor dmask = want_dmask ? at::zeros({B, p, Nk}, qc.options()) : at::empty({0}, qc.options());
  at::Tensor dq;
  if (BH == 0 || Nq == 0 || Nk == 0) {
    dq = at::zeros({B, p, Nq, d}, qc.options());
  } else {
    // one work item = (head, key chunk); split the keys only when there are fewer heads
    // than threads, and then sum the per-chunk dq partials.
    const int64_t threads = at::get_num_threads();
    const int64_t max_split = (Nk + kKeyAlign - 1) / kKeyAlign;
    const int64_t nsplit = BH >= threads ? 1 : std::min(max_split, (threads + BH - 1) / BH);
    const int64_t chunk = ((Nk + nsplit - 1) / nsplit + kKeyAlign - 1) / kKeyAlign * kKeyAlign;
    at::Tensor dq_parts = at::zeros({nsplit, B, p, Nq, d}, qc.options());
    AT_DISPATCH_FLOATING_TYPES(work, "part_attention_backward_cpu", [&] {
      const auto& K = pdnet::cpu::kernels<scalar_t>();
      pdnet::cpu::AttnBwdArgs<scalar_t> a{qc.const_data_ptr<scalar_t>(),
                                          kc.const_data_ptr<scalar_t>(),
                                          kt.const_data_ptr<scalar_t>(),
                                          vt.const_data_ptr<scalar_t>(),
                                          mc.defined() ? mc.const_data_ptr<scalar_t>() : nullptr,
                                          oc.const_data_ptr<scalar_t>(),
                                          lc.const_data_ptr<scalar_t>(),
                                          doc.const_data_ptr<scalar_t>(),
                                          dlc.defined() ? dlc.const_data_ptr<scalar_t>() : nullptr,
                                          dk.mutable_data_ptr<scalar_t>(),
                                          dv.mutable_data_ptr<scalar_t>(),
                                          want_dmask ? dmask.mutable_data_ptr<scalar_t>() : nullptr,
                                          Nq,
                                          Nk,
                                          d,
                                          static_cast<scalar_t>(scale)};
      scalar_t* dqp = dq_parts.mutable_data_ptr<scalar_t>();
      pdnet::cpu::parallel_items(
          BH * nsplit, [&] { return std::vector<scalar_t>(K.attention_scratch(d)); },
          [&](int64_t item, std::vector<scalar_t>& scratch) {
            const int64_t bh = item / nsplit, s = item % nsplit;
            const int64_t k0 = s * chunk, k1 = std::min(Nk, k0 + chunk);
            if (k0 < k1) K.attention_backward(a, bh, k0, k1, dqp + (s * BH + bh) * Nq * d, scratch.data());
          });
    });
    dq = nsplit == 1 ? dq_parts.squeeze(0) : dq_parts.sum(0);
  }
  const auto dtype = q.scalar_type();
  if (want_dmask) dmask = dmask.to(key_mask->scalar_type());
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype), dmask};
}

}  // namespace

TORCH_LIBRARY_IMPL(pdnet, CPU, m) {
  m.impl("part_attention", &part_attention_cpu);
  m.impl("part_attention_backward", &part_attention_backward_cpu);
}

}  // namespace pdnet::ops
