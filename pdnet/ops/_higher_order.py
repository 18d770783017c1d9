"""Second- and higher-order gradients of the kernel backends.

The kernel backends (``cpp``, ``triton``) compute first-order gradients with their
own backward kernels, which are not differentiable themselves. When a backward runs
with ``create_graph=True`` (grad mode is on inside the autograd formula), their
formulas call :func:`backward_by_formula` instead: it differentiates the op's
pure-PyTorch formula (below) with ``create_graph=True``, so that the gradients are
exact at every order (``torch.autograd.gradgradcheck`` passes) instead of silently
zero. Plain backwards (grad mode off, the usual case, and the traced joint graph of
``torch.compile``) keep the fast kernels.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from . import reference


def attention_with_lse(
    q: torch.Tensor,  # [B, p, Nq, d]
    k: torch.Tensor,  # [B, p, Nk, d]
    v: torch.Tensor,  # [B, p, Nk, d]
    scale: float,
    key_mask: Optional[torch.Tensor] = None,  # [B, p, Nk]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of part_attention as the kernel backends define them, differentiable
    at any order: a row whose scores are all -inf gets weights 0 and lse = -inf (the
    reference gives NaN there); lse in the accumulation dtype (float64 for float64)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # [B, p, Nq, Nk]
    if key_mask is not None:
        s = s + key_mask.to(acc).unsqueeze(-2)  # [B, p, Nq, Nk]
    dead = (s == float("-inf")).all(-1, keepdim=True)  # [B, p, Nq, 1]
    m = torch.where(dead, 0.0, s.detach().amax(-1, keepdim=True))  # [B, p, Nq, 1], NaN stays
    e = torch.exp(s - m)  # [B, p, Nq, Nk]; 0 on dead rows
    l = e.sum(-1, keepdim=True)  # [B, p, Nq, 1]
    attn = e / torch.where(dead, 1.0, l)  # [B, p, Nq, Nk]
    out = torch.matmul(attn, v.to(acc)).to(q.dtype)  # [B, p, Nq, d]
    lse = (m + torch.log(l)).squeeze(-1)  # [B, p, Nq]; -inf on dead rows
    return out, lse


def backward_by_formula(
    formula: Callable[..., object],
    inputs: Sequence[object],
    grad_outputs: Sequence[Optional[torch.Tensor]],
    needs_input_grad: Sequence[bool],
) -> tuple[Optional[torch.Tensor], ...]:
    """Gradients of ``formula(*inputs)`` with respect to the tensor inputs whose
    ``needs_input_grad`` is set, given the gradients of its outputs (None: unused),
    with ``create_graph=True``. Returns one entry per input (None where not needed)."""
    with torch.enable_grad():
        outs = formula(*inputs)
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
    wrt = [
        i for i, t in enumerate(inputs)
        if isinstance(t, torch.Tensor) and needs_input_grad[i] and t.requires_grad
    ]
    result: list[Optional[torch.Tensor]] = [None] * len(inputs)
    if not wrt:
        return tuple(result)
    if pairs:
        grads = torch.autograd.grad(
            [o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
            create_graph=True, allow_unused=True,
        )
    else:
        grads = (None,) * len(wrt)
    for i, g in zip(wrt, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return tuple(result)


def part_masks_formula(gate_is_logit: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda part_logits, gate: reference.part_masks(part_logits, gate, gate_is_logit)


assemble_parts_formula = reference.assemble_parts
area_variance_formula = reference.area_variance
