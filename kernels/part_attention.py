"""Per-part cross-attention in Triton: all (batch, part) pairs as heads of one launch.

out[b, k] = softmax_keys(q[b, k] @ k[b, k]^T * scale + key_mask[b, k]) @ v[b, k]

Forward: one program per (query tile, head); online softmax over key tiles in the
log2 domain (exp2), so the Nq x Nk scores are never stored; it saves the per-row
log-sum-exp (log2 units). Backward by recomputation from that LSE: a preprocess
kernel (delta = rowsum(dO * O)), a dK/dV kernel looping over query tiles and a dQ
kernel looping over key tiles (no atomics, deterministic). The key mask gradient is
the column sum of dS, accumulated in the dK/dV kernel.

Rows whose scores are all -inf (every key masked): the reference's softmax gives NaN
there; these kernels give the row attention weights 0 (LSE = +inf), so its output is
0 v (0 for finite v) and no gradient flows through it. Otherwise NaN and inf propagate
as in the reference: a NaN or +inf score makes the row's sum l NaN (exp2(inf - inf)),
hence its output and LSE, and the backward's P and dS of that row.

Any Nq, Nk (masked tails), head dim 1..128 (padded to 16/32/64/128 as a constexpr),
fp16/bf16/fp32/fp64 inputs; accumulation in fp32 (fp64 for fp64).
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (
    INTERPRET,
    to_dtype,
    acc_dtype,
    block_pow2,
    check_device,
    dot_precision,
    mma,
    num_sms,
    register_op,
    split_scale,
)

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
MAX_HEAD_DIM = 128
MAX_HEADS = 65535  # grid axis 1 limit


# --------------------------------------------------------------------------- kernels
@triton.jit
def _attn_fwd_kernel(
    Q,  # [B, p, Nq, d]
    K,  # [B, p, Nk, d]
    V,  # [B, p, Nk, d]
    KM,  # [B, p, Nk] additive key mask (unused unless HAS_MASK)
    O,  # [B, p, Nq, d] contiguous
    LSE,  # [B, p, Nq] contiguous, log2-sum-exp2 of the scaled scores
    sq_b, sq_p, sq_n, sq_d,  # strides of Q
    sk_b, sk_p, sk_n, sk_d,  # strides of K
    sv_b, sv_p, sv_n, sv_d,  # strides of V
    sm_b, sm_p, sm_n,  # strides of KM
    P, Nq, Nk, d,  # parts, queries, keys, head dim
    qk_hi, qk_lo,  # scale * log2(e) as an fp32 pair (hi + lo)
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    qk_scale = tl.cast(qk_hi, ACC) + tl.cast(qk_lo, ACC)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    m_ok = offs_m < Nq
    d_ok = offs_d < d

    q_ptrs = Q + b * sq_b + part * sq_p + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BM, BD]
    k_base = K + b * sk_b + part * sk_p
    v_base = V + b * sv_b + part * sv_p
    km_base = KM + b * sm_b + part * sm_p

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], ACC)  # running sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)  # running numerator
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)  # [BN]
        n_ok = offs_n < Nk
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        s = mma(q, tl.trans(k), ACC, PRECISION) * qk_scale  # [BM, BN]
        if HAS_MASK:
            km = tl.load(km_base + offs_n * sm_n, mask=n_ok, other=0.0).to(ACC)  # [BN]
            s = s + km[None, :] * _LOG2E
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all keys masked so far
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])  # [BM, BN]
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + mma(to_dtype(p, V.dtype.element_ty), v, ACC, PRECISION)
        m_i = m_new

    # l_i is 0 only when every key of the row was masked; a NaN or +inf score made it NaN
    has_keys = l_i != 0.0
    # a row without a live key has weights 0: acc = 0 v, i.e. 0 (NaN where v is not finite)
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], acc * 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    row = head.to(tl.int64) * Nq + offs_m  # [BM] row of the [B*p, Nq] LSE
    tl.store(LSE + row, lse, mask=m_ok)
    o_ptrs = O + row[:, None] * d + offs_d[None, :]
    tl.store(o_ptrs, to_dtype(out, O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _attn_bwd_preprocess_kernel(
    O,  # [B, p, Nq, d] contiguous
    DO,  # [B, p, Nq, d]
    DELTA,  # [B, p, Nq] contiguous: rowsum(dO * O)
    sdo_b, sdo_p, sdo_n, sdo_d,  # strides of DO
    P, Nq, d,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if O.dtype.element_ty == tl.float64 else tl.float32
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Nq)[:, None] & (offs_d < d)[None, :]
    row = head.to(tl.int64) * Nq + offs_m
    o = tl.load(O + row[:, None] * d + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    do_ptrs = DO + b * sdo_b + part * sdo_p + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d
    do = tl.load(do_ptrs, mask=mask, other=0.0).to(ACC)
    tl.store(DELTA + row, tl.sum(o * do, 1), mask=offs_m < Nq)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # [B, p, Nq, d]
    K,  # [B, p, Nk, d]
    V,  # [B, p, Nk, d]
    KM,  # [B, p, Nk] key mask (unused unless HAS_MASK)
    DO,  # [B, p, Nq, d]
    LSE,  # [B, p, Nq] contiguous
    DELTA,  # [B, p, Nq] contiguous
    DK,  # [B, p, Nk, d] contiguous
    DV,  # [B, p, Nk, d] contiguous
    DKM,  # [B, p, Nk] contiguous (unused unless MASK_GRAD)
    sq_b, sq_p, sq_n, sq_d,
    sk_b, sk_p, sk_n, sk_d,
    sv_b, sv_p, sv_n, sv_d,
    sm_b, sm_p, sm_n,
    sdo_b, sdo_p, sdo_n, sdo_d,
    P, Nq, Nk, d,
    qk_hi, qk_lo,  # scale * log2(e)
    sc_hi, sc_lo,  # scale
    HAS_MASK: tl.constexpr,
    MASK_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query tile (looped)
    BLOCK_N: tl.constexpr,  # key tile (this program's)
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    pid_n = tl.program_id(0)
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    qk_scale = tl.cast(qk_hi, ACC) + tl.cast(qk_lo, ACC)
    scale = tl.cast(sc_hi, ACC) + tl.cast(sc_lo, ACC)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Nk
    d_ok = offs_d < d
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * sk_b + part * sk_p + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
    v = tl.load(V + b * sv_b + part * sv_p + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
    if HAS_MASK:
        km = tl.load(KM + b * sm_b + part * sm_p + offs_n * sm_n, mask=n_ok, other=0.0).to(ACC) * _LOG2E
    q_base = Q + b * sq_b + part * sq_p
    do_base = DO + b * sdo_b + part * sdo_p
    row0 = head.to(tl.int64) * Nq

    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dkm = tl.zeros([BLOCK_N], ACC)
    for start_m in range(0, Nq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)  # [BM]
        m_ok = offs_m < Nq
        qo_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d, mask=qo_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d, mask=qo_mask, other=0.0)
        lse = tl.load(LSE + row0 + offs_m, mask=m_ok, other=float("inf"))  # +inf: row gives p = 0
        delta = tl.load(DELTA + row0 + offs_m, mask=m_ok, other=0.0)
        s_t = mma(k, tl.trans(q), ACC, PRECISION) * qk_scale  # [BN, BM]
        if HAS_MASK:
            s_t = s_t + km[:, None]
        p_t = tl.exp2(s_t - lse[None, :])  # [BN, BM] attention probabilities, transposed
        p_t = tl.where(m_ok[None, :], p_t, 0.0)  # padding rows: 0 even where k is not finite
        dv += mma(to_dtype(p_t, DO.dtype.element_ty), do, ACC, PRECISION)
        dp_t = mma(v, tl.trans(do), ACC, PRECISION)  # [BN, BM]
        ds_t = tl.where(m_ok[None, :], p_t * (dp_t - delta[None, :]), 0.0)  # [BN, BM] d loss / d scores
        dk += mma(to_dtype(ds_t, Q.dtype.element_ty), q, ACC, PRECISION)
        if MASK_GRAD:
            dkm += tl.sum(ds_t, 1)

    rows = head.to(tl.int64) * Nk + offs_n  # [BN] rows of [B*p, Nk]
    tl.store(DK + rows[:, None] * d + offs_d[None, :], to_dtype(dk * scale, DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + rows[:, None] * d + offs_d[None, :], to_dtype(dv, DV.dtype.element_ty), mask=kv_mask)
    if MASK_GRAD:
        tl.store(DKM + rows, to_dtype(dkm, DKM.dtype.element_ty), mask=n_ok)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # [B, p, Nq, d]
    K,  # [B, p, Nk, d]
    V,  # [B, p, Nk, d]
    KM,  # [B, p, Nk] (unused unless HAS_MASK)
    DO,  # [B, p, Nq, d]
    LSE,  # [B, p, Nq] contiguous
    DELTA,  # [B, p, Nq] contiguous
    DQ,  # [B, p, Nq, d] contiguous
    sq_b, sq_p, sq_n, sq_d,
    sk_b, sk_p, sk_n, sk_d,
    sv_b, sv_p, sv_n, sv_d,
    sm_b, sm_p, sm_n,
    sdo_b, sdo_p, sdo_n, sdo_d,
    P, Nq, Nk, d,
    qk_hi, qk_lo,
    sc_hi, sc_lo,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,  # query tile (this program's)
    BLOCK_N: tl.constexpr,  # key tile (looped)
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    qk_scale = tl.cast(qk_hi, ACC) + tl.cast(qk_lo, ACC)
    scale = tl.cast(sc_hi, ACC) + tl.cast(sc_lo, ACC)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    d_ok = offs_d < d
    qo_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * sq_b + part * sq_p + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d, mask=qo_mask, other=0.0)
    do = tl.load(DO + b * sdo_b + part * sdo_p + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d, mask=qo_mask, other=0.0)
    row = head.to(tl.int64) * Nq + offs_m
    lse = tl.load(LSE + row, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
    k_base = K + b * sk_b + part * sk_p
    v_base = V + b * sv_b + part * sv_p
    km_base = KM + b * sm_b + part * sm_p

    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Nk
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        s = mma(q, tl.trans(k), ACC, PRECISION) * qk_scale  # [BM, BN]
        if HAS_MASK:
            km = tl.load(km_base + offs_n * sm_n, mask=n_ok, other=0.0).to(ACC)
            s = s + km[None, :] * _LOG2E
        s = tl.where(n_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # [BM, BN]
        dp = mma(do, tl.trans(v), ACC, PRECISION)  # [BM, BN]
        ds = tl.where(n_ok[None, :], p * (dp - delta[:, None]), 0.0)  # padding keys: 0
        dq += mma(to_dtype(ds, K.dtype.element_ty), k, ACC, PRECISION)

    tl.store(DQ + row[:, None] * d + offs_d[None, :], to_dtype(dq * scale, DQ.dtype.element_ty), mask=qo_mask)


# --------------------------------------------------------------------------- launch configs
def _configs(Nq: int, Nk: int, heads: int, d: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Tile sizes and launch options: {"fwd"|"dkdv"|"dq": (BLOCK_M, BLOCK_N, num_warps, num_stages)}.

    In dkdv BLOCK_N is the program's key tile and BLOCK_M the looped query tile; in
    fwd and dq BLOCK_M is the program's query tile. Interpreter tiles are small so
    that the CPU tests cover several tiles and ragged tails. The GPU tiles are
    untuned starting points (bench/bench_ops.py --attn-config overrides them); they
    halve the program's tile when the grid would not fill the GPU.
    """
    if INTERPRET:
        return {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
    if dtype == torch.float64:  # gradchecks: small tiles; smaller still at d > 64 (sm_86: 99 KB per block)
        if d > 64:
            return {"fwd": (32, 32, 4, 1), "dkdv": (16, 16, 4, 1), "dq": (16, 16, 4, 1)}
        return {"fwd": (32, 32, 4, 2), "dkdv": (32, 32, 4, 2), "dq": (32, 32, 4, 2)}
    if dtype == torch.float32:
        return {"fwd": (64, 32, 4, 2), "dkdv": (16, 64, 4, 2), "dq": (64, 16, 4, 2)}
    sms = num_sms(device)
    warps = 8 if d > 64 else 4
    q_tile = 128 if triton.cdiv(Nq, 128) * heads >= sms else 64
    k_tile = 128 if d <= 64 and triton.cdiv(Nk, 128) * heads >= sms else 64
    return {
        "fwd": (q_tile, 64, warps, 3),
        "dkdv": (32, k_tile, warps, 3),
        "dq": (q_tile if d <= 64 else 64, 32, warps, 3),
    }


def _mask_args(key_mask: Optional[torch.Tensor], fallback: torch.Tensor):
    """Pointer and strides for the key mask (a dummy pointer when there is none)."""
    if key_mask is None:
        return fallback, (0, 0, 0)
    return key_mask, key_mask.stride()


# --------------------------------------------------------------------------- ops
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    B, P, Nq, d = q.shape
    Nk = k.shape[2]
    out = torch.empty((B, P, Nq, d), dtype=q.dtype, device=q.device)  # [B, p, Nq, d]
    lse = torch.empty((B, P, Nq), dtype=acc_dtype(q.dtype), device=q.device)  # [B, p, Nq]
    if B * P * Nq == 0:
        return out, lse
    BM, BN, warps, stages = _configs(Nq, Nk, B * P, d, q.dtype, q.device)["fwd"]
    km, km_strides = _mask_args(key_mask, q)
    qk_hi, qk_lo = split_scale(scale * LOG2E)
    grid = (triton.cdiv(Nq, BM), B * P)
    wrap_triton(_attn_fwd_kernel)[grid](
        q, k, v, km, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *km_strides,
        P, Nq, Nk, d, qk_hi, qk_lo,
        HAS_MASK=key_mask is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_pow2(d),
        PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=stages,
    )
    return out, lse


def _fwd_fake(q, k, v, scale, key_mask):
    B, P, Nq, d = q.shape
    return q.new_empty((B, P, Nq, d)), q.new_empty((B, P, Nq), dtype=acc_dtype(q.dtype))


def _bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, scale: float, key_mask: Optional[torch.Tensor], mask_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, P, Nq, d = q.shape
    Nk = k.shape[2]
    dq = torch.empty((B, P, Nq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, P, Nk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, P, Nk, d), dtype=v.dtype, device=v.device)
    mask_grad = mask_grad and key_mask is not None
    dkm = (
        torch.empty((B, P, Nk), dtype=key_mask.dtype, device=q.device)
        if mask_grad
        else q.new_empty((0,))
    )
    if B * P * Nq == 0:
        return dq, dk.zero_(), dv.zero_(), dkm.zero_()
    cfg = _configs(Nq, Nk, B * P, d, q.dtype, q.device)
    BD = block_pow2(d)
    precision = dot_precision(q.dtype)
    km, km_strides = _mask_args(key_mask, q)
    qk_hi, qk_lo = split_scale(scale * LOG2E)
    sc_hi, sc_lo = split_scale(scale)
    delta = torch.empty_like(lse)  # [B, p, Nq]
    pre_bm = 64 if not INTERPRET else 32
    wrap_triton(_attn_bwd_preprocess_kernel)[(triton.cdiv(Nq, pre_bm), B * P)](
        out, dout, delta, *dout.stride(), P, Nq, d, BLOCK_M=pre_bm, BLOCK_D=BD,
    )
    BM, BN, warps, stages = cfg["dkdv"]
    wrap_triton(_attn_bwd_dkdv_kernel)[(triton.cdiv(Nk, BN), B * P)](
        q, k, v, km, dout, lse, delta, dk, dv, dkm if mask_grad else dk,
        *q.stride(), *k.stride(), *v.stride(), *km_strides, *dout.stride(),
        P, Nq, Nk, d, qk_hi, qk_lo, sc_hi, sc_lo,
        HAS_MASK=key_mask is not None, MASK_GRAD=mask_grad,
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, PRECISION=precision, num_warps=warps, num_stages=stages,
    )
    BM, BN, warps, stages = cfg["dq"]
    wrap_triton(_attn_bwd_dq_kernel)[(triton.cdiv(Nq, BM), B * P)](
        q, k, v, km, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *km_strides, *dout.stride(),
        P, Nq, Nk, d, qk_hi, qk_lo, sc_hi, sc_lo,
        HAS_MASK=key_mask is not None,
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, PRECISION=precision, num_warps=warps, num_stages=stages,
    )
    return dq, dk, dv, dkm


def _bwd_fake(dout, q, k, v, out, lse, scale, key_mask, mask_grad):
    dkm_shape = tuple(key_mask.shape) if (mask_grad and key_mask is not None) else (0,)
    dkm_dtype = key_mask.dtype if (mask_grad and key_mask is not None) else q.dtype
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
        q.new_empty(dkm_shape, dtype=dkm_dtype),
    )


part_attention_fwd = register_op("part_attention", _fwd, _fwd_fake)
part_attention_bwd = register_op("part_attention_backward", _bwd, _bwd_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, key_mask = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, key_mask)
    ctx.scale = scale


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, key_mask = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the differentiable formula, exact at any order
        from pdnet.ops._higher_order import attention_with_lse, backward_by_formula

        return backward_by_formula(attention_with_lse, (q, k, v, ctx.scale, key_mask), (dout, None),
                                   ctx.needs_input_grad)
    mask_grad = key_mask is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dkm = part_attention_bwd(dout, q, k, v, out, lse, ctx.scale, key_mask, mask_grad)
    return dq, dk, dv, None, (dkm if mask_grad else None)


part_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public
def part_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float = 1.0,
    key_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-part attention, differentiable in q, k, v and key_mask.

    Args:
        q (Tensor[B, p, Nq, d]): queries; d <= 128.
        k (Tensor[B, p, Nk, d]): keys.
        v (Tensor[B, p, Nk, d]): values.
        scale (float): multiplies q k^T.
        key_mask (Tensor[B, p, Nk], optional): additive key mask (-inf drops a key).

    Returns:
        Tensor[B, p, Nq, d]; rows whose keys are all -inf are 0 (gradient 0).
    """
    from pdnet.ops._checks import check_part_attention  # here: pdnet.ops imports this package
    check_part_attention(q, k, v, scale, key_mask)
    check_device("part_attention", q)
    B, P, _, d = q.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(
            f"part_attention (triton): head dim d={d} is above {MAX_HEAD_DIM} (q {tuple(q.shape)}); "
            "use backend='reference' or 'cpp'"
        )
    if B * P > MAX_HEADS:
        raise ValueError(
            f"part_attention (triton): B*p = {B * P} exceeds the grid limit {MAX_HEADS} (q {tuple(q.shape)})"
        )
    return part_attention_fwd(q, k, v, float(scale), key_mask)[0]
