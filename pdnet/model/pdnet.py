"""PDNet, the Part-Decoupling Network (DESIGN.md section 1, release structure).

Shapes use B batch, p parts, H x W input, h x w = H/16 x W/16 IPDA grid (with the
release's IPDA stride 4), N = h*w tokens, d attention width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .config import PDNetConfig
from .layers import ConvBNReLU, Fuse, ResNetEncoder, init_non_backbone, upsample

SIDE_NAMES = ("x2", "x3", "x4", "x5")


@dataclass
class FrameFeatures:
    """What the shared encoder/decoder/IPDA trunk computes for one frame.

    Attributes:
        decoded (Tensor[B, 128, H/4, W/4]): decoder output A (= x2).
        sides (list of 4 Tensors): decoder maps x2, x3, x4, x5 (strides 4, 4, 8, 16).
        parts (Tensor[B, p, 64, h, w]): part features P^k.
        part_logits (Tensor[B, p, h, w]): part logits D.
        saliency (Tensor[B, 1, h, w]): saliency logit S.
    """

    decoded: torch.Tensor
    sides: list[torch.Tensor]
    parts: torch.Tensor
    part_logits: torch.Tensor
    saliency: torch.Tensor


@dataclass
class ReferenceState:
    """Cached reference-frame features, reusable for every target frame of a clip.

    Attributes:
        keys (Tensor[B, p, N, d]): per-part attention keys of the reference frame.
        values (Tensor[B, p, N, d]): per-part attention values.
        size (tuple): (H, W) of the reference frame.
        features (FrameFeatures, optional): the full trunk output (kept only when
            training outputs of the reference are needed).
    """

    keys: torch.Tensor
    values: torch.Tensor
    size: tuple
    features: FrameFeatures | None = None

    def to(self, *args, **kwargs) -> ReferenceState:
        return ReferenceState(self.keys.to(*args, **kwargs), self.values.to(*args, **kwargs), self.size, None)


class Decoder(nn.Module):
    """Top-down decoder: lateral CBR 1x1 per level, fuse by product + two CBR 3x3.

    forward: [C2, C3, C4, C5] -> [x2, x3, x4, x5] with x2 = A (B, width, H/4, W/4).
    """

    def __init__(self, in_channels, width: int = 128) -> None:
        super().__init__()
        c2, c3, c4, c5 = in_channels
        self.lateral2 = ConvBNReLU(c2, width, 1)
        self.lateral3 = ConvBNReLU(c3, width, 1)
        self.lateral4 = ConvBNReLU(c4, width, 1)
        self.lateral5 = ConvBNReLU(c5, width, 1)
        self.fuse4 = Fuse(width)
        self.fuse3 = Fuse(width)
        self.fuse2 = Fuse(width)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        c2, c3, c4, c5 = feats
        l2, l3, l4 = self.lateral2(c2), self.lateral3(c3), self.lateral4(c4)
        x5 = upsample(self.lateral5(c5), l4.shape[-2:])  # [B, w, H/16, W/16]
        x4 = upsample(self.fuse4(x5, l4), l3.shape[-2:])  # [B, w, H/8, W/8]
        x3 = upsample(self.fuse3(x4, l3), l2.shape[-2:])  # [B, w, H/4, W/4]
        x2 = self.fuse2(x3, l2)  # [B, w, H/4, W/4]
        return [x2, x3, x4, x5]


class PartBranch(nn.Module):
    """CBR1x1 -> CBR3x3 -> CBR1x1 at the IPDA width; one per part, shared by t and r."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(channels, channels, 1)
        self.conv2 = ConvBNReLU(channels, channels, 3)
        self.conv3 = ConvBNReLU(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class IPDA(nn.Module):
    """Inter-frame Part-Discriminated Attention."""

    def __init__(self, cfg: PDNetConfig) -> None:
        super().__init__()
        c_in, c, d, p = cfg.decoder_channels, cfg.ipda_channels, cfg.attention_dim, cfg.parts
        self.stride = cfg.ipda_stride
        self.scale = float(cfg.attention_scale)
        self.backend = cfg.ops_backend
        self.adapter = nn.Sequential(ConvBNReLU(c_in, c_in, 3), ConvBNReLU(c_in, c, 1))
        self.branches = nn.ModuleList([PartBranch(c) for _ in range(p)])
        self.part_head = nn.Conv2d(c, 1, 3, padding=1)
        self.saliency_head = nn.Conv2d(c, 1, 3, padding=1)
        self.query = nn.ModuleList([nn.Conv2d(c, d, 1, bias=False) for _ in range(p)])
        self.key = nn.ModuleList([nn.Conv2d(c, d, 1, bias=False) for _ in range(p)])
        self.value = nn.ModuleList([nn.Conv2d(c, d, 1, bias=False) for _ in range(p)])
        self.out_proj = nn.ModuleList([ConvBNReLU(d, c, 1) for _ in range(p)])

    def pool(self, a: torch.Tensor) -> torch.Tensor:
        """[B, C, H/4, W/4] -> [B, C, H/(4*stride), W/(4*stride)]."""
        if self.stride == 1:
            return a
        h, w = a.shape[-2] // self.stride, a.shape[-1] // self.stride
        return F.interpolate(a, size=(h, w), mode="bilinear", align_corners=True)

    def features(self, decoded: torch.Tensor):
        """A [B, 128, H/4, W/4] -> P [B, p, C, h, w], D [B, p, h, w], S [B, 1, h, w]."""
        f = self.adapter(self.pool(decoded))  # [B, C, h, w]
        parts = torch.stack([branch(f) for branch in self.branches], dim=1)  # [B, p, C, h, w]
        B, p, C, h, w = parts.shape
        part_logits = self.part_head(parts.flatten(0, 1)).view(B, p, h, w)  # [B, p, h, w]
        saliency = self.saliency_head(f)  # [B, 1, h, w]
        return parts, part_logits, saliency

    @staticmethod
    def _project(convs: nn.ModuleList, parts: torch.Tensor) -> torch.Tensor:
        """Per-part 1x1 projection, all parts in one einsum: [B, p, C, h, w] -> [B, p, N, d]."""
        weight = torch.stack([m.weight.flatten(1) for m in convs])  # [p, d, C]
        return torch.einsum("pdc,bpcn->bpnd", weight, parts.flatten(3))  # [B, p, N, d]

    def keys_values(self, parts_r: torch.Tensor):
        """Reference part features [B, p, C, h, w] -> keys, values [B, p, N, d]."""
        return self._project(self.key, parts_r), self._project(self.value, parts_r)

    def attend(self, feats_t: FrameFeatures, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Target trunk output + reference keys/values -> assembled M_t [B, C, h, w]."""
        parts = feats_t.parts  # [B, p, C, h, w]
        B, p, C, h, w = parts.shape
        q = self._project(self.query, parts)  # [B, p, N, d]
        out = ops.part_attention(q, keys, values, scale=self.scale, backend=self.backend)  # [B, p, N, d]
        out = out.transpose(2, 3).reshape(B, p, -1, h, w)  # [B, p, d, h, w]
        y = torch.stack([proj(out[:, k]) for k, proj in enumerate(self.out_proj)], dim=1)  # [B, p, C, h, w]
        masks = ops.part_masks(feats_t.part_logits, feats_t.saliency, backend=self.backend)  # [B, p, h, w]
        return ops.assemble_parts(parts, y, masks, backend=self.backend)  # [B, C, h, w]


class SpatiotemporalFusion(nn.Module):
    """T = CBR1x1(up(M)); X = A + T + A * conv1x1(T); X = CBR3x3(CBR3x3(X))."""

    def __init__(self, ipda_channels: int, width: int) -> None:
        super().__init__()
        self.project = ConvBNReLU(ipda_channels, width, 1)
        self.gate = nn.Conv2d(width, width, 1, bias=False)
        self.refine1 = ConvBNReLU(width, width, 3)
        self.refine2 = ConvBNReLU(width, width, 3)

    def forward(self, decoded: torch.Tensor, assembled: torch.Tensor) -> torch.Tensor:
        t = self.project(upsample(assembled, decoded.shape[-2:]))  # [B, w, H/4, W/4]
        x = decoded + t + decoded * self.gate(t)
        return self.refine2(self.refine1(x))


class PDNet(nn.Module):
    """Part-Decoupling Network for video portrait segmentation.

    Call ``model(target, reference)`` with two ImageNet-normalised RGB batches
    (Tensor[B, 3, H, W], H and W multiples of 32) or ``model(target, state)`` with a
    :class:`ReferenceState` from :meth:`encode_reference`; returns the logits
    Tensor[B, 1, H, W]. :meth:`train_outputs` returns every deep-supervision output.
    """

    def __init__(self, config: PDNetConfig | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = PDNetConfig(**overrides)
        elif overrides:
            config = PDNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        width = config.decoder_channels
        self.encoder = ResNetEncoder(config.backbone)
        self.decoder = Decoder(config.backbone_channels, width)
        self.ipda = IPDA(config)
        self.fusion = SpatiotemporalFusion(config.ipda_channels, width)
        self.head = nn.Conv2d(width, 1, 3, padding=1)
        # deep-supervision heads on the decoder maps x2, x3, x4, x5
        self.side_heads = nn.ModuleDict({name: nn.Conv2d(width, 1, 3, padding=1) for name in SIDE_NAMES})
        for m in (self.decoder, self.ipda, self.fusion, self.head, self.side_heads):
            init_non_backbone(m)

    # ------------------------------------------------------------------ input checks
    def _check_frame(self, x, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"PDNet: {name} must be a Tensor[B, 3, H, W], got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"PDNet: {name} must be an RGB batch Tensor[B, 3, H, W], got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"PDNet: {name} must be a floating-point ImageNet-normalised tensor, got dtype {x.dtype} "
                "(convert uint8 images with pdnet's normalisation first)"
            )
        H, W = x.shape[-2:]
        if H % 32 or W % 32 or H == 0 or W == 0:
            raise ValueError(
                f"PDNet: {name} height and width must be positive multiples of 32, got {H}x{W} "
                f"(resize to e.g. {max(32, round(H / 32) * 32)}x{max(32, round(W / 32) * 32)})"
            )
        if x.shape[0] == 0:
            raise ValueError(f"PDNet: {name} is an empty batch (shape {tuple(x.shape)})")

    def _check_pair(self, target, reference) -> None:
        self._check_frame(target, "target")
        if isinstance(reference, ReferenceState):
            if tuple(reference.size) != tuple(target.shape[-2:]):
                raise ValueError(
                    f"PDNet: target is {tuple(target.shape[-2:])} but the reference state was encoded "
                    f"at {tuple(reference.size)}"
                )
            if reference.keys.shape[0] not in (1, target.shape[0]):
                raise ValueError(
                    f"PDNet: target batch {target.shape[0]} does not match the reference state's batch "
                    f"{reference.keys.shape[0]}"
                )
            return
        self._check_frame(reference, "reference")
        if target.shape != reference.shape:
            raise ValueError(
                f"PDNet: target {tuple(target.shape)} and reference {tuple(reference.shape)} must have "
                "the same shape"
            )
        if target.device != reference.device or target.dtype != reference.dtype:
            raise ValueError(
                f"PDNet: target ({target.dtype}, {target.device}) and reference "
                f"({reference.dtype}, {reference.device}) must share dtype and device"
            )

    # ------------------------------------------------------------------ trunk
    def trunk(self, x: torch.Tensor) -> FrameFeatures:
        """Shared encoder + decoder + IPDA part features for a batch of frames."""
        sides = self.decoder(self.encoder(x))
        parts, part_logits, saliency = self.ipda.features(sides[0])
        return FrameFeatures(sides[0], sides, parts, part_logits, saliency)

    def _trunk_pair(self, target: torch.Tensor, reference: torch.Tensor):
        if self.training:
            # separate passes: BatchNorm batch statistics per frame, as the release
            return self.trunk(target), self.trunk(reference)
        both = self.trunk(torch.cat([target, reference]))
        B = target.shape[0]

        def split(t):
            return t[:B], t[B:]

        ft, fr = [FrameFeatures(*z) for z in zip(
            split(both.decoded),
            zip(*[split(s) for s in both.sides], strict=True),
            split(both.parts),
            split(both.part_logits),
            split(both.saliency),
            strict=True,
        )]
        ft.sides, fr.sides = list(ft.sides), list(fr.sides)
        return ft, fr

    def encode_reference(self, reference: torch.Tensor, keep_features: bool = False) -> ReferenceState:
        """Encode the reference frame once: Tensor[B, 3, H, W] -> :class:`ReferenceState`."""
        self._check_frame(reference, "reference")
        feats = self.trunk(reference)
        k, v = self.ipda.keys_values(feats.parts)
        return ReferenceState(k, v, tuple(reference.shape[-2:]), feats if keep_features else None)

    def _decode(self, feats_t: FrameFeatures, keys, values, size) -> torch.Tensor:
        B = feats_t.parts.shape[0]
        if keys.shape[0] != B:
            keys, values = keys.expand(B, *keys.shape[1:]), values.expand(B, *values.shape[1:])
        assembled = self.ipda.attend(feats_t, keys, values)  # [B, C, h, w]
        fused = self.fusion(feats_t.decoded, assembled)  # [B, w, H/4, W/4]
        return upsample(self.head(fused), size)  # [B, 1, H, W]

    # ------------------------------------------------------------------ public API
    def forward(
        self, target: torch.Tensor, reference: torch.Tensor | ReferenceState, size: tuple | None = None
    ) -> torch.Tensor:
        """Logits Tensor[B, 1, H, W] of the target frame given a reference frame or state.

        ``size`` (optional (H', W')): upsample the stride-4 head logits straight to this
        size instead of the input size (the release's ``shape=`` argument, used at test
        time to go directly to the original frame size).
        """
        self._check_pair(target, reference)
        size = target.shape[-2:] if size is None else tuple(int(s) for s in size)
        if isinstance(reference, ReferenceState):
            feats_t = self.trunk(target)
            return self._decode(feats_t, reference.keys, reference.values, size)
        feats_t, feats_r = self._trunk_pair(target, reference)
        keys, values = self.ipda.keys_values(feats_r.parts)
        return self._decode(feats_t, keys, values, size)

    def train_outputs(self, target: torch.Tensor, reference: torch.Tensor) -> dict[str, object]:
        """Every output used by the training losses, all upsampled to the input size.

        Returns a dict with ``pred`` (B,1,H,W); ``side_t`` / ``side_r`` (lists of 4
        Tensor[B,1,H,W] from x2, x3, x4, x5); ``saliency_t`` / ``saliency_r`` (B,1,H,W);
        ``parts_t`` / ``parts_r`` (B,p,H,W) part logits.
        """
        self._check_pair(target, reference)
        if isinstance(reference, ReferenceState):
            raise TypeError("PDNet.train_outputs needs the reference frame tensor, not a ReferenceState")
        size = target.shape[-2:]
        feats_t, feats_r = self._trunk_pair(target, reference)
        keys, values = self.ipda.keys_values(feats_r.parts)
        out: dict[str, object] = {"pred": self._decode(feats_t, keys, values, size)}
        for tag, f in (("t", feats_t), ("r", feats_r)):
            sides = zip(SIDE_NAMES, f.sides, strict=True)
            out[f"side_{tag}"] = [upsample(self.side_heads[n](s), size) for n, s in sides]
            out[f"saliency_{tag}"] = upsample(f.saliency, size)
            out[f"parts_{tag}"] = upsample(f.part_logits, size)
        return out

    def backbone_parameters(self):
        """Parameters of the ResNet encoder (the first optimiser group)."""
        return list(self.encoder.parameters())

    def head_parameters(self):
        """Every parameter outside the encoder (the second optimiser group)."""
        enc = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]
