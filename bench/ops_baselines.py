"""The op benchmark's baselines and its attention + assembly composite (bench/bench_ops.py).

Baselines (backend-less rows, CUDA by default): part_attention through torch's
``scaled_dot_product_attention``, as ``sdpa_heads`` (one call, the parts as heads) and
``sdpa_per_part`` (one call per part, as a direct port of a per-part loop).

Composite ``attention_assembly``: the IPDA step the model runs after its projections,
``assemble_parts(P, Y, R)`` with ``Y`` the attention output ``[B, p, N, d]`` viewed as a
``[B, p, d, h, w]`` feature map (N = h * w; the model's 1x1 output projection, the same on
every side, is left out, so C = d). A kernel backend computes both ops; a baseline computes
the attention and the reference computes the assembly, so that ``sdpa_per_part`` here is
"SDPA per part plus assembly", the figure the CUDA attention's forward + backward is set
against. Its FLOPs are the attention's; its bytes those of both ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from ops import cases as C  # tests/ops/cases.py (bench_ops.py puts tests/ on sys.path)

from pdnet import ops

#: the composite's op name in the rows
ATTENTION_ASSEMBLY = "attention_assembly"


def sdpa_heads(q, k, v, scale=1.0, key_mask=None):
    """part_attention as one scaled_dot_product_attention call, the parts as heads."""
    mask = None if key_mask is None else key_mask[:, :, None, :].to(q.dtype)  # [B, p, 1, Nk]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def sdpa_per_part(q, k, v, scale=1.0, key_mask=None):
    """part_attention as one scaled_dot_product_attention call per part."""
    parts = range(q.shape[1])
    masks = [None] * len(parts) if key_mask is None else [key_mask[:, j : j + 1] for j in parts]
    outs = [sdpa_heads(q[:, j : j + 1], k[:, j : j + 1], v[:, j : j + 1], scale, masks[j]) for j in parts]
    return torch.cat(outs, dim=1)


BASELINES = {"sdpa_heads": sdpa_heads, "sdpa_per_part": sdpa_per_part}


# --------------------------------------------------------------------------- attention + assembly
def assembly_cases(cases: list[C.Case]) -> list[C.Case]:
    """One composite case per model or large attention case of ``cases`` with Nq == Nk a square
    number (an h x h feature map)."""
    out = []
    for case in cases:
        if case.op != "part_attention" or case.kind not in ("model", "large"):
            continue
        n, side = case.dims["Nq"], math.isqrt(case.dims["Nq"])
        if n > 0 and n == case.dims["Nk"] and side * side == n:
            dims = {**case.dims, "C": case.dims["d"], "h": side, "w": side}
            out.append(C.Case(ATTENTION_ASSEMBLY, case.name, case.kind, dims, dict(case.options)))
    return out


def parts(case: C.Case) -> tuple[C.Case, C.Case]:
    """(the part_attention case, the assemble_parts case) a composite case is made of."""
    d = case.dims
    attention = C.Case("part_attention", case.name, case.kind, {n: d[n] for n in ("B", "p", "Nq", "Nk", "d")},
                       dict(case.options))
    assembly = C.Case("assemble_parts", case.name, case.kind, {n: d[n] for n in ("B", "p", "C", "h", "w")})
    return attention, assembly


def make_inputs(case: C.Case, device, dtype, requires_grad: bool = False) -> tuple[tuple, dict]:
    """(q, k, v, P, R), {scale, key_mask}: the op tests' inputs of both parts of a composite case."""
    attention, assembly = parts(case)
    (q, k, v), kwargs = C.make_inputs(attention, device, dtype, requires_grad)
    (p_feats, _, masks), _ = C.make_inputs(assembly, device, dtype, requires_grad, seed=1)
    return (q, k, v, p_feats, masks), kwargs


def attention_assembly(backend: str):
    """``fn(q, k, v, P, R, scale, key_mask)``: the composite with ``backend`` (a baseline: the
    attention only, the assembly by the reference)."""
    if backend in BASELINES:
        attend, assemble_with = BASELINES[backend], "reference"
    else:
        def attend(*args, **kwargs):
            return ops.part_attention(*args, **kwargs, backend=backend)

        assemble_with = backend

    def fn(q, k, v, p_feats, masks, scale=1.0, key_mask=None):
        out = attend(q, k, v, scale=scale, key_mask=key_mask)  # [B, p, N, d]
        y = out.transpose(2, 3).reshape(p_feats.shape)  # [B, p, d, h, w]
        return ops.assemble_parts(p_feats, y, masks, backend=assemble_with)  # [B, d, h, w]

    return fn
