"""Backend registry for the hot-path ops.

A backend is a name plus, for each op it implements, a callable and a predicate
telling whether it can run on a given device. ``reference`` (pure PyTorch) is
always registered; the Triton kernels (``pdnet.kernels``) and the C++/CUDA
extension (``pdnet._C``) register themselves when they are importable.

``backend="auto"`` walks :data:`AUTO_ORDER` for the tensors' device type. Where that
leaves more than one kernel backend (on CUDA: the C++/CUDA extension and Triton), the
first call of each op for each signature (shapes, dtypes, whether gradients are
needed) times the candidates on the actual inputs -- forward, plus backward when the
inputs require grad -- and keeps the fastest (:func:`auto_choices` shows the choices).
No timing happens while tracing (``torch.compile``: traced code always takes the first
backend of the order), under functorch transforms (``vmap``, ``grad``), during CUDA
graph capture, or with ``PDNET_AUTO=order`` in the environment: then the first backend
of the order is used. A candidate that raises while timed is skipped for that signature,
with one warning.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

OPS = ("part_attention", "part_masks", "assemble_parts", "area_variance")

#: every backend name the project knows, registered or not ("cuda" is an alias of "cpp")
KNOWN_BACKENDS = ("reference", "triton", "cpp")
ALIASES = {"cuda": "cpp", "torch": "reference"}

#: (backend, op, device type) whose backward is not bitwise reproducible (float atomics):
#: ``auto`` passes them over while ``torch.use_deterministic_algorithms(True)`` is on
NONDETERMINISTIC: tuple[tuple[str, str, str], ...] = (("cpp", "part_attention", "cuda"),)

#: device types on which ``auto`` times its kernel candidates (elsewhere: AUTO_ORDER)
TUNED_DEVICES: tuple[str, ...] = ("cuda",)

#: preference per device type for backend="auto"
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cpp", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}


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
    dtype_ = device.type
    if name == "auto":
        cands = [
            c for c in AUTO_ORDER.get(dtype_, ("reference",))
            if c in _REGISTRY and _REGISTRY[c].supports(op, dtype_)
        ]
        if torch.are_deterministic_algorithms_enabled():
            cands = [c for c in cands if (c, op, dtype_) not in NONDETERMINISTIC]
        if not cands:
            return _REGISTRY["reference"].impls[op]
        kernels = [c for c in cands if c != "reference"]
        if len(kernels) > 1 and dtype_ in TUNED_DEVICES:
            return _AutoChoice(op, kernels)
        return _REGISTRY[cands[0]].impls[op]
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


# --------------------------------------------------------------------------- auto tuning
#: (op, signature) -> backend chosen by timing
_CHOICES: dict[tuple[str, tuple[Any, ...]], str] = {}
_TIMINGS: dict[tuple[str, tuple[Any, ...]], dict[str, float]] = {}


def auto_choices() -> dict[str, dict[str, Any]]:
    """What ``backend="auto"`` chose by timing so far: ``{"op signature": {"backend":
    name, "ms": {candidate: median ms}}}`` (empty where nothing was timed)."""
    return {
        f"{op} {sig}": {"backend": b, "ms": dict(_TIMINGS.get((op, sig), {}))}
        for (op, sig), b in _CHOICES.items()
    }


def clear_auto_choices() -> None:
    _CHOICES.clear()
    _TIMINGS.clear()


def _signature(args) -> tuple[Any, ...]:
    sig: list[Any] = [torch.is_grad_enabled()]
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((tuple(a.shape), str(a.dtype), str(a.device), a.requires_grad, a.is_contiguous()))
        else:
            sig.append(a if isinstance(a, (bool, int, float, str, type(None))) else type(a).__name__)
    return tuple(sig)


def _is_functorch_wrapped(t: torch.Tensor) -> bool:
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def _can_time(args) -> bool:
    if os.environ.get("PDNET_AUTO", "tune").lower() == "order":
        return False
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if any(type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter) for t in tensors):
        return False  # fake / functional / subclass tensors: nothing real to time
    if any(_is_functorch_wrapped(t) for t in tensors):
        return False  # inside vmap / grad transforms: timing would run (and fail) under them
    if any(t.device.type == "cuda" for t in tensors) and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _run_once(fn: Callable, args, grad: bool) -> None:
    if not grad:
        with torch.no_grad():
            fn(*args)
        return
    leaves = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args]
    with torch.enable_grad():
        out = fn(*leaves)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loss = sum(o.float().sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()


def time_call(fn: Callable, args, grad: bool, reps: int = 5) -> float:
    """Median milliseconds of ``fn(*args)`` (and its backward when ``grad``), after one
    warm-up call (which also compiles / autotunes kernels)."""
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    cuda = device.type == "cuda"
    _run_once(fn, args, grad)
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        _run_once(fn, args, grad)
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


class _AutoChoice:
    """``backend="auto"`` with several kernel backends: times them once per signature."""

    def __init__(self, op: str, candidates: list[str]) -> None:
        self.op, self.candidates = op, candidates

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            # traced: no signature lookup (shapes may be symbolic), no timing; the order
            return _REGISTRY[self.candidates[0]].impls[self.op](*args)
        key = (self.op, _signature(args))
        name = _CHOICES.get(key)
        if name is None:
            if not _can_time(args):
                return _REGISTRY[self.candidates[0]].impls[self.op](*args)
            grad = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
            timings = {}
            for cand in self.candidates:
                try:
                    timings[cand] = time_call(_REGISTRY[cand].impls[self.op], args, grad)
                except Exception as exc:  # not a candidate for these inputs; say so once
                    warnings.warn(
                        f"{self.op}: backend {cand!r} failed while backend='auto' timed it "
                        f"({type(exc).__name__}: {exc}); auto uses the other backends for these inputs",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            if not timings:  # every candidate failed: let the first raise its own error
                return _REGISTRY[self.candidates[0]].impls[self.op](*args)
            name = min(timings, key=timings.get)
            _CHOICES[key], _TIMINGS[key] = name, timings
        return _REGISTRY[name].impls[self.op](*args)
