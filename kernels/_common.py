"""Pieces shared by the Triton kernels of pdnet.kernels.

* :data:`INTERPRET`: whether Triton runs kernels in its CPU interpreter
  (``TRITON_INTERPRET=1`` set before this package was imported). The kernels are
  decorated at import time, so the flag is fixed for the life of the process.
* :func:`mma`: ``tl.dot`` with the accumulator dtype of the op. Triton 3.8's
  interpreter multiplies bfloat16 operands as raw 16-bit integers (it stores them
  as ``uint16``), so in interpreter mode both operands are widened to the
  accumulator dtype first. A product of two bf16/fp16 numbers is exact in fp32,
  so this matches a tensor-core MMA with fp32 accumulation up to summation order.
* :func:`to_dtype`: ``x.to(dtype)`` rounding to nearest even. The interpreter's
  fp32 -> bf16 conversion truncates (a GPU rounds to nearest even), so under the
  interpreter that conversion is done on the bits.
* :func:`acc_dtype`: fp64 for fp64 inputs, fp32 otherwise (fp16/bf16/fp32 inputs
  accumulate in fp32).
* :func:`split_scale`: a Python float as the sum of two fp32 numbers, because
  Triton passes float scalars as fp32 (the interpreter ignores ``fp64``
  annotations); kernels rebuild it in their accumulator dtype.
* :func:`on_input_device`: the decorator of every host function, which launches its
  kernels on the inputs' device (:func:`launch_device`).
"""
from __future__ import annotations

import contextlib
import functools
import math
import struct

import torch
import triton
import triton.language as tl

#: Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import time).
INTERPRET: bool = bool(triton.knobs.runtime.interpret)
_INTERPRET = tl.constexpr(INTERPRET)


@triton.jit
def mma(a, b, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in ``ACC``; ``PRECISION`` is tl.dot's input_precision."""
    if _INTERPRET:
        a = a.to(ACC)
        b = b.to(ACC)
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)`` with round-to-nearest-even, also in the interpreter."""
    if _INTERPRET and DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Torch dtype the kernels accumulate in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for operands of ``dtype``.

    fp32 follows PyTorch's matmul setting: TF32 only when
    ``torch.backends.cuda.matmul.allow_tf32`` (``set_float32_matmul_precision``
    "high"/"medium") allows it, IEEE fp32 otherwise. fp64 is always IEEE; fp16 and
    bf16 take Triton's default (the flag only concerns fp32 operands).
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "tf32"


def _fp32(x: float) -> float:
    """``x`` rounded to the nearest fp32 value (+-inf beyond its range)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def split_scale(x: float) -> tuple[float, float]:
    """``x`` as ``hi + lo`` with ``hi``, ``lo`` exactly representable in fp32.

    Plain Python (no tensors), so that it traces under torch.compile's fake tensors.
    """
    hi = _fp32(x)
    return hi, (_fp32(x - hi) if math.isfinite(hi) else 0.0)


def block_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 for the interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_device(device: torch.device):
    """Context manager under which Triton launches go to ``device``.

    Triton's launcher compiles for, and launches on, the *current* CUDA device and that
    device's current stream, whatever device the tensors are on: a kernel given tensors
    of cuda:1 while cuda:0 is current would read cuda:1 pointers in cuda:0's context.
    ``torch.cuda.device`` makes the tensors' device current for the launch (and with it
    that device's current stream, the one PyTorch queues the inputs' work on), then
    restores the previous device. Dynamo traces this context manager (its
    ``torch.cuda.device`` support records the device switches in the graph), so a host
    function compiled directly keeps the guard; through the ops, torch.compile does not
    run the host functions in Dynamo at all: AOTAutograd runs them on fake tensors to
    record the launches (the guard then only switches the process's device while
    tracing), and Inductor's generated code guards the device itself. CPU tensors
    (Triton's interpreter): no-op.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def on_input_device(host):
    """Decorator of a host function: runs it under :func:`launch_device` of the device of
    its first tensor argument (the ops check that all their tensors share one device)."""

    @functools.wraps(host)
    def on_device(*args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                with launch_device(a.device):
                    return host(*args, **kwargs)
        raise TypeError(f"{host.__name__}: no tensor argument to take the device from")

    return on_device
