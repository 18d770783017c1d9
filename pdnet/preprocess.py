"""Image normalisation shared by the data pipeline, the demo and inference."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB images -> ImageNet-normalised float tensor.

    Args:
        images (Tensor[..., 3, H, W]): uint8 in 0..255, or floating point in [0, 1].

    Returns:
        Tensor[..., 3, H, W] float32 (or the input's floating dtype).
    """
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize: expected RGB images [..., 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise TypeError(f"normalize: expected uint8 or floating-point images, got {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std
