"""Second- and higher-order gradients of the kernel backends.

The kernel backends (``cpp``, ``triton``) compute first-order gradients with their
own backward kernels, which are not differentiable themselves. When a backward runs
with ``create_graph=True`` (grad mode is on inside the autograd formula), the formula
calls :func:`backward_by_formula` instead: it differentiates the op's pure-PyTorch
formula (:mod:`pdnet.ops.reference`) with ``create_graph=True``, so that the gradients
are exact at every order (``torch.autograd.gradgradcheck`` passes) instead of silently
zero. Plain backwards (grad mode off, the usual case, and the traced joint graph of
``torch.compile``) keep the fast kernels.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def backward_by_formula(
    formula: Callable[..., object],
    inputs: Sequence[object],
    grad_outputs: Sequence[torch.Tensor | None],
    needs_input_grad: Sequence[bool],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``formula(*inputs)`` with respect to the tensor inputs whose
    ``needs_input_grad`` is set, given the gradients of its outputs (None: unused),
    with ``create_graph=True``. Returns one entry per input (None where not needed)."""
    with torch.enable_grad():
        outs = formula(*inputs)
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs, strict=True) if g is not None and o.requires_grad]
    wrt = [
        i for i, t in enumerate(inputs)
        if isinstance(t, torch.Tensor) and needs_input_grad[i] and t.requires_grad
    ]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not wrt:
        return tuple(result)
    if pairs:
        grads = torch.autograd.grad(
            [o for o, _ in pairs], [inputs[i] for i in wrt], [g for _, g in pairs],
            create_graph=True, allow_unused=True,
        )
    else:
        grads = (None,) * len(wrt)
    for i, g in zip(wrt, grads, strict=True):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return tuple(result)
