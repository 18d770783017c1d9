"""``area_variance``: the area-variance loss of part probabilities. Its contract, input
checks, and the registration of its kernels (fake kernels and one autograd formula for
the C++ op ``pdnet::area_variance`` and the Triton op ``pdnet_triton::area_variance``).

Both kernel ops return (loss, areas), the areas being the raw part areas (sums over
the pixels, not differentiable) saved for the backward, whose op returns one
coefficient per (batch element, part); the gradient of x is that coefficient at every
pixel. The Triton kernel computes the areas; the loss and the coefficients, functions
of the small [B, p] areas, are computed here with torch (:func:`_loss_gradient`).

Reference: :func:`pdnet.ops.reference.area_variance`; Triton: ``kernels/area_variance.py``;
C++: ``csrc/ops/area_variance.cpp`` (formula in ``area_variance_math.h``) with
``csrc/ops/cpu/`` and ``csrc/ops/cuda/``.
"""
from __future__ import annotations

import torch

from . import _checks, _library, _triton_backend, reference
from ._dispatch import resolve
from ._higher_order import backward_by_formula


def area_variance(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Area-variance loss of part probabilities (paper eq. 3-4).

    Args:
        x (Tensor[B, p, H, W]): non-negative part probabilities; float16, bfloat16,
            float32 or float64.
        backend (str): ``"auto"``, ``"reference"``, ``"cpp"`` (alias ``"cuda"``) or
            ``"triton"``; see :mod:`pdnet.ops`.

    Returns:
        Tensor[] in x's dtype: the mean over the batch of the unbiased variance over
        parts of the L2-normalised part areas a_k = sum_hw x_k (norm floored at 1e-12).

    Contract, the same in every backend:

    * dtypes: the kernels sum the areas and compute the loss in float32 (float64 for
      float64 inputs; the CPU kernels compute the loss in float64), the reference in
      the input's dtype.
    * p == 1: the loss is 0 (0 times the sum of the areas: NaN if one is not finite)
      with zero gradient.
    * NaN and inf propagate as in the reference formula, in the loss and the gradient.
    * Empty inputs: B == 0 gives NaN (the mean of nothing) for p >= 2; H * W == 0
      gives zero areas, hence loss 0.
    * Gradient with respect to x: one value per (batch element, part), returned as an
      expanded [B, p, H, W] view (as torch's sum backward). The kernel backends save
      (x, areas) for the backward. Gradients of every order are exact: a backward with
      ``create_graph=True`` differentiates the reference formula.
    * Triton only: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).
    """
    _checks.check_area_variance(x)
    return resolve("area_variance", backend, x.device)(x)


# --------------------------------------------------------------------------- kernel backends
def _loss_gradient(grad_loss: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """d(grad_loss * loss) / d area [B, p] of :func:`reference.area_variance_of_areas`.

    With n = max(||a||, eps), ah = a / n and gv = 2 (ah - mean(ah)) / (p - 1) (the
    gradient of the variance with respect to ah), the gradient of a batch element's
    variance is (gv - ah <gv, ah>) / n while the norm is above eps, and gv / eps below
    (the floor is a constant); the loss averages over the batch.
    """
    B, p = area.shape
    if p < 2:
        return torch.zeros_like(area)
    norm = torch.linalg.vector_norm(area, dim=1, keepdim=True)  # [B, 1]
    live = ~(norm < reference.AREA_NORM_EPS)  # NaN counts as live, as in the clamp
    n = torch.where(live, norm, reference.AREA_NORM_EPS)  # [B, 1]
    ah = area / n  # [B, p]
    gv = 2.0 * (ah - ah.mean(dim=1, keepdim=True)) / (p - 1)  # [B, p]
    dot = (gv * ah).sum(dim=1, keepdim=True)  # [B, 1]
    return grad_loss.to(area.dtype) / B * torch.where(live, gv - ah * dot, gv) / n


def _triton_forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [] in x's dtype, areas [B, p] in the accumulation dtype)."""
    areas = _triton_backend.kernels.area_variance.area_sums(x)  # [B, p]
    return reference.area_variance_of_areas(areas).to(x.dtype), areas


def _triton_backward(grad_loss: torch.Tensor, x: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """coefficients [B, p] in x's dtype: the gradient of x at every pixel of (b, k)."""
    return _loss_gradient(grad_loss, areas).to(x.dtype)


def _fake(x):
    B, p = x.shape[:2]
    return x.new_empty(()), x.new_empty((B, p), dtype=reference.acc_dtype(x.dtype))


def _backward_fake(grad_loss, x, areas):
    return x.new_empty(x.shape[:2])


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    loss, areas = output
    ctx.mark_non_differentiable(areas)
    ctx.save_for_backward(x, areas)


def _autograd(backward_op):
    def backward(ctx, grad_loss, grad_areas):
        x, areas = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, exact at any order
            return backward_by_formula(reference.area_variance, (x,), (grad_loss,), ctx.needs_input_grad)[0]
        coefficients = backward_op(grad_loss, x, areas)  # [B, p]
        return coefficients[:, :, None, None].expand(x.shape)  # one value per (b, part), as sum's backward

    return backward


def _loss_only(op):
    """The op (which returns (loss, areas)) with the reference's arguments and result."""

    def area_variance(x):
        return op(x)[0]

    return area_variance


_library.register_op(
    "area_variance", _fake, _backward_fake, _setup_context, _autograd,
    triton=(_triton_forward, _triton_backward), adapt=_loss_only,
)
