"""Per-part cross-attention in Triton: all (batch, part) pairs as heads of one launch.

out[b, k] = softmax_keys(q[b, k] @ k[b, k]^T * scale + key_mask[b, k]) @ v[b, k]

Forward: one program per (query tile, head); online softmax over key tiles in the
log2 domain (exp2), so the Nq x Nk scores are never stored. It stores the per-row
log-sum-exp in natural-log units (the op's contract, pdnet.ops.part_attention),
converting from the log2 domain at the store. Backward by recomputation from that LSE
(converted back to log2 units at the loads): a preprocess kernel
(delta = rowsum(dO * O) - dLSE), then one backward kernel launched twice: over key
tiles for dK/dV (looping over query tiles; KEYS) and over query tiles for dQ (looping
over key tiles), no atomics, deterministic. The key mask gradient is the column sum of
dS, accumulated with dK/dV.

Rows whose scores are all -inf (every key masked) have attention weights 0: the
output is 0 v (0 for finite v), the LSE is -inf, and the backward treats an LSE of
-inf as "no weights", so no gradient flows through the row. Otherwise NaN and inf
propagate as in the reference: a NaN or +inf score makes the row's sum l NaN
(exp2(inf - inf)), hence its output and LSE, and the backward's P and dS of that row.

Any Nq, Nk (masked tails), head dim 1..MAX_HEAD_DIM (padded to 16/32/64/128 as a
constexpr), B * p <= MAX_HEADS, fp16/bf16/fp32/fp64 inputs; accumulation in fp32 (fp64
for fp64). The host functions do not validate their inputs: pdnet.ops does.
"""
import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (
    INTERPRET,
    acc_dtype,
    block_pow2,
    dot_precision,
    mma,
    num_sms,
    on_input_device,
    split_scale,
    to_dtype,
)

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)
#: largest head dim d the kernels take (BLOCK_D is at most 128)
MAX_HEAD_DIM = 128
#: largest number of heads B * p (the grid's axis 1 limit)
MAX_HEADS = 65535


@triton.jit
def _lse_log2(lse):
    """A stored natural-log LSE row [BM] in log2 units; -inf (no live key) becomes +inf,
    so that exp2(s - lse) is 0 on every key of the row: no weights, no gradient."""
    return tl.where(lse == float("-inf"), float("inf"), lse * _LOG2E)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _part_attention_fwd_kernel(
    Q,  # [B, p, Nq, d]
    K,  # [B, p, Nk, d]
    V,  # [B, p, Nk, d]
    KM,  # [B, p, Nk] additive key mask (unused unless HAS_MASK)
    OUT,  # [B, p, Nq, d] contiguous
    LSE,  # [B, p, Nq] contiguous, natural-log log-sum-exp of the scaled, masked scores
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
    lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * _LN2, float("-inf"))
    row = head.to(tl.int64) * Nq + offs_m  # [BM] row of the [B*p, Nq] LSE
    tl.store(LSE + row, lse, mask=m_ok)
    o_ptrs = OUT + row[:, None] * d + offs_d[None, :]
    tl.store(o_ptrs, to_dtype(out, OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _part_attention_bwd_preprocess_kernel(
    OUT,  # [B, p, Nq, d] contiguous
    DO,  # [B, p, Nq, d]
    DLSE,  # [B, p, Nq] contiguous gradient of the LSE (unused unless HAS_DLSE)
    DELTA,  # [B, p, Nq] contiguous: rowsum(dO * O) - dLSE
    sdo_b, sdo_p, sdo_n, sdo_d,  # strides of DO
    P, Nq, d,  # parts, queries, head dim
    HAS_DLSE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if OUT.dtype.element_ty == tl.float64 else tl.float32
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Nq)[:, None] & (offs_d < d)[None, :]
    row = head.to(tl.int64) * Nq + offs_m
    o = tl.load(OUT + row[:, None] * d + offs_d[None, :], mask=mask, other=0.0).to(ACC)
    do_ptrs = DO + b * sdo_b + part * sdo_p + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d
    do = tl.load(do_ptrs, mask=mask, other=0.0).to(ACC)
    delta = tl.sum(o * do, 1)  # [BM]
    if HAS_DLSE:  # d lse / d scores = P: the LSE's gradient enters dS = P (dP - delta) as -dLSE
        delta -= tl.load(DLSE + row, mask=offs_m < Nq, other=0.0).to(ACC)
    tl.store(DELTA + row, delta, mask=offs_m < Nq)


@triton.jit
def _part_attention_bwd_kernel(
    Q,  # [B, p, Nq, d]
    K,  # [B, p, Nk, d]
    V,  # [B, p, Nk, d]
    KM,  # [B, p, Nk] key mask (unused unless HAS_MASK)
    DO,  # [B, p, Nq, d]
    LSE,  # [B, p, Nq] contiguous
    DELTA,  # [B, p, Nq] contiguous
    DQ,  # [B, p, Nq, d] contiguous (written unless KEYS)
    DK,  # [B, p, Nk, d] contiguous (written when KEYS)
    DV,  # [B, p, Nk, d] contiguous (written when KEYS)
    DKM,  # [B, p, Nk] contiguous (written when KEYS and MASK_GRAD)
    sq_b, sq_p, sq_n, sq_d,  # strides of Q
    sk_b, sk_p, sk_n, sk_d,  # strides of K
    sv_b, sv_p, sv_n, sv_d,  # strides of V
    sm_b, sm_p, sm_n,  # strides of KM
    sdo_b, sdo_p, sdo_n, sdo_d,  # strides of DO
    P, Nq, Nk, d,  # parts, queries, keys, head dim
    qk_hi, qk_lo,  # scale * log2(e)
    sc_hi, sc_lo,  # scale
    HAS_MASK: tl.constexpr,
    MASK_GRAD: tl.constexpr,
    KEYS: tl.constexpr,  # True: one program per key tile, dK / dV (/ dKM); False: one per query tile, dQ
    BLOCK_M: tl.constexpr,  # query tile (looped when KEYS, else this program's)
    BLOCK_N: tl.constexpr,  # key tile (this program's when KEYS, else looped)
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The backward by recomputation from the LSE, in two launches: KEYS (dK, dV and the
    key mask's gradient, looping over query tiles) and not KEYS (dQ, looping over key tiles)."""
    ACC: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
    head = tl.program_id(1)
    b = (head // P).to(tl.int64)
    part = (head % P).to(tl.int64)
    qk_scale = tl.cast(qk_hi, ACC) + tl.cast(qk_lo, ACC)
    scale = tl.cast(sc_hi, ACC) + tl.cast(sc_lo, ACC)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d
    q_base = Q + b * sq_b + part * sq_p
    do_base = DO + b * sdo_b + part * sdo_p
    k_base = K + b * sk_b + part * sk_p
    v_base = V + b * sv_b + part * sv_p
    km_base = KM + b * sm_b + part * sm_p
    row0 = head.to(tl.int64) * Nq

    if KEYS:
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        n_ok = offs_n < Nk
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        if HAS_MASK:
            km = tl.load(km_base + offs_n * sm_n, mask=n_ok, other=0.0).to(ACC) * _LOG2E
        dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        dkm = tl.zeros([BLOCK_N], ACC)
        for start_m in range(0, Nq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)  # [BM]
            m_ok = offs_m < Nq
            qo_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d, mask=qo_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d, mask=qo_mask, other=0.0)
            lse = _lse_log2(tl.load(LSE + row0 + offs_m, mask=m_ok, other=float("-inf")))  # padding rows: p = 0
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
    else:
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
        m_ok = offs_m < Nq
        qo_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d, mask=qo_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * sdo_n + offs_d[None, :] * sdo_d, mask=qo_mask, other=0.0)
        row = row0 + offs_m
        lse = _lse_log2(tl.load(LSE + row, mask=m_ok, other=float("-inf")))
        delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start_n in range(0, Nk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)  # [BN]
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
    if dtype == torch.float32:  # 8 warps at d > 64: with 4, IEEE fp32 products spill about 1 KB per thread
        w = 8 if d > 64 else 4
        return {"fwd": (64, 32, w, 2), "dkdv": (16, 64, w, 2), "dq": (64, 16, w, 2)}
    sms = num_sms(device)
    q_tile = 128 if triton.cdiv(Nq, 128) * heads >= sms else 64
    k_tile = 128 if d <= 64 and triton.cdiv(Nk, 128) * heads >= sms else 64
    dq_tile = q_tile if d <= 64 else 64

    def warps(rows: int) -> int:
        # 8 warps where a program owns 128 rows or d > 64: with 4, the fp32 accumulators of
        # such a tile (dK and dV of 128 keys above all) spill registers on sm_86 and sm_90
        return 8 if d > 64 or rows >= 128 else 4

    return {
        "fwd": (q_tile, 64, warps(q_tile), 3),
        "dkdv": (32, k_tile, warps(k_tile), 3),
        "dq": (dq_tile, 32, warps(dq_tile), 3),
    }


def _mask_args(key_mask: torch.Tensor | None, fallback: torch.Tensor):
    """Pointer and strides for the key mask (a dummy pointer when there is none)."""
    if key_mask is None:
        return fallback, (0, 0, 0)
    return key_mask, key_mask.stride()


# --------------------------------------------------------------------------- host functions
@on_input_device
def part_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, p, Nq, d] in q's dtype, lse [B, p, Nq] in the accumulation dtype)."""
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
    wrap_triton(_part_attention_fwd_kernel)[grid](
        q, k, v, km, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *km_strides,
        P, Nq, Nk, d, qk_hi, qk_lo,
        HAS_MASK=key_mask is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=block_pow2(d),
        PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=stages,
    )
    return out, lse


@on_input_device
def part_attention_backward(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    key_mask: torch.Tensor | None,
    key_mask_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dkey_mask): dkey_mask [B, p, Nk] in key_mask's dtype when
    ``key_mask_grad``, else an empty tensor of the accumulation dtype."""
    B, P, Nq, d = q.shape
    Nk = k.shape[2]
    dq = torch.empty((B, P, Nq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, P, Nk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, P, Nk, d), dtype=v.dtype, device=v.device)
    mask_grad = key_mask_grad and key_mask is not None
    if mask_grad:
        dkm = torch.empty((B, P, Nk), dtype=key_mask.dtype, device=q.device)
    else:
        dkm = q.new_empty((0,), dtype=acc_dtype(q.dtype))
    if B * P * Nq == 0:  # no query: nothing flows to the keys
        return dq, dk.zero_(), dv.zero_(), dkm.zero_()
    cfg = _configs(Nq, Nk, B * P, d, q.dtype, q.device)
    BD = block_pow2(d)
    precision = dot_precision(q.dtype)
    km, km_strides = _mask_args(key_mask, q)
    qk_hi, qk_lo = split_scale(scale * LOG2E)
    sc_hi, sc_lo = split_scale(scale)
    out, lse = out.contiguous(), lse.contiguous()
    dlse = grad_lse.contiguous() if grad_lse is not None else lse
    delta = torch.empty_like(lse)  # [B, p, Nq]
    pre_bm = 64 if not INTERPRET else 32
    wrap_triton(_part_attention_bwd_preprocess_kernel)[(triton.cdiv(Nq, pre_bm), B * P)](
        out, grad_out, dlse, delta, *grad_out.stride(), P, Nq, d,
        HAS_DLSE=grad_lse is not None, BLOCK_M=pre_bm, BLOCK_D=BD,
    )
    args = (
        q, k, v, km, grad_out, lse, delta, dq, dk, dv, dkm if mask_grad else dk,
        *q.stride(), *k.stride(), *v.stride(), *km_strides, *grad_out.stride(),
        P, Nq, Nk, d, qk_hi, qk_lo, sc_hi, sc_lo,
    )
    for keys, tiles, n in ((True, cfg["dkdv"], Nk), (False, cfg["dq"], Nq)):
        BM, BN, warps, stages = tiles
        wrap_triton(_part_attention_bwd_kernel)[(triton.cdiv(n, BN if keys else BM), B * P)](
            *args, HAS_MASK=key_mask is not None, MASK_GRAD=mask_grad and keys, KEYS=keys,
            BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, PRECISION=precision, num_warps=warps, num_stages=stages,
        )
    return dq, dk, dv, dkm
