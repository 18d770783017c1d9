"""Registration of the kernel backends' ops with ``torch.library``, op by op.

Each op's module (:mod:`pdnet.ops.part_attention`, ...) calls :func:`register_op` once
with its fake kernels and its autograd formula, which serve both kernel libraries: the
C++ ops ``pdnet::<op>`` / ``pdnet::<op>_backward`` (defined by ``pdnet._C``, when it
loaded) and the Triton ops ``pdnet_triton::<op>`` / ``pdnet_triton::<op>_backward``
(the host functions of :mod:`pdnet.kernels`, when Triton is installed). Both libraries
take the same arguments and return the same things, so one fake kernel and one formula
(parametrised by the backend's backward op) describe both. :func:`register_op` also
records the op's backend callables in :data:`IMPLS`, with which :mod:`pdnet.ops`
registers the backends once every op is defined.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from . import _cpp_backend, _triton_backend

#: backend -> op name -> callable taking the arguments of the op's reference function
IMPLS: dict[str, dict[str, Callable]] = {"cpp": {}, "triton": {}}


def register_op(
    name: str,
    fake: Callable,
    backward_fake: Callable,
    setup_context: Callable,
    autograd: Callable[[Callable], Callable],
    *,
    triton_check: Callable[[torch.Tensor], None] | None = None,
    triton: tuple[Callable, Callable] | None = None,
    adapt: Callable[[Callable], Callable] | None = None,
) -> None:
    """Register op ``name`` of every kernel library present, and its backend callables.

    Args:
        name: the op (``part_attention``); its backward op is ``<name>_backward``.
        fake / backward_fake: shape-only kernels of the forward and backward ops.
        setup_context: what the forward saves for the backward (torch.library's
            ``setup_context``), identical in every backend.
        autograd: ``autograd(backward_op)`` is the autograd formula calling that
            backend's backward op.
        triton_check: raises when the Triton kernels cannot take the inputs (device,
            limits); called with the op's first argument before the Triton op.
            Default: the device check alone.
        triton: the Triton host functions (forward, backward), taking the C++ ops'
            arguments; default ``pdnet.kernels.<name>.<name>_forward`` / ``_backward``.
        adapt: ``adapt(op)`` takes the arguments of the op's reference function and
            returns what it returns (default: the op itself, whose arguments and
            results already are those).
    """
    ops: dict[str, Callable] = {}
    if _cpp_backend.LOADED:
        torch.library.register_fake(f"pdnet::{name}", fake)
        torch.library.register_fake(f"pdnet::{name}_backward", backward_fake)
        backward_op = getattr(torch.ops.pdnet, f"{name}_backward")
        torch.library.register_autograd(f"pdnet::{name}", autograd(backward_op), setup_context=setup_context)
        ops["cpp"] = getattr(torch.ops.pdnet, name)
    kernels = _triton_backend.kernels
    if kernels is not None:
        if triton is None:
            module = getattr(kernels, name)
            triton = getattr(module, f"{name}_forward"), getattr(module, f"{name}_backward")
        forward_op = _triton_backend.triton_op(name, triton[0], fake)
        backward_op = _triton_backend.triton_op(f"{name}_backward", triton[1], backward_fake)
        forward_op.register_autograd(autograd(backward_op), setup_context=setup_context)
        ops["triton"] = forward_op
    if triton_check is None:
        triton_check = partial(_triton_backend.check_device, name)
    for backend, op in ops.items():
        fn = op if adapt is None else adapt(op)
        IMPLS[backend][name] = _checked(fn, triton_check) if backend == "triton" else fn


def _checked(fn: Callable, check: Callable[[torch.Tensor], None]) -> Callable:
    def checked(*args):
        check(args[0])
        return fn(*args)

    return checked
