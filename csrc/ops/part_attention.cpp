// pdnet::part_attention: per-part cross-attention (parts act as heads), online softmax,
// never materialising the Nq x Nk scores. Schemas, C++ API and input checks; the
// kernels are in cpu/part_attention_kernel.cpp and cuda/part_attention_kernel.cu.
#include <torch/library.h>

#include "common.h"
#include "ops.h"

namespace pdnet::ops {

TORCH_LIBRARY_FRAGMENT(pdnet, m) {
  m.def(
      "part_attention(Tensor q, Tensor k, Tensor v, float scale, Tensor? key_mask) "
      "-> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "part_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, float scale, Tensor? key_mask, bool key_mask_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

std::tuple<at::Tensor, at::Tensor> part_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  double scale, const std::optional<at::Tensor>& key_mask) {
  static const auto op = detail::typed_op<decltype(part_attention)>("pdnet::part_attention");
  return op.call(q, k, v, scale, key_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> part_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& key_mask, bool key_mask_grad) {
  static const auto op = detail::typed_op<decltype(part_attention_backward)>("pdnet::part_attention_backward");
  return op.call(grad_out, grad_lse, q, k, v, out, lse, scale, key_mask, key_mask_grad);
}

namespace detail {

void check_part_attention(const char* where, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& key_mask) {
  check_float_rank(where, "q", q, 4, "(B, p, Nq, d)");
  check_float_rank(where, "k", k, 4, "(B, p, Nk, d)");
  check_float_rank(where, "v", v, 4, "(B, p, Nk, d)");
  check_like(where, "k", k, "q", q, true);
  check_like(where, "v", v, "q", q, true);
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), where,
              ": k must be (B, p, Nk, d) with B, p, d of q ", describe(q), ", got ", describe(k));
  check_same_shape(where, "v", v, "k", k);
  TORCH_CHECK(k.size(2) > 0 || q.size(2) == 0, where, ": k and v have no keys (Nk = 0) but q ", describe(q),
              " has queries");
  if (key_mask.has_value()) {
    const at::Tensor& m = *key_mask;
    check_float_rank(where, "key_mask", m, 3, "(B, p, Nk)");
    check_like(where, "key_mask", m, "q", q, false);
    TORCH_CHECK(m.size(0) == k.size(0) && m.size(1) == k.size(1) && m.size(2) == k.size(2), where,
                ": key_mask must be (B, p, Nk) = (", k.size(0), ", ", k.size(1), ", ", k.size(2), ") to match k ",
                describe(k), ", got ", describe(m));
  }
}

void check_part_attention_backward(const char* where, const at::Tensor& grad_out,
                                   const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                   const std::optional<at::Tensor>& key_mask) {
  check_part_attention(where, q, k, v, key_mask);
  check_float_rank(where, "out", out, 4, "(B, p, Nq, d)");
  check_same_shape(where, "out", out, "q", q);
  check_like(where, "out", out, "q", q, true);
  check_float_rank(where, "grad_out", grad_out, 4, "(B, p, Nq, d)");
  check_same_shape(where, "grad_out", grad_out, "q", q);
  check_like(where, "grad_out", grad_out, "q", q, false);
  check_float_rank(where, "lse", lse, 3, "(B, p, Nq)");
  check_like(where, "lse", lse, "q", q, false);
  TORCH_CHECK(lse.size(0) == q.size(0) && lse.size(1) == q.size(1) && lse.size(2) == q.size(2), where,
              ": lse must be (B, p, Nq) to match q ", describe(q), ", got ", describe(lse));
  if (grad_lse.has_value()) {
    check_float_rank(where, "grad_lse", *grad_lse, 3, "(B, p, Nq)");
    check_same_shape(where, "grad_lse", *grad_lse, "lse", lse);
    check_like(where, "grad_lse", *grad_lse, "q", q, false);
  }
}

}  // namespace detail
}  // namespace pdnet::ops
