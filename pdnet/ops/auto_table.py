"""The static order of ``backend="auto"``: which backend runs an op, per (op, device, dtype, size class).

``auto`` depends only on static properties of the call -- the device's type and compute
capability, the inputs' dtype and the op's problem size -- so a traced call
(``torch.compile``) and an eager call with the same inputs run the same backend, and
nothing is timed unless asked for (``PDNET_AUTO=tune``, :mod:`pdnet.ops._dispatch`).

Keys:

* device: :func:`device_key`: ``"sm<major><minor>"`` for a CUDA device of that compute
  capability (``"sm90"``: H100 / H200, ``"sm86"``: RTX 3090, ``"sm80"``: A100), else the
  device type (``"cpu"``);
* dtype: the inputs' dtype name (``"bfloat16"``, ...);
* size class: :func:`size_class`, ``"model"`` or ``"large"``, from :func:`problem_size`
  (:func:`dims_size` for a benchmark row's dimensions), the product of the op's
  dimensions -- part_attention: B * p * Nq * Nk * d, the multiply-adds of one score
  product; the other ops: the elements of their largest input (part_masks,
  area_variance: B * p * h * w; assemble_parts: B * p * C * h * w) -- against
  :data:`LARGE_FROM`. The thresholds separate the model's own calls (480 x 480 input,
  batch 2: attention 2.6e8 = 2 * 5 * 900 * 900 * 32; masks 2.3e6; assembly up to 9.2e6
  at 120 x 120), where launch and host overhead weigh, from batch-32 or high-resolution
  calls (attention 4.1e9 and up, masks and assembly 3.7e7 and up), where the kernels'
  throughput decides.

Order, for a key:

1. :data:`MEASURED` (``pdnet/ops/auto_measured.py``), written by ``bench/auto_order.py``
   from the benchmark rows committed under ``bench/results/`` (``bench/bench_ops.py``
   writes them): the backends measured for that exact key, fastest first, then the
   unmeasured ones in the default order;
2. otherwise :data:`DEFAULT_ORDER` for the device type. On CUDA the C++ kernels come
   before Triton: they are compiled ahead of time (Triton compiles each specialisation
   at its first call, seconds) and launch from C++, with less host work per call than
   Triton's Python launcher, which weighs at the model's shapes. On the CPU Triton only
   runs in its interpreter (for tests), so ``auto`` never takes it.

Then, whatever the source, hard rules remove backends: those without kernels for the
dtype on the device (:data:`KERNEL_DTYPES`: the C++ CUDA kernels have no float64, so
float64 on CUDA goes to Triton, else the reference); under
``torch.use_deterministic_algorithms(True)``, those whose backward is not bitwise
reproducible (:data:`NONDETERMINISTIC`); and those not registered. The reference runs
everything and is the last resort.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from .auto_measured import MEASURED

SIZE_CLASSES = ("model", "large")

#: problem size (:func:`problem_size`) from which a call is of size class "large"
LARGE_FROM: dict[str, int] = {
    "part_attention": 2**30,
    "part_masks": 2**24,
    "assemble_parts": 2**24,
    "area_variance": 2**24,
}

#: backends ``auto`` may take per device type, in the order used where nothing was measured
DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cpp", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}

#: (backend, device type) -> the input dtypes its kernels take there (absent: every dtype)
KERNEL_DTYPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpp", "cuda"): ("float32", "float16", "bfloat16"),
}

#: (backend, op, device type) whose backward is not bitwise reproducible (float atomics):
#: left out while ``torch.use_deterministic_algorithms(True)`` is on
NONDETERMINISTIC: tuple[tuple[str, str, str], ...] = ()  # none: every backward writes each gradient once


def problem_size(op: str, args) -> int:
    """The product of the op's dimensions, from its arguments (those of its reference
    function): attention B * p * Nq * Nk * d (q's elements times Nk), else the first
    input's elements."""
    size = args[0].numel()
    return size * args[1].shape[2] if op == "part_attention" else size


def dims_size(dims: Mapping[str, int]) -> int:
    """The product of the op's dimensions as a benchmark row gives them (``dims``)."""
    size = 1
    for n in dims.values():
        size *= n
    return size


def size_class(op: str, size: int) -> str:
    """``"large"`` from :data:`LARGE_FROM` on, else ``"model"``."""
    return "large" if size >= LARGE_FROM[op] else "model"


@torch.compiler.assume_constant_result  # traced code: a constant, never a graph node
def device_key(device: torch.device) -> str:
    """``"sm<major><minor>"`` for a CUDA device, else its type."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def device_type(key: str) -> str:
    """The device type of a :func:`device_key`."""
    return "cuda" if key.startswith("sm") else key


def dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def order(op: str, device: str, dtype: torch.dtype | str, size: str, deterministic: bool = False):
    """(backends in order of preference, why): the table's order for the key, after the
    hard rules; ``device`` is a :func:`device_key`, ``size`` a size class."""
    kind, dt = device_type(device), dtype_name(dtype)
    allowed = DEFAULT_ORDER.get(kind, ("reference",))
    measured = MEASURED.get((op, device, dt, size))
    if measured is None:
        ranked, why = list(allowed), [f"default order for {kind}"]
    else:
        ranked = [b for b in measured[0] if b in allowed]
        ranked += [b for b in allowed if b not in ranked]
        why = [f"measured: {measured[1]}"]
    for b in list(ranked):
        if dt not in KERNEL_DTYPES.get((b, kind), (dt,)):
            ranked.remove(b)
            why.append(f"{b} has no {dt} kernels on {kind}")
        elif deterministic and (b, op, kind) in NONDETERMINISTIC:
            ranked.remove(b)
            why.append(f"{b} is not deterministic (torch.use_deterministic_algorithms)")
    return tuple(ranked), "; ".join(why)


def choose(
    op: str, device: str, dtype: torch.dtype | str, size: str, available: Collection[str], deterministic: bool = False
) -> tuple[str, str]:
    """(backend, why): the first backend of :func:`order` among ``available``, else the reference."""
    ranked, why = order(op, device, dtype, size, deterministic)
    for b in ranked:
        if b in available:
            return b, why
    return "reference", why + "; none of " + ", ".join(ranked) + " is available"
