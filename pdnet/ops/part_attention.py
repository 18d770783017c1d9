"""``part_attention``: per-part cross-attention. Its contract, input checks, and the
registration of its kernels (fake kernels and one autograd formula for the C++ op
``pdnet::part_attention`` and the Triton op ``pdnet_triton::part_attention``).

Reference: :func:`pdnet.ops.reference.part_attention`; Triton: ``kernels/part_attention.py``;
C++: ``csrc/ops/part_attention.cpp`` with ``csrc/ops/cpu/`` and ``csrc/ops/cuda/``.
"""
from __future__ import annotations

import torch

from . import _checks, _library, _triton_backend, reference
from ._dispatch import resolve
from ._higher_order import backward_by_formula


def part_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float = 1.0,
    key_mask: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-part cross-attention, all parts at once (parts act as heads):
    out = softmax over keys(q k^T * scale + key_mask) v for every (batch, part).

    Args:
        q (Tensor[B, p, Nq, d]): queries from the target frame; float16, bfloat16,
            float32 or float64.
        k (Tensor[B, p, Nk, d]): keys from the reference frame; q's dtype and device.
        v (Tensor[B, p, Nk, d]): values from the reference frame; q's dtype and device.
        scale (float): multiplies q k^T before the softmax (the release uses 1.0).
        key_mask (Tensor[B, p, Nk], optional): additive mask on the keys (0 keeps a key,
            -inf drops it); any floating dtype, on q's device.
        backend (str): ``"auto"``, ``"reference"``, ``"cpp"`` (alias ``"cuda"``) or
            ``"triton"``; see :mod:`pdnet.ops`.
        return_lse (bool): also return the log-sum-exp of the scores.

    Returns:
        out (Tensor[B, p, Nq, d]) in q's dtype; with ``return_lse``, the pair (out, lse):
        lse (Tensor[B, p, Nq]) is the natural-log log-sum-exp over the keys of the scaled,
        masked scores, in the accumulation dtype.

    Contract, the same in every backend:

    * dtypes: the kernels accumulate in float32 (float64 for float64 inputs); lse is in
      that dtype. The reference computes in the inputs' dtype.
    * Fully masked query row (every score -inf): attention weights 0, so out = 0 * v
      summed over the keys (0 where v is finite, NaN where v is not), lse = -inf, and
      the gradient of its scores is 0 (0 times the softmax backward's terms, so NaN
      only where those are NaN or infinite); a plain softmax would give NaN there.
    * NaN and inf otherwise propagate as in a plain softmax: a NaN or +inf score makes
      its row's out and lse NaN (so does a NaN in a row of k, or scale=nan, for every
      query row attending that key); they reach the same places of every gradient.
    * Empty inputs: B * p * Nq == 0 gives empty outputs and zero gradients (zero-size
      where the input is); Nk == 0 with Nq > 0 is a ValueError.
    * Gradients with respect to q, k, v and key_mask, through out and lse (the gradient
      of lse with respect to the scores is the softmax weights). The kernel backends
      save (q, k, v, out, lse, key_mask) for the backward. Gradients of every order are
      exact: a backward with ``create_graph=True`` differentiates the reference formula.
    * Triton only: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``), d <= 128
      and B * p <= 65535; anything else is a ValueError naming the limit.
    """
    _checks.check_part_attention(q, k, v, scale, key_mask)
    return resolve("part_attention", backend, q.device)(q, k, v, float(scale), key_mask, bool(return_lse))


# --------------------------------------------------------------------------- kernel backends
def _fake(q, k, v, scale, key_mask):
    B, p, Nq, d = q.shape
    return q.new_empty((B, p, Nq, d)), q.new_empty((B, p, Nq), dtype=reference.acc_dtype(q.dtype))


def _backward_fake(grad_out, grad_lse, q, k, v, out, lse, scale, key_mask, key_mask_grad):
    if key_mask_grad and key_mask is not None:
        dkey_mask = key_mask.new_empty(key_mask.shape)
    else:
        dkey_mask = q.new_empty((0,), dtype=reference.acc_dtype(q.dtype))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dkey_mask


def _setup_context(ctx, inputs, output):
    q, k, v, scale, key_mask = inputs
    out, lse = output
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused out or lse passes None, not zeros
    ctx.save_for_backward(q, k, v, out, lse, key_mask)


def _formula(q, k, v, scale, key_mask):
    return reference.part_attention(q, k, v, scale, key_mask, return_lse=True)


def _autograd(backward_op):
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, key_mask = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, exact at any order
            inputs = (q, k, v, ctx.scale, key_mask)
            return backward_by_formula(_formula, inputs, (grad_out, grad_lse), ctx.needs_input_grad)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        mask_grad = key_mask is not None and ctx.needs_input_grad[4]
        dq, dk, dv, dkey_mask = backward_op(grad_out, grad_lse, q, k, v, out, lse, ctx.scale, key_mask, mask_grad)
        return dq, dk, dv, None, (dkey_mask if mask_grad else None)

    return backward


def _check_triton(q: torch.Tensor) -> None:
    _triton_backend.check_device("part_attention", q)
    limits = _triton_backend.kernels.part_attention
    B, p, _, d = q.shape
    if d > limits.MAX_HEAD_DIM:
        raise ValueError(
            f"part_attention (triton): head dim d={d} is above {limits.MAX_HEAD_DIM} (q {tuple(q.shape)}); "
            "use backend='reference' or 'cpp'"
        )
    if B * p > limits.MAX_HEADS:
        raise ValueError(
            f"part_attention (triton): B*p = {B * p} exceeds the grid limit {limits.MAX_HEADS} (q {tuple(q.shape)})"
        )


def _with_lse_choice(op):
    """The op (which always returns (out, lse)) with the reference's arguments."""

    def part_attention(q, k, v, scale, key_mask, return_lse):
        out, lse = op(q, k, v, scale, key_mask)
        return (out, lse) if return_lse else out

    return part_attention


_library.register_op(
    "part_attention", _fake, _backward_fake, _setup_context, _autograd,
    triton_check=_check_triton, adapt=_with_lse_choice,
)
