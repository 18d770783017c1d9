"""``assemble_parts``: the correlation assembly. Its contract, input checks, and the
registration of its kernels (fake kernels and one autograd formula for the C++ op
``pdnet::assemble_parts`` and the Triton op ``pdnet_triton::assemble_parts``).

Reference: :func:`pdnet.ops.reference.assemble_parts`; Triton: ``kernels/assemble_parts.py``;
C++: ``csrc/ops/assemble_parts.cpp`` with ``csrc/ops/cpu/`` and ``csrc/ops/cuda/``.
"""
from __future__ import annotations

import torch

from . import _checks, _library, reference
from ._dispatch import resolve
from ._higher_order import backward_by_formula


def assemble_parts(
    p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Correlation assembly M = sum_k (P^k + Y^k) * R^k.

    Args:
        p_feats (Tensor[B, p, C, h, w]): part features P of the target frame; float16,
            bfloat16, float32 or float64.
        y_feats (Tensor[B, p, C, h, w]): attended features Y; P's dtype and device.
        masks (Tensor[B, p, h, w]): part masks R; P's dtype and device.
        backend (str): ``"auto"``, ``"reference"``, ``"cpp"`` (alias ``"cuda"``) or
            ``"triton"``; see :mod:`pdnet.ops`.

    Returns:
        Tensor[B, C, h, w] in P's dtype.

    Contract, the same in every backend:

    * dtypes: the kernels accumulate in float32 (float64 for float64 inputs), the
      reference in the inputs' dtype.
    * NaN and inf propagate as in the reference formula, in the output and in every
      gradient: 0 * inf is NaN (a zero mask over an infinite feature), inf - inf is
      NaN (opposite infinite P and Y).
    * Empty inputs: zero-size outputs and gradients; p == 0 gives a zero output.
    * Gradients with respect to all three inputs; the gradients of P and Y are equal
      and the kernel backends return one tensor for both. The kernel backends save
      (p_feats, y_feats, masks) for the backward, whose op computes only the gradients
      asked for. Gradients of every order are exact: a backward with
      ``create_graph=True`` differentiates the reference formula.
    * Triton only: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).
    """
    _checks.check_assemble_parts(p_feats, y_feats, masks)
    return resolve("assemble_parts", backend, p_feats.device)(p_feats, y_feats, masks)


# --------------------------------------------------------------------------- kernel backends
def _fake(p_feats, y_feats, masks):
    B, p, C, h, w = p_feats.shape
    return p_feats.new_empty((B, C, h, w))


def _backward_fake(grad_out, p_feats, y_feats, masks, feats_grad, masks_grad):
    grad_feats = p_feats.new_empty(p_feats.shape if feats_grad else (0,))
    grad_masks = masks.new_empty(masks.shape if masks_grad else (0,))
    return grad_feats, grad_masks


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _autograd(backward_op):
    def backward(ctx, grad_out):
        p_feats, y_feats, masks = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, exact at any order
            inputs = (p_feats, y_feats, masks)
            return backward_by_formula(reference.assemble_parts, inputs, (grad_out,), ctx.needs_input_grad)
        need_p, need_y, need_m = ctx.needs_input_grad[:3]
        grad_feats, grad_masks = backward_op(grad_out, p_feats, y_feats, masks, bool(need_p or need_y), bool(need_m))
        return (grad_feats if need_p else None), (grad_feats if need_y else None), (grad_masks if need_m else None)

    return backward


_library.register_op("assemble_parts", _fake, _backward_fake, _setup_context, _autograd)
