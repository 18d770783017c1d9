"""The ``triton`` backend: the Triton kernels of :mod:`pdnet.kernels`.

Importing this module imports ``pdnet.kernels`` when Triton is installed
(:data:`kernels`, None otherwise, with the reason in :data:`_LOAD_ERROR`). Each op's
module in :mod:`pdnet.ops` registers the kernels' host functions as the custom ops
``pdnet_triton::<op>`` / ``pdnet_triton::<op>_backward`` (:func:`triton_op`), with
fake kernels and the op's autograd formula; :func:`register` then registers the
backend ``"triton"`` for the devices it runs on: ``cuda`` when a CUDA device is
present; ``cpu`` only when ``TRITON_INTERPRET=1`` was set before pdnet was imported
(Triton's interpreter, slow, for tests). Otherwise the backend is marked unavailable
with the reason. ``backend="auto"`` takes Triton on CUDA where the table of
:mod:`pdnet.ops.auto_table` puts it first; on CPU it never picks the interpreter.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ._dispatch import mark_unavailable, register_backend

#: custom-op namespace of the Triton kernels (the C++ extension owns ``pdnet``)
NAMESPACE = "pdnet_triton"

kernels = None
_LOAD_ERROR: str | None = None
try:
    import triton  # noqa: F401  (kernels needs it; a clear reason when it is missing)
except ImportError as exc:
    _LOAD_ERROR = f"the triton package cannot be imported ({exc})"
else:
    try:
        from pdnet import kernels
    except ModuleNotFoundError as exc:
        if exc.name != "pdnet.kernels":
            raise
        _LOAD_ERROR = "pdnet.kernels (the kernels/ directory) is not installed"


def interpret() -> bool:
    """The kernels run in Triton's CPU interpreter."""
    return kernels is not None and kernels.INTERPRET


def devices() -> tuple[str, ...]:
    """Device types the kernels run on here."""
    if kernels is None:
        return ()
    return (("cuda",) if torch.cuda.is_available() else ()) + (("cpu",) if interpret() else ())


def check_device(op: str, t: torch.Tensor) -> None:
    """The compiled kernels need CUDA tensors; the interpreter also takes CPU tensors."""
    if t.device.type != "cuda" and not interpret():
        raise ValueError(
            f"{op} (triton): tensors must be on a CUDA device, got {t.device}; set TRITON_INTERPRET=1 "
            "before importing pdnet to run the Triton kernels on CPU (slow, for testing)"
        )


def _keep_opaque(mode, op, types, args, kwargs):
    """FunctionalTensorMode rule that keeps a triton_op as one opaque node."""
    return mode.__torch_dispatch__(op, types, args, kwargs)


def triton_op(name: str, fn: Callable, fake: Callable):
    """Register the host function ``fn`` as the custom op ``pdnet_triton::<name>`` with
    the fake kernel ``fake``; returns the op.

    ``fn`` launches its kernels through ``torch.library.wrap_triton`` so that
    torch.compile traces into them on CUDA. Under the interpreter ``wrap_triton``
    hands back the interpreted kernel, which cannot run on fake tensors; there the op
    stays one opaque node in compiled graphs (like a ``custom_op``), and its shapes
    come from ``fake``.
    """
    op = torch.library.triton_op(f"{NAMESPACE}::{name}", fn, mutates_args=())
    op.register_fake(fake)
    if interpret():
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        op.register_torch_dispatch(FunctionalTensorMode, _keep_opaque)
    return op


def register(impls: dict[str, Callable]) -> None:
    """Register backend ``"triton"`` with ``impls`` (op name -> callable), or say why not."""
    if kernels is None:
        mark_unavailable("triton", _LOAD_ERROR)
        return
    if not devices():
        mark_unavailable(
            "triton",
            "no CUDA device; set TRITON_INTERPRET=1 before importing pdnet to run the Triton kernels on CPU "
            f"in Triton's interpreter (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})",
        )
        return
    register_backend("triton", impls, devices=devices())
