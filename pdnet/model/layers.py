"""Building blocks of PDNet: conv-BN-ReLU units, the ResNet encoder, init helpers."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with align_corners=True (the convention used throughout PDNet)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU ("CBR")."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class Fuse(nn.Module):
    """fuse(high, low) = CBR3x3(CBR3x3(high * low))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels, 3)
        self.conv2 = ConvBNReLU(channels, channels, 3)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(high * low))


_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}


class ResNetEncoder(nn.Module):
    """torchvision ResNet stem..layer4 (no pooling head).

    forward: Tensor[B, 3, H, W] -> [C2, C3, C4, C5] at strides 4, 8, 16, 32.
    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ...), so
    ImageNet checkpoints load directly.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.name = name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def load_imagenet(self, source: str | None = "cache") -> bool:
        """Load ImageNet weights without touching the network.

        ``source`` is a path to a torchvision ResNet state_dict, ``"cache"`` to use
        torchvision's file if it is already in the torch hub cache, or None. Returns True
        when weights were loaded; False (with a warning that the backbone starts random)
        for None or a cache without the file.

        Raises:
            FileNotFoundError: ``source`` names a file that does not exist.
            RuntimeError: the file (given or cached) cannot be read, is not a
                torchvision state_dict of this ResNet, or holds NaN / inf; the message
                names the file.
        """
        path = source
        if source == "cache":
            import torchvision

            weights = getattr(torchvision.models, _TORCHVISION_WEIGHTS[self.name]).IMAGENET1K_V1
            fname = os.path.basename(weights.url)
            path = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
        elif source is not None and not os.path.isfile(source):
            raise FileNotFoundError(
                f"ImageNet weights {source} " + ("is not a file" if os.path.exists(source) else "not found")
            )
        if path is None or not os.path.isfile(path):
            warnings.warn(
                f"no ImageNet weights for {self.name} found ({path}); the backbone starts from random "
                "initialisation. Pass a torchvision state_dict file to load them.",
                stacklevel=2,
            )
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file fails in many ways
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeError(f"cannot read ImageNet weights {path} ({type(exc).__name__}: {first})") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            kind = type(state).__name__
            raise RuntimeError(f"{path} is not a torchvision {self.name} state_dict (it holds a {kind})")
        state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or mismatched:
            raise RuntimeError(
                f"{path} is not a torchvision {self.name} checkpoint: missing keys {missing[:8]}, "
                f"unexpected keys {unexpected[:8]}, shape mismatches {mismatched[:8]}"
            )
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise RuntimeError(f"ImageNet weights {path}: tensor {bad[0]} holds NaN or inf values")
        self.load_state_dict(state, strict=True)
        return True


def init_non_backbone(module: nn.Module) -> None:
    """Kaiming normal (fan_in, relu) convs, zero bias, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
