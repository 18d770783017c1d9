"""Backend registry for the hot-path ops.

A backend is a name plus, for each op it implements, a callable and a predicate
telling whether it can run on a given device. ``reference`` (pure PyTorch) is
always registered; the Triton kernels (``pdnet.kernels``) and the C++/CUDA
extension (``pdnet._C``) register themselves when they are importable.

:func:`resolve` gives the callable of a named backend or, for ``backend="auto"``, a
:class:`pdnet.ops._auto.Auto` over the registered backends that run the op on the
device, which picks one per call from the static table of :mod:`pdnet.ops.auto_table`
(with ``PDNET_AUTO=tune``: by timing them once per input signature).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._auto import Auto

OPS = ("part_attention", "part_masks", "assemble_parts", "area_variance")

#: every backend name the project knows, registered or not ("cuda" is an alias of "cpp")
KNOWN_BACKENDS = ("reference", "triton", "cpp")
ALIASES = {"cuda": "cpp", "torch": "reference"}


@dataclass
class Backend:
    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    devices: tuple[str, ...] = ("cpu",)

    def supports(self, op: str, device_type: str) -> bool:
        return op in self.impls and device_type in self.devices


_REGISTRY: dict[str, Backend] = {}
_UNAVAILABLE_REASON: dict[str, str] = {}


def register_backend(name: str, impls: dict[str, Callable], devices: tuple[str, ...]) -> None:
    """Register (or replace) a backend's op implementations."""
    if name not in KNOWN_BACKENDS:
        raise ValueError(f"unknown backend name {name!r}; known: {', '.join(KNOWN_BACKENDS)}")
    unknown = set(impls) - set(OPS)
    if unknown:
        raise ValueError(f"backend {name!r} registers unknown ops {sorted(unknown)}; ops are {OPS}")
    _REGISTRY[name] = Backend(name, dict(impls), tuple(devices))
    _UNAVAILABLE_REASON.pop(name, None)


def mark_unavailable(name: str, reason: str) -> None:
    """Record why a known backend could not be registered (shown in errors)."""
    _UNAVAILABLE_REASON[name] = reason


def available_backends(device_type: str | None = None) -> list[str]:
    """Names of registered backends (optionally only those supporting a device type)."""
    return [
        n
        for n, b in _REGISTRY.items()
        if device_type is None or device_type in b.devices
    ]


def resolve(op: str, backend: str, device: torch.device) -> Callable:
    """Return the implementation of ``op`` for ``backend`` on ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"{op}: backend must be a string, got {type(backend).__name__}")
    name = ALIASES.get(backend, backend)
    device_type = device.type
    if name == "auto":
        runs = {n: b.impls[op] for n, b in _REGISTRY.items() if b.supports(op, device_type)}
        return Auto(op, {"reference": _REGISTRY["reference"].impls[op], **runs})
    if name not in KNOWN_BACKENDS:
        raise ValueError(
            f"{op}: unknown backend {backend!r}; choose one of 'auto', "
            + ", ".join(repr(n) for n in KNOWN_BACKENDS)
            + f" (available here: {', '.join(available_backends())})"
        )
    b = _REGISTRY.get(name)
    if b is None:
        why = _UNAVAILABLE_REASON.get(name, "it is not built or not installed")
        raise RuntimeError(
            f"{op}: backend {backend!r} is not available ({why}); "
            f"available backends: {', '.join(available_backends())}"
        )
    if not b.supports(op, device_type):
        ok = [n for n in available_backends() if _REGISTRY[n].supports(op, device_type)]
        raise RuntimeError(
            f"{op}: backend {backend!r} does not run on {device_type} tensors "
            f"(it supports {', '.join(b.devices)}); backends for {device_type}: {', '.join(ok)}"
        )
    return b.impls[op]
