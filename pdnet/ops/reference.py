"""Pure-PyTorch reference implementations of the hot-path ops.

These are the oracle for every kernel backend, the fallback when no kernel is
available for a device, and the baseline in the benchmarks. They assume inputs
were validated by :mod:`pdnet.ops._checks` and favour clarity over speed.
"""
from __future__ import annotations

from typing import Optional

import torch


def part_attention(
    q: torch.Tensor,  # [B, p, Nq, d]
    k: torch.Tensor,  # [B, p, Nk, d]
    v: torch.Tensor,  # [B, p, Nk, d]
    scale: float = 1.0,
    key_mask: Optional[torch.Tensor] = None,  # [B, p, Nk], additive
) -> torch.Tensor:
    """softmax_keys(q k^T * scale + key_mask) v, independently for every part."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, p, Nq, Nk]
    if key_mask is not None:
        scores = scores + key_mask.unsqueeze(-2).to(scores.dtype)  # [B, p, Nq, Nk]
    attn = torch.softmax(scores, dim=-1)  # [B, p, Nq, Nk]
    return torch.matmul(attn, v)  # [B, p, Nq, d]


def part_masks(
    part_logits: torch.Tensor,  # [B, p, h, w]
    gate: torch.Tensor,  # [B, 1, h, w]
    gate_is_logit: bool = True,
) -> torch.Tensor:
    """softmax over parts of ``part_logits`` times sigmoid(gate) (or gate itself)."""
    probs = torch.softmax(part_logits, dim=1)  # [B, p, h, w]
    g = torch.sigmoid(gate) if gate_is_logit else gate  # [B, 1, h, w]
    return probs * g  # [B, p, h, w]


def assemble_parts(
    p_feats: torch.Tensor,  # [B, p, C, h, w]
    y_feats: torch.Tensor,  # [B, p, C, h, w]
    masks: torch.Tensor,  # [B, p, h, w]
) -> torch.Tensor:
    """sum_k (P^k + Y^k) * R^k."""
    return ((p_feats + y_feats) * masks.unsqueeze(2)).sum(dim=1)  # [B, C, h, w]


def area_variance(x: torch.Tensor) -> torch.Tensor:  # x: [B, p, H, W]
    """Area-variance loss (paper eq. 3-4).

    a_k = sum_hw x_k, a = a / max(||a||_2, 1e-12), unbiased variance over parts,
    mean over the batch. With a single part the variance is defined as 0 (the
    unbiased estimator would divide by zero).
    """
    area = x.sum(dim=(2, 3))  # [B, p]
    if x.shape[1] < 2:
        return area.sum() * 0.0
    area = area / area.norm(dim=1, keepdim=True).clamp_min(1e-12)  # [B, p]
    return area.var(dim=1, unbiased=True).mean()  # []
