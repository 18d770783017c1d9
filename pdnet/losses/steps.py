"""Step totals of the release recipe: the image step and the video step."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .parts import part_total
from .segmentation import seg_loss

SIDE_WEIGHT = 0.8


def _add_seg(terms: dict[str, torch.Tensor], prefix: str, logits, target) -> torch.Tensor:
    s = seg_loss(logits, target)
    terms[f"{prefix}.wbce"] = s["wbce"]
    terms[f"{prefix}.l1"] = s["l1"]
    return s["total"]


def _frame_aux(terms, tag: str, sides: Sequence[torch.Tensor], saliency, target) -> torch.Tensor:
    if len(sides) != 4:
        raise ValueError(f"expected 4 side logits for frame {tag}, got {len(sides)}")
    total = sum(_add_seg(terms, f"side_{tag}{i}", s, target) for i, s in enumerate(sides))
    return total + _add_seg(terms, f"saliency_{tag}", saliency, target)


def image_step_loss(outputs: Mapping[str, object], mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss of an image step (a still image fed as both frames).

    seg(pred) + 0.8 * (sum of seg over the 4 side logits and the saliency logit).

    Args:
        outputs: :meth:`pdnet.PDNet.train_outputs` of the pair (image, image).
        mask (Tensor[B, 1, H, W]): ground truth in [0, 1].

    Returns:
        dict of named terms (``pred.wbce``, ``side_t0.l1`` ...) plus ``total``.
    """
    terms: dict[str, torch.Tensor] = {}
    pred = _add_seg(terms, "pred", outputs["pred"], mask)
    aux = _frame_aux(terms, "t", outputs["side_t"], outputs["saliency_t"], mask)
    terms["total"] = pred + SIDE_WEIGHT * aux
    return terms


def video_step_loss(
    outputs: Mapping[str, object],
    mask_t: torch.Tensor,
    mask_r: torch.Tensor,
    feat_t: torch.Tensor,
    feat_r: torch.Tensor,
    basis: torch.Tensor,
    variant: str = "release",
    **part_options: str,
) -> dict[str, torch.Tensor]:
    """Loss of a video step.

    seg(pred) + 0.8 * (sides_t + seg(S_t) + part_total_t)
    + 0.8 * (sides_r + seg(S_r) + part_total_r), reference terms against ``mask_r``.

    Args:
        outputs: :meth:`pdnet.PDNet.train_outputs` of (target, reference).
        mask_t, mask_r (Tensor[B, 1, H, W]): ground truth of target / reference.
        feat_t, feat_r (Tensor[B, C, h, w]): frozen semantic features of each frame.
        basis (Tensor[p, C]): part basis W = ReLU(w).
        variant: ``release`` or ``paper`` (eq. 6), see :func:`part_total`.
        **part_options: ``backend`` and ``semantic_impl`` of :func:`part_total`.
    """
    terms: dict[str, torch.Tensor] = {}
    total = _add_seg(terms, "pred", outputs["pred"], mask_t)
    for tag, mask, feat in (("t", mask_t, feat_t), ("r", mask_r, feat_r)):
        aux = _frame_aux(terms, tag, outputs[f"side_{tag}"], outputs[f"saliency_{tag}"], mask)
        parts = part_total(
            outputs[f"parts_{tag}"], mask, outputs[f"saliency_{tag}"], feat, basis, variant, **part_options
        )
        for k, v in parts.items():
            terms[f"parts_{tag}.{k}"] = v
        total = total + SIDE_WEIGHT * (aux + parts["total"])
    terms["total"] = total
    return terms
