"""Input validation shared by every backend of the hot-path ops.

Each check raises ``ValueError`` (shape / rank problems) or ``TypeError`` (dtype
problems) with a message naming the op, the argument and the offending shapes,
so that a bad call fails here and never deep inside a kernel.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fmt(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def check_tensor(op: str, name: str, t, ndim: int, dims_doc: str) -> None:
    """``t`` must be a floating-point tensor of rank ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor{dims_doc}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dims {dims_doc}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {_fmt(t)}"
        )


def check_same(op: str, tensors: Sequence[tuple[str, torch.Tensor]], *, dtype: bool = True) -> None:
    """All named tensors share device (and dtype when ``dtype``)."""
    name0, t0 = tensors[0]
    for name, t in tensors[1:]:
        if t.device != t0.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {name0} is on {t0.device}")
        if dtype and t.dtype != t0.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {name0} has dtype {t0.dtype}")


def check_part_attention(q, k, v, scale, key_mask: torch.Tensor | None) -> None:
    op = "part_attention"
    doc = "(B, p, N, d)"
    check_tensor(op, "q", q, 4, doc)
    check_tensor(op, "k", k, 4, doc)
    check_tensor(op, "v", v, 4, doc)
    check_same(op, [("q", q), ("k", k), ("v", v)])
    B, p, _, d = q.shape
    if k.shape[0] != B or k.shape[1] != p or k.shape[3] != d:
        raise ValueError(
            f"{op}: k must be (B={B}, p={p}, Nk, d={d}) to match q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"{op}: v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError(f"{op}: k and v have no keys (Nk=0) but q has {q.shape[2]} queries")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"{op}: scale must be a Python float, got {type(scale).__name__}")
    if key_mask is not None:
        check_tensor(op, "key_mask", key_mask, 3, "(B, p, Nk)")
        check_same(op, [("k", k), ("key_mask", key_mask)], dtype=False)
        if tuple(key_mask.shape) != (B, p, k.shape[2]):
            raise ValueError(
                f"{op}: key_mask must be (B, p, Nk) = {(B, p, k.shape[2])}, got {tuple(key_mask.shape)}"
            )


def check_part_masks(part_logits, gate, gate_name: str) -> None:
    op = "part_masks"
    check_tensor(op, "part_logits", part_logits, 4, "(B, p, h, w)")
    check_tensor(op, gate_name, gate, 4, "(B, 1, h, w)")
    check_same(op, [("part_logits", part_logits), (gate_name, gate)])
    B, _, h, w = part_logits.shape
    if tuple(gate.shape) != (B, 1, h, w):
        raise ValueError(
            f"{op}: {gate_name} must be (B, 1, h, w) = {(B, 1, h, w)} to match part_logits "
            f"{tuple(part_logits.shape)}, got {tuple(gate.shape)}"
        )


def check_assemble_parts(p_feats, y_feats, masks) -> None:
    op = "assemble_parts"
    check_tensor(op, "p_feats", p_feats, 5, "(B, p, C, h, w)")
    check_tensor(op, "y_feats", y_feats, 5, "(B, p, C, h, w)")
    check_tensor(op, "masks", masks, 4, "(B, p, h, w)")
    check_same(op, [("p_feats", p_feats), ("y_feats", y_feats), ("masks", masks)])
    if y_feats.shape != p_feats.shape:
        raise ValueError(
            f"{op}: y_feats must have the shape of p_feats {tuple(p_feats.shape)}, got {tuple(y_feats.shape)}"
        )
    B, p, _, h, w = p_feats.shape
    if tuple(masks.shape) != (B, p, h, w):
        raise ValueError(
            f"{op}: masks must be (B, p, h, w) = {(B, p, h, w)} to match p_feats "
            f"{tuple(p_feats.shape)}, got {tuple(masks.shape)}"
        )


def check_area_variance(x) -> None:
    check_tensor("area_variance", "x", x, 4, "(B, p, H, W)")
