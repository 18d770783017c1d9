"""Registers the Triton kernels (:mod:`pdnet.kernels`) as backend ``"triton"``.

Devices: ``cuda`` when a CUDA device is present; ``cpu`` only when
``TRITON_INTERPRET=1`` was set before pdnet was imported (Triton's interpreter,
slow, for tests). Otherwise the backend is marked unavailable with the reason.
``backend="auto"`` prefers the C++ extension, then Triton, on CUDA
(:data:`pdnet.ops._dispatch.AUTO_ORDER`); on CPU it never picks the interpreter.
"""
from __future__ import annotations

import os

import torch

from ._dispatch import mark_unavailable, register_backend


def _register() -> None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        mark_unavailable("triton", f"the triton package cannot be imported ({exc})")
        return
    from pdnet import kernels

    devices: tuple[str, ...] = ()
    if torch.cuda.is_available():
        devices += ("cuda",)
    if kernels.INTERPRET:
        devices += ("cpu",)
    if not devices:
        mark_unavailable(
            "triton",
            "no CUDA device; set TRITON_INTERPRET=1 before importing pdnet to run the Triton kernels on CPU "
            f"in Triton's interpreter (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})",
        )
        return
    register_backend("triton", dict(kernels.OPS), devices=devices)


_register()
