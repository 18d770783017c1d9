"""Configuration of a PDNet model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: output channels of C2..C5 for each supported backbone
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}

LOSS_VARIANTS = ("release", "paper")

#: values of ``ops_backend``: auto, the backends of pdnet.ops and their aliases (cuda = cpp,
#: torch = reference)
OPS_BACKENDS = ("auto", "reference", "triton", "cpp", "cuda", "torch")


@dataclass
class PDNetConfig:
    """Hyper-parameters of :class:`pdnet.PDNet`.

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` (release) or ``resnet101``;
            the lateral widths follow it (:data:`BACKBONE_CHANNELS`).
        parts: number of parts p, 1..8 (release: 5).
        attention_scale: multiplier of q k^T in the part attention (release: 1.0,
            i.e. no 1/sqrt(d)).
        ipda_stride: how much the IPDA pools the stride-4 decoder map (release: 4,
            giving stride 16, 30x30 tokens at 480x480).
        input_size: (H, W) the model is trained / evaluated at (release: 480x480);
            both must be multiples of 32.
        loss_variant: ``release`` (sum of the GT-masked and saliency-masked area terms
            halved, as the release code) or ``paper`` (eq. 6: the two terms averaged).
        decoder_channels: decoder width (release: 128).
        ipda_channels: IPDA feature width (release: 64).
        attention_dim: query/key/value width d (release: 32).
        ops_backend: backend of the hot-path ops (``auto``, ``reference``, ``triton``, ``cpp``;
            aliases ``cuda`` = cpp, ``torch`` = reference).
    """

    backbone: str = "resnet50"
    parts: int = 5
    attention_scale: float = 1.0
    ipda_stride: int = 4
    input_size: tuple[int, int] = (480, 480)
    loss_variant: str = "release"
    decoder_channels: int = 128
    ipda_channels: int = 64
    attention_dim: int = 32
    ops_backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = (self.input_size, self.input_size)
        self.input_size = tuple(int(s) for s in self.input_size)  # type: ignore[assignment]
        if self.backbone not in BACKBONE_CHANNELS:
            raise ValueError(
                f"PDNetConfig.backbone must be one of {sorted(BACKBONE_CHANNELS)}, got {self.backbone!r}"
            )
        if not isinstance(self.parts, int) or not 1 <= self.parts <= 8:
            raise ValueError(f"PDNetConfig.parts must be an integer in 1..8, got {self.parts!r}")
        if isinstance(self.ipda_stride, bool) or not isinstance(self.ipda_stride, int) or self.ipda_stride < 1:
            raise ValueError(f"PDNetConfig.ipda_stride must be an integer >= 1, got {self.ipda_stride!r}")
        if (
            isinstance(self.attention_scale, bool)
            or not isinstance(self.attention_scale, (int, float))
            or not math.isfinite(self.attention_scale)
        ):
            raise ValueError(f"PDNetConfig.attention_scale must be a finite number, got {self.attention_scale!r}")
        if self.ops_backend not in OPS_BACKENDS:
            raise ValueError(f"PDNetConfig.ops_backend must be one of {OPS_BACKENDS}, got {self.ops_backend!r}")
        if len(self.input_size) != 2 or any(s <= 0 or s % 32 for s in self.input_size):
            raise ValueError(
                f"PDNetConfig.input_size must be (H, W) with both multiples of 32, got {self.input_size}"
            )
        if self.loss_variant not in LOSS_VARIANTS:
            raise ValueError(f"PDNetConfig.loss_variant must be one of {LOSS_VARIANTS}, got {self.loss_variant!r}")
        for name in ("decoder_channels", "ipda_channels", "attention_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"PDNetConfig.{name} must be positive, got {getattr(self, name)}")

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        return BACKBONE_CHANNELS[self.backbone]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PDNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PDNetConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)
