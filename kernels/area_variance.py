"""Area-variance loss in Triton: a two-stage reduction.

Stage 1 (the kernel, registered as ``pdnet_triton::area_sums``): per-(b, k) part
areas a[b, k] = sum_hw x[b, k, h, w]; each program reduces one CHUNK of one row and
writes a partial sum, the partials (a few per row) are summed by torch, so the
result does not depend on scheduling. Its backward is a broadcast of the area
gradient over the pixels (a stride-0 view, no kernel).

Stage 2 (torch, on a [B, p] tensor): L2-normalise the areas over parts, unbiased
variance over parts, mean over the batch; 0 when p == 1.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, acc_dtype, check_device, register_op


@triton.jit
def _area_sums_kernel(
    X,  # [B*p, HW] contiguous
    PARTIAL,  # [B*p, n_chunks] contiguous, accumulator dtype
    HW, n_chunks,
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


def _area_sums(x: torch.Tensor) -> torch.Tensor:
    B, P, H, W = x.shape
    HW = H * W
    xc = x.contiguous()  # [B, p, H, W]
    areas_dtype = acc_dtype(x.dtype)
    if B * P == 0 or HW == 0:
        return torch.zeros((B, P), dtype=areas_dtype, device=x.device)
    chunk, block = _chunking(HW)
    n_chunks = triton.cdiv(HW, chunk)
    partial = torch.empty((B * P, n_chunks), dtype=areas_dtype, device=x.device)  # [B*p, n_chunks]
    wrap_triton(_area_sums_kernel)[(B * P, n_chunks)](
        xc, partial, HW, n_chunks, CHUNK=chunk, BLOCK=block, num_warps=8,
    )
    return partial.sum(dim=1).view(B, P)  # [B, p]


def _area_sums_fake(x):
    return x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))


area_sums = register_op("area_sums", _area_sums, _area_sums_fake)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.x_shape = x.shape
    ctx.x_dtype = x.dtype


def _backward(ctx, grad):  # grad: [B, p]
    B, P, H, W = ctx.x_shape
    return grad.to(ctx.x_dtype)[:, :, None, None].expand(B, P, H, W)  # [B, p, H, W]


area_sums.register_autograd(_backward, setup_context=_setup_context)


def area_variance(x: torch.Tensor) -> torch.Tensor:
    """Area-variance loss (paper eq. 3-4) of part probabilities.

    Args:
        x (Tensor[B, p, H, W]): non-negative part probabilities.

    Returns:
        Tensor[] in x's dtype: mean over the batch of the unbiased variance over parts
        of the L2-normalised areas; 0 (with zero gradient) when p == 1.
    """
    from pdnet.ops._checks import check_area_variance  # here: pdnet.ops imports this package
    check_area_variance(x)
    check_device("area_variance", x)
    area = area_sums(x)  # [B, p], fp32 (fp64 for fp64 input)
    if x.shape[1] < 2:
        return (area.sum() * 0.0).to(x.dtype)
    area = area / area.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [B, p]
    return area.var(dim=1, unbiased=True).mean().to(x.dtype)  # []
