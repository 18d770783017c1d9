"""``part_masks`` and ``part_masks_gt``: part masks from part logits and a gate. Their
contract, input checks, and the registration of their kernels (fake kernels and one
autograd formula for the C++ op ``pdnet::part_masks`` and the Triton op
``pdnet_triton::part_masks``; the two functions are one op, ``gate_is_logit`` tells
them apart).

Reference: :func:`pdnet.ops.reference.part_masks`; Triton: ``kernels/part_masks.py``;
C++: ``csrc/ops/part_masks.cpp`` with ``csrc/ops/cpu/`` and ``csrc/ops/cuda/``.
"""
from __future__ import annotations

import torch

from . import _checks, _library, reference
from ._dispatch import resolve
from ._higher_order import backward_by_formula


def part_masks(part_logits: torch.Tensor, saliency_logit: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Part masks R = softmax over parts(D) * sigmoid(S).

    Args:
        part_logits (Tensor[B, p, h, w]): part logits D; float16, bfloat16, float32 or
            float64.
        saliency_logit (Tensor[B, 1, h, w]): saliency logit S; D's dtype and device.
        backend (str): ``"auto"``, ``"reference"``, ``"cpp"`` (alias ``"cuda"``) or
            ``"triton"``; see :mod:`pdnet.ops`.

    Returns:
        Tensor[B, p, h, w] in D's dtype.

    Contract, the same in every backend:

    * dtypes: the masks have the inputs' dtype; the kernels compute in float32
      (float64 for float64 inputs), the reference in the inputs' dtype.
    * NaN and inf propagate as in the reference formula, in the masks and in every
      gradient: a NaN logit gives NaN masks at its pixel; a +inf logit gives NaN at its
      pixel (inf - inf in the softmax); a pixel whose logits are all -inf is NaN.
    * Empty inputs (any dimension 0) give empty masks and zero-size gradients.
    * Gradients with respect to both inputs. The kernel backends save (part_logits,
      masks, gate) for the backward (a backend may recompute the softmax instead of
      reading masks). Gradients of every order are exact: a backward with
      ``create_graph=True`` differentiates the reference formula.
    * Triton only: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).
    """
    _checks.check_part_masks(part_logits, saliency_logit, "saliency_logit")
    return resolve("part_masks", backend, part_logits.device)(part_logits, saliency_logit, True)


def part_masks_gt(part_logits: torch.Tensor, mask: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Ground-truth variant of :func:`part_masks`: R = softmax over parts(D) * G.

    Args:
        part_logits (Tensor[B, p, h, w]): part logits D; float16, bfloat16, float32 or
            float64.
        mask (Tensor[B, 1, h, w]): ground-truth foreground G in [0, 1] (soft after
            resizing); D's dtype and device.
        backend (str): see :func:`part_masks`.

    Returns:
        Tensor[B, p, h, w] in D's dtype.

    Contract: as :func:`part_masks` (the same op, with the gate taken as it is).
    """
    _checks.check_part_masks(part_logits, mask, "mask")
    return resolve("part_masks", backend, part_logits.device)(part_logits, mask, False)


# --------------------------------------------------------------------------- kernel backends
def _fake(part_logits, gate, gate_is_logit):
    return part_logits.new_empty(part_logits.shape)


def _backward_fake(grad_out, part_logits, masks, gate, gate_is_logit, gate_grad):
    return part_logits.new_empty(part_logits.shape), gate.new_empty(gate.shape if gate_grad else (0,))


def _setup_context(ctx, inputs, output):
    part_logits, gate, gate_is_logit = inputs
    ctx.gate_is_logit = gate_is_logit
    ctx.save_for_backward(part_logits, output, gate)


def _autograd(backward_op):
    def backward(ctx, grad_out):
        part_logits, masks, gate = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, exact at any order
            def formula(x, g):
                return reference.part_masks(x, g, ctx.gate_is_logit)

            return backward_by_formula(formula, (part_logits, gate), (grad_out,), ctx.needs_input_grad) + (None,)
        need_logits, need_gate = ctx.needs_input_grad[:2]
        grad_logits, grad_gate = backward_op(grad_out, part_logits, masks, gate, ctx.gate_is_logit, need_gate)
        return (grad_logits if need_logits else None), (grad_gate if need_gate else None), None

    return backward


_library.register_op("part_masks", _fake, _backward_fake, _setup_context, _autograd)
