"""Segmentation losses of the release: weighted BCE + L1 on probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(name: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{name}: logits and target must be tensors")
    if logits.shape != target.shape:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if not logits.is_floating_point() or not target.is_floating_point():
        raise TypeError(f"{name}: logits ({logits.dtype}) and target ({target.dtype}) must be floating point")


def wbce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted BCE of the release.

    n_pos = #(target >= 0.5) + 1, w = numel / n_pos (one scalar for the batch);
    returns mean over pixels of w * BCE_with_logits(logits, target).

    Args:
        logits (Tensor[B, 1, H, W]), target (Tensor[B, 1, H, W]) in [0, 1].
    """
    _check_pair("wbce", logits, target)
    n_pos = (target >= 0.5).sum() + 1
    weight = target.numel() / n_pos.to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="mean")
    return weight * bce


def prob_l1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |sigmoid(logits) - target|."""
    _check_pair("prob_l1", logits, target)
    return (torch.sigmoid(logits.float()) - target.float()).abs().mean()


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """seg = wbce + 0.8 * l1; returns {"wbce", "l1", "total"}."""
    w = wbce(logits, target)
    l1 = prob_l1(logits, target)
    return {"wbce": w, "l1": l1, "total": w + 0.8 * l1}
