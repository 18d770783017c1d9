"""Correlation assembly in Triton: M = sum_k (P^k + Y^k) * R^k.

Forward: one program per (pixel tile, channel tile, batch element) loops over the
p parts, reading each part's mask tile once for all its channels. Backward: one
program per (pixel tile, batch element) loops over channel tiles, holding all parts
as a [P_PAD, BLOCK_C, BLOCK_HW] tile:

    dP = dY = dM * R^k            (one tensor, returned for both inputs)
    dR^k = sum_c dM_c * (P^k_c + Y^k_c)
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from pdnet.ops._checks import check_assemble_parts

from ._common import INTERPRET, block_pow2, check_device, register_op, to_dtype


@triton.jit
def _assemble_fwd_kernel(
    PF,  # [B, p, C, HW] part features P, contiguous
    YF,  # [B, p, C, HW] attended features Y, contiguous
    R,  # [B, p, HW] part masks, contiguous
    M,  # [B, C, HW] output, contiguous
    P, C, HW,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if PF.dtype.element_ty == tl.float64 else tl.float32
    offs_s = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)  # [BHW]
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    b = tl.program_id(2).to(tl.int64)
    s_ok = offs_s < HW
    mask = (offs_c < C)[:, None] & s_ok[None, :]
    feat = offs_c[:, None] * HW + offs_s[None, :]  # [BC, BHW] offsets inside one part
    acc = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for k in range(0, P):
        part = b * P + k
        r = tl.load(R + part * HW + offs_s, mask=s_ok, other=0.0).to(ACC)  # [BHW]
        pf = tl.load(PF + part * C * HW + feat, mask=mask, other=0.0).to(ACC)
        yf = tl.load(YF + part * C * HW + feat, mask=mask, other=0.0).to(ACC)
        acc += (pf + yf) * r[None, :]
    tl.store(M + b * C * HW + feat, to_dtype(acc, M.dtype.element_ty), mask=mask)


@triton.jit
def _assemble_bwd_kernel(
    PF,  # [B, p, C, HW] contiguous
    YF,  # [B, p, C, HW] contiguous
    R,  # [B, p, HW] contiguous
    DM,  # [B, C, HW] upstream gradient, contiguous
    DPY,  # [B, p, C, HW] gradient of P (= gradient of Y), contiguous
    DR,  # [B, p, HW] gradient of R, contiguous
    P, C, HW,
    P_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if PF.dtype.element_ty == tl.float64 else tl.float32
    offs_s = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)  # [BHW]
    b = tl.program_id(1).to(tl.int64)
    kk = tl.arange(0, P_PAD)  # [PP]
    s_ok = offs_s < HW
    k_ok = kk < P
    r_off = (b * P + kk)[:, None] * HW + offs_s[None, :]  # [PP, BHW]
    r_mask = k_ok[:, None] & s_ok[None, :]
    r = tl.load(R + r_off, mask=r_mask, other=0.0).to(ACC)  # [PP, BHW]
    dr = tl.zeros([P_PAD, BLOCK_HW], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)  # [BC]
        c_ok = offs_c < C
        dm_mask = c_ok[:, None] & s_ok[None, :]
        dm = tl.load(DM + b * C * HW + offs_c[:, None] * HW + offs_s[None, :], mask=dm_mask, other=0.0).to(ACC)
        f_off = ((b * P + kk)[:, None, None] * C + offs_c[None, :, None]) * HW + offs_s[None, None, :]
        f_mask = k_ok[:, None, None] & dm_mask[None, :, :]  # [PP, BC, BHW]
        pf = tl.load(PF + f_off, mask=f_mask, other=0.0).to(ACC)
        yf = tl.load(YF + f_off, mask=f_mask, other=0.0).to(ACC)
        dr += tl.sum((pf + yf) * dm[None, :, :], 1)
        tl.store(DPY + f_off, to_dtype(dm[None, :, :] * r[:, None, :], DPY.dtype.element_ty), mask=f_mask)
    tl.store(DR + r_off, to_dtype(dr, DR.dtype.element_ty), mask=r_mask)


def _fwd(p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    B, P, C, h, w = p_feats.shape
    pf, yf, r = p_feats.contiguous(), y_feats.contiguous(), masks.contiguous()
    out = torch.empty((B, C, h, w), dtype=p_feats.dtype, device=p_feats.device)  # [B, C, h, w]
    HW = h * w
    if out.numel() == 0:
        return out.zero_()
    block_hw = min(32 if INTERPRET else 256, block_pow2(HW, 16))
    block_c = min(8 if INTERPRET else 16, block_pow2(C, 1))
    grid = (triton.cdiv(HW, block_hw), triton.cdiv(C, block_c), B)
    wrap_triton(_assemble_fwd_kernel)[grid](
        pf, yf, r, out, P, C, HW, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=4,
    )
    return out


def _fwd_fake(p_feats, y_feats, masks):
    B, _, C, h, w = p_feats.shape
    return p_feats.new_empty((B, C, h, w))


def _bwd(
    grad: torch.Tensor, p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    B, P, C, h, w = p_feats.shape
    pf, yf, r, dm = p_feats.contiguous(), y_feats.contiguous(), masks.contiguous(), grad.contiguous()
    dpy = torch.empty((B, P, C, h, w), dtype=p_feats.dtype, device=p_feats.device)
    dr = torch.empty((B, P, h, w), dtype=masks.dtype, device=masks.device)
    HW = h * w
    if B * P * HW == 0:
        return dpy, dr
    if C == 0:
        return dpy, dr.zero_()
    p_pad = block_pow2(P, minimum=1)
    block_hw = min(32 if INTERPRET else max(32, 1024 // p_pad), block_pow2(HW, 16))
    block_c = min(8, block_pow2(C, 1))
    grid = (triton.cdiv(HW, block_hw), B)
    wrap_triton(_assemble_bwd_kernel)[grid](
        pf, yf, r, dm, dpy, dr, P, C, HW, P_PAD=p_pad, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=4,
    )
    return dpy, dr


def _bwd_fake(grad, p_feats, y_feats, masks):
    return p_feats.new_empty(p_feats.shape), masks.new_empty(masks.shape)


assemble_parts_fwd = register_op("assemble_parts", _fwd, _fwd_fake)
assemble_parts_bwd = register_op("assemble_parts_backward", _bwd, _bwd_fake)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    p_feats, y_feats, masks = ctx.saved_tensors
    dpy, dr = assemble_parts_bwd(grad, p_feats, y_feats, masks)
    need = ctx.needs_input_grad
    return (dpy if need[0] else None), (dpy if need[1] else None), (dr if need[2] else None)


assemble_parts_fwd.register_autograd(_backward, setup_context=_setup_context)


def assemble_parts(p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Correlation assembly M = sum_k (P^k + Y^k) * R^k, differentiable in all inputs.

    Args:
        p_feats (Tensor[B, p, C, h, w]): part features P.
        y_feats (Tensor[B, p, C, h, w]): attended features Y.
        masks (Tensor[B, p, h, w]): part masks R.

    Returns:
        Tensor[B, C, h, w]
    """
    check_assemble_parts(p_feats, y_feats, masks)
    check_device("assemble_parts", p_feats)
    return assemble_parts_fwd(p_feats, y_feats, masks)
