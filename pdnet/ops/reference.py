"""Pure-PyTorch reference implementations of the hot-path ops.

These are the oracle for every kernel backend, the fallback when no kernel is
available for a device, the baseline in the benchmarks, and the formulas whose
derivatives give the kernel backends' gradients of second and higher order
(:mod:`pdnet.ops._higher_order`). They follow the contracts documented in
:mod:`pdnet.ops` (fully masked attention rows included), assume inputs were
validated by :mod:`pdnet.ops._checks`, and favour clarity over speed.
"""
from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernel backends: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Softmax(torch.autograd.Function):
    """(weights, lse) of score rows [..., Nk]: softmax over the last dim and the
    natural-log log-sum-exp (in ``acc``; an empty tensor unless ``with_lse``), with
    weights 0 and lse -inf on rows whose scores are all -inf (no live key).

    The backward is the softmax's, dS = W (dW - sum(dW W) + dlse), on every row: on a
    row without a live key it is 0 times those terms (NaN where they are not finite),
    as the kernels' backward computes it. It is made of differentiable ops on the saved
    weights (an output of this function), so gradients of every order are exact.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(scores, with_lse, acc):
        row_max = scores.amax(-1, keepdim=True)  # [..., 1]; NaN stays NaN
        dead = row_max == float("-inf")  # [..., 1]: no live key
        weights = torch.softmax(scores, dim=-1).masked_fill_(dead, 0.0)  # [..., Nk]; dead rows were NaN
        if not with_lse:
            return weights, scores.new_empty((0,), dtype=acc)
        m = row_max.masked_fill(dead, 0.0).to(acc)  # [..., 1]; +inf gives NaN below, as in the kernels
        lse = m + torch.log(torch.exp(scores.to(acc) - m).sum(-1, keepdim=True))  # [..., 1]
        return weights, lse.masked_fill(dead, float("-inf")).squeeze(-1)  # [...]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[0])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_weights, grad_lse):
        (weights,) = ctx.saved_tensors
        grad = torch.zeros_like(weights) if grad_weights is None else grad_weights
        # torch's softmax backward, W (dW - sum(dW W)), itself differentiable
        grad_scores = torch._softmax_backward_data(grad, weights, -1, weights.dtype)
        if grad_lse is not None and grad_lse.numel():
            grad_scores = grad_scores + weights * grad_lse.unsqueeze(-1).to(weights.dtype)
        return grad_scores, None, None


def part_attention(
    q: torch.Tensor,  # [B, p, Nq, d]
    k: torch.Tensor,  # [B, p, Nk, d]
    v: torch.Tensor,  # [B, p, Nk, d]
    scale: float = 1.0,
    key_mask: torch.Tensor | None = None,  # [B, p, Nk], additive
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax_keys(q k^T * scale + key_mask) v, independently for every part.

    A query row whose scores are all -inf has attention weights 0 (out = 0 v) and
    lse = -inf, and its scores' gradient is 0 times the softmax backward's terms (0
    unless those are not finite); torch's softmax would give NaN there. With
    ``return_lse``, also the natural-log log-sum-exp of the scores [B, p, Nq] in the
    accumulation dtype. Differentiable at any order.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, p, Nq, Nk]
    if key_mask is not None:
        scores = scores + key_mask.unsqueeze(-2).to(scores.dtype)  # [B, p, Nq, Nk]
    if scores.numel() == 0:  # no query (a row max needs a key): empty results
        out = torch.matmul(scores, v)  # [B, p, Nq, d]
        return (out, scores.new_empty(scores.shape[:3], dtype=acc_dtype(q.dtype))) if return_lse else out
    weights, lse = _Softmax.apply(scores, return_lse, acc_dtype(q.dtype))  # [B, p, Nq, Nk], [B, p, Nq]
    out = torch.matmul(weights, v)  # [B, p, Nq, d]
    return (out, lse) if return_lse else out


def part_masks(
    part_logits: torch.Tensor,  # [B, p, h, w]
    gate: torch.Tensor,  # [B, 1, h, w]
    gate_is_logit: bool = True,
) -> torch.Tensor:
    """softmax over parts of ``part_logits`` times sigmoid(gate) (or gate itself)."""
    probs = torch.softmax(part_logits, dim=1)  # [B, p, h, w]
    g = torch.sigmoid(gate) if gate_is_logit else gate  # [B, 1, h, w]
    return probs * g  # [B, p, h, w]


def assemble_parts(
    p_feats: torch.Tensor,  # [B, p, C, h, w]
    y_feats: torch.Tensor,  # [B, p, C, h, w]
    masks: torch.Tensor,  # [B, p, h, w]
) -> torch.Tensor:
    """sum_k (P^k + Y^k) * R^k."""
    return ((p_feats + y_feats) * masks.unsqueeze(2)).sum(dim=1)  # [B, C, h, w]


#: floor of the areas' L2 norm in the area-variance loss
AREA_NORM_EPS = 1e-12


def area_variance(x: torch.Tensor) -> torch.Tensor:  # x: [B, p, H, W]
    """Area-variance loss (paper eq. 3-4): :func:`area_variance_of_areas` of the part
    areas a_k = sum_hw x_k."""
    return area_variance_of_areas(x.sum(dim=(2, 3)))  # areas [B, p]


def area_variance_of_areas(area: torch.Tensor) -> torch.Tensor:  # area: [B, p]
    """a = a / max(||a||_2, 1e-12), unbiased variance over parts, mean over the batch.

    With a single part the variance is defined as 0 (the unbiased estimator would
    divide by zero).
    """
    if area.shape[1] < 2:
        return area.sum() * 0.0
    area = area / area.norm(dim=1, keepdim=True).clamp_min(AREA_NORM_EPS)  # [B, p]
    return area.var(dim=1, unbiased=True).mean()  # []
