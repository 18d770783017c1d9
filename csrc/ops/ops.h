// C++ API of pdnet's ops (namespace torch.ops.pdnet) and the input checks shared by
// the CPU and CUDA kernels.
//
// Each function calls the dispatcher, so it runs the CPU or CUDA kernel registered
// for its inputs. Autograd is registered from Python (pdnet/ops/_cpp_backend.py):
// from C++, call the backward ops explicitly.
//
// Shapes: B batch, p parts, Nq queries, Nk keys, d head dim, C channels, h x w pixels.
// "opmath" is float32 for float16 / bfloat16 / float32 inputs and float64 for float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pdnet::ops {

// out [B,p,Nq,d] = softmax_keys(q k^T * scale + key_mask) v; lse [B,p,Nq] (opmath) is the
// log-sum-exp of each score row (-inf for a row whose keys are all masked: its output is 0).
// q [B,p,Nq,d]; k, v [B,p,Nk,d]; key_mask [B,p,Nk] (additive, any float dtype) or none.
std::tuple<at::Tensor, at::Tensor> part_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  double scale, const std::optional<at::Tensor>& key_mask);

// Gradients (dq, dk, dv, dkey_mask) of part_attention. grad_lse (optional) is the
// gradient of lse. dkey_mask [B,p,Nk] (the dtype of key_mask) is the column sums of dS
// when key_mask_grad, else an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> part_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& key_mask, bool key_mask_grad);

// [B,p,h,w] = softmax over parts(part_logits [B,p,h,w]) * (sigmoid(gate) or gate) [B,1,h,w].
at::Tensor part_masks(const at::Tensor& part_logits, const at::Tensor& gate, bool gate_is_logit);

// (grad_part_logits [B,p,h,w], grad_gate [B,1,h,w], or empty unless gate_grad). masks is
// the forward's output for these inputs (kernels may use it instead of recomputing the
// softmax of part_logits).
std::tuple<at::Tensor, at::Tensor> part_masks_backward(const at::Tensor& grad_out, const at::Tensor& part_logits,
                                                       const at::Tensor& masks, const at::Tensor& gate,
                                                       bool gate_is_logit, bool gate_grad);

// [B,C,h,w] = sum_k (p_feats + y_feats)[:,k] * masks[:,k]; feats [B,p,C,h,w], masks [B,p,h,w].
at::Tensor assemble_parts(const at::Tensor& p_feats, const at::Tensor& y_feats, const at::Tensor& masks);

// (grad_feats [B,p,C,h,w], the gradient of both p_feats and y_feats, or empty unless
// feats_grad; grad_masks [B,p,h,w], or empty unless masks_grad).
std::tuple<at::Tensor, at::Tensor> assemble_parts_backward(const at::Tensor& grad_out, const at::Tensor& p_feats,
                                                           const at::Tensor& y_feats, const at::Tensor& masks,
                                                           bool feats_grad, bool masks_grad);

// (loss [] in x's dtype, areas [B,p] opmath = sum over pixels of x [B,p,H,W]).
std::tuple<at::Tensor, at::Tensor> area_variance(const at::Tensor& x);

// coef [B,p] (x's dtype) from grad_loss [] and the areas saved by the forward: the
// gradient of x is coef[b, k] at every pixel of (b, k), i.e. coef[:, :, None, None]
// expanded to x's shape.
at::Tensor area_variance_backward(const at::Tensor& grad_loss, const at::Tensor& x, const at::Tensor& areas);

namespace detail {

// Input checks (TORCH_CHECK with shapes and dtypes), called by every kernel. The backward
// checks include that the gradients the kernels read are on the device of the inputs: the
// dispatcher picks the CUDA kernel when any argument is on CUDA, and a gradient left on the
// CPU would be read from device code through a host pointer.
void check_part_attention(const char* where, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& key_mask);
void check_part_attention_backward(const char* where, const at::Tensor& grad_out,
                                   const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                   const std::optional<at::Tensor>& key_mask);
void check_part_masks(const char* where, const at::Tensor& part_logits, const at::Tensor& gate);
void check_part_masks_backward(const char* where, const at::Tensor& grad_out, const at::Tensor& part_logits,
                               const at::Tensor& masks, const at::Tensor& gate);
void check_assemble_parts(const char* where, const at::Tensor& p_feats, const at::Tensor& y_feats,
                          const at::Tensor& masks);
void check_assemble_parts_backward(const char* where, const at::Tensor& grad_out, const at::Tensor& p_feats,
                                   const at::Tensor& y_feats, const at::Tensor& masks);
void check_area_variance(const char* where, const at::Tensor& x);
void check_area_variance_backward(const char* where, const at::Tensor& grad_loss, const at::Tensor& x,
                                  const at::Tensor& areas);
void check_same_shape(const char* where, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref);

// The accumulation ("opmath") dtype of a floating dtype: float64 stays, the rest is float32.
at::ScalarType opmath_type(at::ScalarType t);

}  // namespace detail
}  // namespace pdnet::ops
