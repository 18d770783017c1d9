"""``backend="auto"``: the backend of each call, from the static table or, opt-in, by timing.

:class:`Auto` (what :func:`pdnet.ops._dispatch.resolve` returns for ``backend="auto"``)
runs, among the backends registered for the op on the inputs' device, the one that
:func:`pdnet.ops.auto_table.choose` names for the call's device (type and compute
capability), dtype and size class. That choice depends on nothing else, so a call
traced by ``torch.compile`` runs the backend the same call runs eagerly, and the choice
baked into a CUDA graph is the table's.

``PDNET_AUTO`` in the environment selects the policy:

* unset, empty or ``table``: the static table (the default);
* ``tune``: the first eager call of each op for each input signature (shapes, strides'
  contiguity, dtypes, devices, scalar arguments, whether gradients are needed) times the
  kernel backends the table allows for it (never the reference) on the actual inputs --
  forward, plus backward when the inputs require grad; :data:`TUNE_WARMUP` calls, then
  :data:`TUNE_REPS` timed ones: on CUDA between CUDA events on the inputs' device's
  current stream (GPU time, not Python's), on the CPU by the wall clock (its kernels
  run synchronously) -- and keeps the fastest for that signature. A candidate that
  raises while timed is skipped for that signature, with one warning. Traced calls
  (``torch.compile``), calls under functorch transforms (``vmap``, ``grad``), on fake
  or subclass tensors and during CUDA graph capture are never timed: they take the
  table's choice.

:func:`auto_choices` reports what the eager calls chose and why.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import auto_table

#: untimed calls before the timed ones (Triton compiles, caches warm up), and timed calls
TUNE_WARMUP, TUNE_REPS = 2, 10

#: what auto chose, by "op device dtype size-class" (table) or "op signature" (tuned)
_CHOICES: dict[str, dict[str, Any]] = {}
#: (op, device, dtype, size class, deterministic, backends) -> (table's backend, kernel candidates)
_PICKS: dict[tuple[Any, ...], tuple[str, list[str]]] = {}
#: (op, signature) -> backend chosen by timing
_TUNED: dict[tuple[str, tuple[Any, ...]], str] = {}


def auto_choices() -> dict[str, dict[str, Any]]:
    """What ``backend="auto"`` chose for the eager calls so far, and why.

    Table choices are keyed ``"<op> <device> <dtype> <size class>"`` with
    ``{"backend", "source": "table", "why"}`` (``why``: the measured entry or the default
    order, and each rule that removed a backend); tuned ones (``PDNET_AUTO=tune``) are
    keyed ``"<op> <signature>"`` with ``{"backend", "source": "tuned", "ms": {backend:
    median ms}}``.
    """
    return {k: dict(v) for k, v in _CHOICES.items()}


def clear_auto_choices() -> None:
    """Forget every choice (the table's are looked up again at the next call)."""
    _CHOICES.clear()
    _PICKS.clear()
    _TUNED.clear()


def tune_mode() -> bool:
    """``PDNET_AUTO=tune``; a value other than ``table`` / ``tune`` is an error naming them."""
    mode = os.environ.get("PDNET_AUTO", "").strip().lower() or "table"
    if mode not in ("table", "tune"):
        raise ValueError(f"PDNET_AUTO={os.environ['PDNET_AUTO']!r}: expected 'table' (the default) or 'tune'")
    return mode == "tune"


class Auto:
    """``backend="auto"`` for ``op`` over ``impls`` (backend -> callable, the backends registered
    for the op on the inputs' device, the reference among them)."""

    def __init__(self, op: str, impls: dict[str, Callable]) -> None:
        self.op, self.impls = op, impls

    def __call__(self, *args):
        first = args[0]
        size = auto_table.size_class(self.op, auto_table.problem_size(self.op, args))
        deterministic = torch.are_deterministic_algorithms_enabled()
        if torch.compiler.is_compiling():  # traced: the table's choice, nothing recorded
            device = auto_table.device_key(first.device)
            name, _ = auto_table.choose(self.op, device, first.dtype, size, self.impls, deterministic)
            return self.impls[name](*args)
        key = (self.op, first.device, first.dtype, size, deterministic, tuple(self.impls))
        picked = _PICKS.get(key)
        if picked is None:  # first call of this kind: look it up once, say why
            device = auto_table.device_key(first.device)
            name, why = auto_table.choose(self.op, device, first.dtype, size, self.impls, deterministic)
            ranked, _ = auto_table.order(self.op, device, first.dtype, size, deterministic)
            picked = _PICKS[key] = name, [b for b in ranked if b != "reference" and b in self.impls]
            _CHOICES[f"{self.op} {device} {auto_table.dtype_name(first.dtype)} {size}"] = {
                "backend": name, "source": "table", "why": why
            }
        name, kernels = picked
        if tune_mode():
            name = self._tuned(args, kernels) or name
        return self.impls[name](*args)

    def _tuned(self, args, candidates: list[str]) -> str | None:
        """The fastest of ``candidates`` for these inputs (timed once per signature); None
        when there is nothing to choose from or the inputs cannot be timed."""
        if len(candidates) < 2:
            return None
        key = (self.op, _signature(args))
        if key in _TUNED:
            return _TUNED[key]
        if not _can_time(args):
            return None
        grad = torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        timings = {}
        for cand in candidates:
            try:
                timings[cand] = time_call(self.impls[cand], args, grad)
            except Exception as exc:  # not a candidate for these inputs; say so once
                warnings.warn(
                    f"{self.op}: backend {cand!r} failed while backend='auto' timed it "
                    f"({type(exc).__name__}: {exc}); auto uses the other backends for these inputs",
                    RuntimeWarning,
                    stacklevel=4,
                )
        if not timings:  # every candidate failed: the table's choice raises its own error
            return None
        name = min(timings, key=timings.get)
        _TUNED[key] = name
        _CHOICES[f"{self.op} {key[1]}"] = {"backend": name, "source": "tuned", "ms": timings}
        return name


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


def event_times(run: Callable[[], None], reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``run`` between CUDA events recorded on the
    current stream (the GPU time of the work ``run`` queues there)."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        start.record()
        run()
        end.record()
    ends[-1].synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]


def wall_times(run: Callable[[], None], reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``run`` by the wall clock (CPU work)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_call(fn: Callable, args, grad: bool) -> float:
    """Median milliseconds of ``fn(*args)`` (and its backward when ``grad``) over
    :data:`TUNE_REPS` calls after :data:`TUNE_WARMUP` untimed ones."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))

    def run() -> None:
        _run_once(fn, args, grad)

    for _ in range(TUNE_WARMUP):
        run()
    if device.type == "cuda":
        with torch.cuda.device(device):
            return statistics.median(event_times(run, TUNE_REPS))
    return statistics.median(wall_times(run, TUNE_REPS))
