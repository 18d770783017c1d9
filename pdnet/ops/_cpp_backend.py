"""The ``cpp`` backend: pdnet's compiled ops (``pdnet._C``, built from ``csrc/``).

Importing this module loads the extension, whose C++ side defines the ops
``torch.ops.pdnet.<op>`` and ``torch.ops.pdnet.<op>_backward`` with their CPU (and,
when built with CUDA, CUDA) kernels. Each op's module in :mod:`pdnet.ops` registers
its fake kernels and autograd formula when :data:`LOADED`; :func:`register` then
registers the backend ``"cpp"`` for the devices the extension was built for. When
the extension cannot be loaded (not built, built against another torch, ...),
:func:`register` warns once and records the reason with
:func:`pdnet.ops._dispatch.mark_unavailable`, and pdnet keeps working on the
reference ops. Importing this module never raises.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

from ._dispatch import mark_unavailable, register_backend

_C = None
_LOAD_ERROR: str | None = None

try:
    _C = importlib.import_module("pdnet._C")  # registers torch.ops.pdnet.*
except ModuleNotFoundError as exc:
    if exc.name != "pdnet._C":
        _LOAD_ERROR = f"the compiled extension pdnet._C could not be loaded: {type(exc).__name__}: {exc}"
    else:
        _LOAD_ERROR = "the compiled extension pdnet._C is not built"
except Exception as exc:  # ImportError, OSError (undefined symbol: built for another torch), ...
    _LOAD_ERROR = f"the compiled extension pdnet._C could not be loaded: {type(exc).__name__}: {exc}"

#: the extension is loaded: torch.ops.pdnet.* exist
LOADED: bool = _C is not None


def built_devices() -> tuple[str, ...]:
    """Device types the extension has kernels for (empty when it is not loaded)."""
    if _C is None:
        return ()
    return ("cpu", "cuda") if getattr(_C, "with_cuda", 0) else ("cpu",)


def cpu_isa() -> str | None:
    """Instruction set of the CPU kernels in use ("AVX2" or "DEFAULT"), None when not loaded."""
    return _C.cpu_isa() if _C is not None else None


def register(impls: dict[str, Callable]) -> None:
    """Register backend ``"cpp"`` with ``impls`` (op name -> callable), or say why not."""
    if _C is None:
        warnings.warn(
            f"pdnet: {_LOAD_ERROR}; the 'cpp' ops backend is unavailable and pdnet uses its "
            "reference ops. Rebuild with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        mark_unavailable("cpp", _LOAD_ERROR)
        return
    register_backend("cpp", impls, devices=built_devices())
