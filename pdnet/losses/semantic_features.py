"""Frozen ImageNet ResNet-18 feature extractor for the semantic part loss."""
from __future__ import annotations

import torch
from torch import nn

from ..model.layers import ResNetEncoder


class SemanticFeatures(nn.Module):
    """Frozen ResNet-18 up to layer4: Tensor[B, 3, H, W] -> Tensor[B, 512, H/32, W/32].

    Loads ImageNet weights from ``weights`` (a torchvision state_dict file) or from
    torchvision's hub cache when present; never downloads. Without weights (None, or
    no cached file) it warns and stays random (the semantic loss is then only a
    regulariser). A weights file that does not exist, cannot be read or is not a
    torchvision ResNet-18 raises (FileNotFoundError / RuntimeError naming the file).
    Always in eval mode, no gradients.
    """

    channels = 512

    def __init__(self, weights: str | None = "cache") -> None:
        super().__init__()
        self.net = ResNetEncoder("resnet18")
        self.pretrained = self.net.load_imagenet(weights)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SemanticFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[3]
