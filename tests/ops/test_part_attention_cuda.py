"""The CUDA attention kernels (C++ extension and Triton) where tiled kernels go wrong.

Query and key counts one below, at and one above the tile sizes (16, 32, 64, 128 rows),
head dims that the kernels round up (zero padding columns) or that break 16-byte rows
(the synchronous load path), masked keys and rows with every key masked, against the
float64 reference, forward and every gradient; an input that starts off a 16-byte
boundary against the same values aligned (bitwise: only the load path differs); and a
backward that is bitwise reproducible (no float atomics). Needs a GPU: marked cuda.
"""
from __future__ import annotations

import pytest
import torch

import pdnet.ops

from . import cases as C
from . import checks

OP = "part_attention"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: (Nq, Nk): around the tiles' 16 / 32 / 64 / 128 rows, Nq != Nk, one query, one key
TILE_SHAPES = ((1, 1), (15, 17), (16, 16), (33, 31), (63, 65), (64, 64), (65, 127), (128, 129), (129, 257), (257, 33))
#: head dims: the model's 32, the benchmark's 64, 128 (the largest), rounded-up ones (16, 48, 96),
#: and ones whose rows are not 16-byte multiples in 16-bit types (1, 33, 65, 100)
HEAD_DIMS = (1, 16, 32, 33, 48, 64, 65, 96, 100, 128)


def _case(Nq: int, Nk: int, d: int, mask: str) -> C.Case:
    return C.Case(OP, f"tiles_{Nq}x{Nk}_d{d}_{mask}", "awkward", dict(B=2, p=3, Nq=Nq, Nk=Nk, d=d),
                  dict(key_mask=mask, scale=d**-0.5))


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_tile_boundaries_match_reference(backend, device, dtype, d):
    for i, (Nq, Nk) in enumerate(TILE_SHAPES):
        mask = ("random", "rows_fully_masked")[i % 2] if Nk > 1 else None
        checks.against_reference(_case(Nq, Nk, d, mask), backend, device, dtype)


def _run(backend, q, k, v, mask, cot):
    leaves = [t.detach().requires_grad_() for t in (q, k, v, mask)]
    out = pdnet.ops.part_attention(*leaves[:3], 0.3, leaves[3], backend=backend)
    return [out.detach(), *torch.autograd.grad(out, leaves, cot)]


def _inputs(device, dtype, B=2, p=5, Nq=900, Nk=900, d=32, seed=3):
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(B, p, n, d, device=device, generator=gen).to(dtype) for n in (Nq, Nk, Nk))
    mask = torch.randn(B, p, Nk, device=device, generator=gen)
    mask[..., 5:40] = float("-inf")
    cot = torch.randn(B, p, Nq, d, device=device, generator=gen).to(dtype)
    return q, k, v, mask, cot


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in a contiguous tensor whose data starts one element past a 16-byte boundary."""
    base = torch.empty(t.numel() + 16, dtype=t.dtype, device=t.device)
    start = next(i for i in range(1, 16) if (base.data_ptr() + i * t.element_size()) % 16)
    out = base[start : start + t.numel()].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_inputs_give_the_aligned_result(backend, device, dtype):
    q, k, v, mask, cot = _inputs(device, dtype, Nq=130, Nk=70, d=64)
    aligned = _run(backend, q, k, v, mask, cot)
    shifted = _run(backend, _misaligned(q), _misaligned(k), _misaligned(v), mask, _misaligned(cot))
    for i, (a, b) in enumerate(zip(shifted, aligned, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, i=i: f"term {i}: {m}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", checks.cuda_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_is_bitwise_reproducible(backend, device, dtype):
    """Every gradient is written by one block in a fixed order: two runs agree bit for bit,
    also with torch.use_deterministic_algorithms(True) on (no error, no warning)."""
    q, k, v, mask, cot = _inputs(device, dtype)
    first = _run(backend, q, k, v, mask, cot)
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        second = _run(backend, q, k, v, mask, cot)
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
    for i, (a, b) in enumerate(zip(second, first, strict=True)):
        assert torch.equal(a, b), f"{backend} {dtype}: term {i} differs between two runs"
