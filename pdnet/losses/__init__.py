"""Every loss of the release (DESIGN.md section 2); composite losses return a dict
of named terms plus ``total``."""
from .parts import (
    PartBasis,
    area,
    concentration,
    orthonormal,
    part_total,
    semantic,
    semantic_factored,
    upsampled_sq_norm,
)
from .segmentation import prob_l1, seg_loss, wbce
from .semantic_features import SemanticFeatures
from .steps import image_step_loss, video_step_loss

__all__ = [
    "wbce",
    "prob_l1",
    "seg_loss",
    "concentration",
    "semantic",
    "semantic_factored",
    "upsampled_sq_norm",
    "orthonormal",
    "area",
    "part_total",
    "PartBasis",
    "SemanticFeatures",
    "image_step_loss",
    "video_step_loss",
]
