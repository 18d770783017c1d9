"""Backend registry for the hot-path ops.

A backend is a name plus, for each op it implements, a callable and a predicate
telling whether it can run on a given device. ``reference`` (pure PyTorch) is
always registered; the Triton kernels (``pdnet.kernels``) and the C++/CUDA
extension (``pdnet._C``) register themselves when they are importable.

``backend="auto"`` walks :data:`AUTO_ORDER` for the tensors' device type and takes
the first backend that is registered and supports that device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

OPS = ("part_attention", "part_masks", "assemble_parts", "area_variance")

#: every backend name the project knows, registered or not ("cuda" is an alias of "cpp")
KNOWN_BACKENDS = ("reference", "triton", "cpp")
ALIASES = {"cuda": "cpp", "torch": "reference"}

#: preference per device type for backend="auto"
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("cpp", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}


@dataclass
class Backend:
    name: str
    impls: Dict[str, Callable] = field(default_factory=dict)
    devices: Tuple[str, ...] = ("cpu",)

    def supports(self, op: str, device_type: str) -> bool:
        return op in self.impls and device_type in self.devices


_REGISTRY: Dict[str, Backend] = {}
_UNAVAILABLE_REASON: Dict[str, str] = {}


def register_backend(name: str, impls: Dict[str, Callable], devices: Tuple[str, ...]) -> None:
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
    dtype_ = device.type
    if name == "auto":
        for cand in AUTO_ORDER.get(dtype_, ("reference",)):
            b = _REGISTRY.get(cand)
            if b is not None and b.supports(op, dtype_):
                return b.impls[op]
        return _REGISTRY["reference"].impls[op]
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
    if not b.supports(op, dtype_):
        ok = [n for n in available_backends() if _REGISTRY[n].supports(op, dtype_)]
        raise RuntimeError(
            f"{op}: backend {backend!r} does not run on {dtype_} tensors "
            f"(it supports {', '.join(b.devices)}); backends for {dtype_}: {', '.join(ok)}"
        )
    return b.impls[op]
