"""Area sums of the area-variance loss in Triton: a two-stage reduction.

The kernel computes the per-(b, k) part areas a[b, k] = sum_hw x[b, k, h, w]: each
program reduces one CHUNK of one row and writes a partial sum, and the partials (a few
per row) are summed by torch, so the result does not depend on scheduling. The loss
and its gradient are functions of the small [B, p] areas; pdnet.ops.area_variance
computes them (with torch) from these sums. The host function does not validate its
input: pdnet.ops does.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, acc_dtype, on_input_device


@triton.jit
def _area_variance_fwd_kernel(
    X,  # [B*p, HW] contiguous
    PARTIAL,  # [B*p, n_chunks] contiguous, accumulator dtype
    HW, n_chunks,  # pixels h * w per row, chunks per row
    CHUNK: tl.constexpr,  # pixels per program, a multiple of BLOCK
    BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    start = chunk * CHUNK
    acc = tl.zeros([BLOCK], ACC)
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        acc += tl.load(X + row * HW + offs, mask=offs < HW, other=0.0).to(ACC)
    tl.store(PARTIAL + row * n_chunks + chunk, tl.sum(acc, 0))


def _chunking(HW: int) -> tuple[int, int]:
    """(CHUNK, BLOCK): pixels per program and per vector step."""
    if INTERPRET:
        return 256, 64
    return 16384, 2048


@on_input_device
def area_sums(x: torch.Tensor) -> torch.Tensor:
    """areas [B, p] = x [B, p, H, W] summed over the pixels, in the accumulation dtype."""
    B, P, H, W = x.shape
    HW = H * W
    xc = x.contiguous()  # [B, p, H, W]
    areas_dtype = acc_dtype(x.dtype)
    if B * P == 0 or HW == 0:
        return torch.zeros((B, P), dtype=areas_dtype, device=x.device)
    chunk, block = _chunking(HW)
    n_chunks = triton.cdiv(HW, chunk)
    partial = torch.empty((B * P, n_chunks), dtype=areas_dtype, device=x.device)  # [B*p, n_chunks]
    wrap_triton(_area_variance_fwd_kernel)[(B * P, n_chunks)](
        xc, partial, HW, n_chunks, CHUNK=chunk, BLOCK=block, num_warps=8,
    )
    return partial.sum(dim=1).view(B, P)  # [B, p]
