"""Correlation assembly in Triton: M = sum_k (P^k + Y^k) * R^k.

Forward: one program per (pixel tile, channel tile, batch element) loops over the
p parts, reading each part's mask tile once for all its channels. Backward: one
program per (part, pixel tile, batch element) loops over channel tiles; the part is
the fastest grid axis, so the p programs reading the same dM tile run back to back
and share it in L2:

    dP = dY = dM * R^k            (one tensor, returned for both inputs)
    dR^k = sum_c dM_c * (P^k_c + Y^k_c)

Each of the two is computed only when asked for (FEATS_GRAD, MASKS_GRAD): without the
masks' gradient the backward does not read P and Y. The host functions do not validate
their inputs: pdnet.ops does.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, block_pow2, on_input_device, to_dtype


@triton.jit
def _assemble_parts_fwd_kernel(
    PF,  # [B, p, C, HW] part features P, contiguous
    YF,  # [B, p, C, HW] attended features Y, contiguous
    R,  # [B, p, HW] part masks, contiguous
    M,  # [B, C, HW] output, contiguous
    P, C, HW,  # parts, channels, pixels h * w
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
def _assemble_parts_bwd_kernel(
    PF,  # [B, p, C, HW] contiguous
    YF,  # [B, p, C, HW] contiguous
    R,  # [B, p, HW] contiguous
    DM,  # [B, C, HW] upstream gradient, contiguous
    DPY,  # [B, p, C, HW] gradient of P (= gradient of Y), contiguous (unused unless FEATS_GRAD)
    DR,  # [B, p, HW] gradient of R, contiguous (unused unless MASKS_GRAD)
    P, C, HW,  # parts, channels, pixels h * w
    FEATS_GRAD: tl.constexpr,
    MASKS_GRAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if PF.dtype.element_ty == tl.float64 else tl.float32
    k = tl.program_id(0)  # part: the fastest grid axis, so the p programs of a tile share dM in L2
    offs_s = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)  # [BHW]
    b = tl.program_id(2).to(tl.int64)
    part = b * P + k
    s_ok = offs_s < HW
    r = tl.load(R + part * HW + offs_s, mask=s_ok, other=0.0).to(ACC)  # [BHW]
    pf_base = PF + part * C * HW
    yf_base = YF + part * C * HW
    dpy_base = DPY + part * C * HW
    dm_base = DM + b * C * HW
    dr = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)  # [BC]
        mask = (offs_c < C)[:, None] & s_ok[None, :]
        feat = offs_c[:, None] * HW + offs_s[None, :]  # [BC, BHW]
        dm = tl.load(dm_base + feat, mask=mask, other=0.0).to(ACC)
        if MASKS_GRAD:
            pf = tl.load(pf_base + feat, mask=mask, other=0.0).to(ACC)
            yf = tl.load(yf_base + feat, mask=mask, other=0.0).to(ACC)
            dr += (pf + yf) * dm
        if FEATS_GRAD:
            tl.store(dpy_base + feat, to_dtype(dm * r[None, :], DPY.dtype.element_ty), mask=mask)
    if MASKS_GRAD:
        tl.store(DR + part * HW + offs_s, to_dtype(tl.sum(dr, 0), DR.dtype.element_ty), mask=s_ok)


_WARPS = 8


def _tiles(HW: int, C: int) -> tuple[int, int]:
    """(BLOCK_HW, BLOCK_C): 2048-element tiles, 8 per thread with 8 warps (~85 registers on sm_90)."""
    if INTERPRET:
        return min(32, block_pow2(HW, 16)), min(8, block_pow2(C, 1))
    block_hw = min(256, block_pow2(HW, 16))
    return block_hw, min(2048 // block_hw, block_pow2(C, 1))


@on_input_device
def assemble_parts_forward(p_feats: torch.Tensor, y_feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """out [B, C, h, w] in p_feats' dtype."""
    B, P, C, h, w = p_feats.shape
    pf, yf, r = p_feats.contiguous(), y_feats.contiguous(), masks.contiguous()
    out = torch.empty((B, C, h, w), dtype=p_feats.dtype, device=p_feats.device)  # [B, C, h, w]
    HW = h * w
    if out.numel() == 0:
        return out
    block_hw, block_c = _tiles(HW, C)
    grid = (triton.cdiv(HW, block_hw), triton.cdiv(C, block_c), B)
    wrap_triton(_assemble_parts_fwd_kernel)[grid](
        pf, yf, r, out, P, C, HW, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=_WARPS,
    )
    return out


@on_input_device
def assemble_parts_backward(
    grad_out: torch.Tensor,
    p_feats: torch.Tensor,
    y_feats: torch.Tensor,
    masks: torch.Tensor,
    feats_grad: bool,
    masks_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_feats [B, p, C, h, w], the gradient of both p_feats and y_feats, grad_masks
    [B, p, h, w]); each an empty tensor unless ``feats_grad`` / ``masks_grad``."""
    B, P, C, h, w = p_feats.shape
    HW = h * w
    dpy = p_feats.new_empty((B, P, C, h, w) if feats_grad else (0,))
    dr = masks.new_empty((B, P, h, w) if masks_grad else (0,))
    if not (feats_grad or masks_grad) or B * P * HW == 0:
        return dpy, dr
    if C == 0:  # no channel: the masks' gradient is an empty sum
        return dpy, dr.zero_()
    pf, yf, r, dm = p_feats.contiguous(), y_feats.contiguous(), masks.contiguous(), grad_out.contiguous()
    block_hw, block_c = _tiles(HW, C)
    grid = (P, triton.cdiv(HW, block_hw), B)
    wrap_triton(_assemble_parts_bwd_kernel)[grid](
        pf, yf, r, dm, dpy if feats_grad else dm, dr if masks_grad else r, P, C, HW,
        FEATS_GRAD=feats_grad, MASKS_GRAD=masks_grad, BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=_WARPS,
    )
    return dpy, dr
