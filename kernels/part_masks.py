"""Part masks in Triton: R = softmax over parts(D) * sigmoid(S), or * G (ground truth).

One program per (pixel tile, batch element) holds all p parts of its pixels as a
[P_PAD, BLOCK] tile (p padded to a power of two, a constexpr), so the softmax over
parts never leaves registers. The backward recomputes the softmax from D:

    dD_k = sm_k * (g * dR_k - sum_j sm_j * g * dR_j),
    dgate = sum_k dR_k * sm_k  (times sigma * (1 - sigma) for the saliency logit).

The host functions do not validate their inputs: pdnet.ops does.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import INTERPRET, block_pow2, on_input_device, to_dtype


@triton.jit
def _softmax_gate(D, G, b, offs, s_ok, kk, k_ok, P, HW, GATE_IS_LOGIT: tl.constexpr, ACC: tl.constexpr):
    """Softmax over parts [P_PAD, BLOCK] of D[b] and the gate value [BLOCK] of G[b].

    D: [B, p, HW], G: [B, 1, HW] (contiguous); offs / s_ok: [BLOCK] pixels and which are
    in range; kk / k_ok: [P_PAD] parts and which are real.
    """
    ptrs = b * P * HW + kk[:, None] * HW + offs[None, :]
    x = tl.load(D + ptrs, mask=k_ok[:, None] & s_ok[None, :], other=0.0).to(ACC)
    x = tl.where(k_ok[:, None], x, float("-inf"))  # padded parts take no probability
    e = tl.exp(x - tl.max(x, 0)[None, :])
    sm = e / tl.sum(e, 0)[None, :]
    g = tl.load(G + b * HW + offs, mask=s_ok, other=0.0).to(ACC)
    if GATE_IS_LOGIT:
        g = 1.0 / (1.0 + tl.exp(-g))
    return sm, g, ptrs


@triton.jit
def _part_masks_fwd_kernel(
    D,  # [B, p, HW] part logits, contiguous
    G,  # [B, 1, HW] gate (saliency logit or ground truth), contiguous
    R,  # [B, p, HW] output, contiguous
    P, HW,  # parts, pixels h * w
    GATE_IS_LOGIT: tl.constexpr,
    P_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if D.dtype.element_ty == tl.float64 else tl.float32
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] pixels
    b = tl.program_id(1).to(tl.int64)
    kk = tl.arange(0, P_PAD)  # [P_PAD] parts
    s_ok = offs < HW
    k_ok = kk < P
    sm, g, ptrs = _softmax_gate(D, G, b, offs, s_ok, kk, k_ok, P, HW, GATE_IS_LOGIT, ACC)
    tl.store(R + ptrs, to_dtype(sm * g[None, :], R.dtype.element_ty), mask=k_ok[:, None] & s_ok[None, :])


@triton.jit
def _part_masks_bwd_kernel(
    D,  # [B, p, HW] contiguous
    G,  # [B, 1, HW] contiguous
    DR,  # [B, p, HW] upstream gradient, contiguous
    DD,  # [B, p, HW] gradient of D, contiguous
    DG,  # [B, 1, HW] gradient of G, contiguous (unused unless GATE_GRAD)
    P, HW,  # parts, pixels h * w
    GATE_IS_LOGIT: tl.constexpr,
    GATE_GRAD: tl.constexpr,
    P_PAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if D.dtype.element_ty == tl.float64 else tl.float32
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b = tl.program_id(1).to(tl.int64)
    kk = tl.arange(0, P_PAD)
    s_ok = offs < HW
    k_ok = kk < P
    mask = k_ok[:, None] & s_ok[None, :]
    sm, g, ptrs = _softmax_gate(D, G, b, offs, s_ok, kk, k_ok, P, HW, GATE_IS_LOGIT, ACC)
    dr = tl.load(DR + ptrs, mask=mask, other=0.0).to(ACC)  # [P_PAD, BLOCK]
    dsm = dr * g[None, :]
    dd = sm * (dsm - tl.sum(sm * dsm, 0)[None, :])
    tl.store(DD + ptrs, to_dtype(dd, DD.dtype.element_ty), mask=mask)
    if GATE_GRAD:
        dg = tl.sum(dr * sm, 0)
        if GATE_IS_LOGIT:
            dg = dg * g * (1.0 - g)
        tl.store(DG + b * HW + offs, to_dtype(dg, DG.dtype.element_ty), mask=s_ok)


def _launch_shape(P: int, HW: int, B: int):
    """(P_PAD, BLOCK, grid): [P_PAD, BLOCK] tiles of 4096 elements, 16 per thread with 8 warps."""
    p_pad = block_pow2(P, minimum=1)
    block = 64 if INTERPRET else max(128, 4096 // p_pad)
    block = min(block, block_pow2(HW, minimum=16))
    return p_pad, block, (triton.cdiv(HW, block), B)


@on_input_device
def part_masks_forward(part_logits: torch.Tensor, gate: torch.Tensor, gate_is_logit: bool) -> torch.Tensor:
    """masks [B, p, h, w] in part_logits' dtype."""
    B, P, h, w = part_logits.shape
    d = part_logits.contiguous()  # [B, p, h, w]
    g = gate.contiguous()  # [B, 1, h, w]
    out = torch.empty((B, P, h, w), dtype=part_logits.dtype, device=part_logits.device)
    if out.numel() == 0:
        return out
    p_pad, block, grid = _launch_shape(P, h * w, B)
    wrap_triton(_part_masks_fwd_kernel)[grid](
        d, g, out, P, h * w, GATE_IS_LOGIT=gate_is_logit, P_PAD=p_pad, BLOCK=block, num_warps=8,
    )
    return out


@on_input_device
def part_masks_backward(
    grad_out: torch.Tensor,
    part_logits: torch.Tensor,
    masks: torch.Tensor,
    gate: torch.Tensor,
    gate_is_logit: bool,
    gate_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_part_logits [B, p, h, w], grad_gate [B, 1, h, w] or, unless ``gate_grad``, an
    empty tensor). The kernel recomputes the softmax from part_logits: it does not read
    ``masks`` (the forward's output, which the op saves for every backend)."""
    B, P, h, w = part_logits.shape
    d = part_logits.contiguous()
    g = gate.contiguous()
    dr = grad_out.contiguous()  # [B, p, h, w]
    dd = torch.empty((B, P, h, w), dtype=part_logits.dtype, device=part_logits.device)
    dg = gate.new_empty((B, 1, h, w) if gate_grad else (0,))
    if dd.numel() == 0:
        return dd, dg.zero_()
    p_pad, block, grid = _launch_shape(P, h * w, B)
    wrap_triton(_part_masks_bwd_kernel)[grid](
        d, g, dr, dd, dg if gate_grad else dd, P, h * w,
        GATE_IS_LOGIT=gate_is_logit, GATE_GRAD=gate_grad, P_PAD=p_pad, BLOCK=block, num_warps=8,
    )
    return dd, dg
