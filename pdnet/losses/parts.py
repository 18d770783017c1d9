"""Part losses of the release (DESIGN.md section 2).

``x`` are part probabilities Tensor[B, p, H, W] (softmax over parts, masked by the
ground truth or by the saliency probability); ``basis`` is the part basis
W = ReLU(w), Tensor[p, C]; ``feat`` are frozen semantic features Tensor[B, C, h, w].
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..model.layers import upsample

EPS = 1e-7


def _check_parts(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: part probabilities must be Tensor[B, p, H, W], got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: part probabilities must be floating point, got {x.dtype}")


def concentration(x: torch.Tensor) -> torch.Tensor:
    """Spatial concentration loss: each part's probability mass kept compact.

    With u_i = i/H*2-1 (rows) and v_j = j/W*2-1 (columns), per part
    c_u = sum x u / (sum x + 1e-7), var_u = sum x (u - c_u)^2 / (sum x + 1e-7) (same
    for v); the loss is the mean over the batch of the sum over parts of var_u + var_v.
    """
    _check_parts("concentration", x)
    B, p, H, W = x.shape
    x = x.float()
    u = (torch.arange(H, device=x.device, dtype=x.dtype) / H * 2 - 1).view(1, 1, H, 1)  # rows
    v = (torch.arange(W, device=x.device, dtype=x.dtype) / W * 2 - 1).view(1, 1, 1, W)  # cols
    mass = x.sum(dim=(2, 3), keepdim=True) + EPS  # [B, p, 1, 1]
    cu = (x * u).sum(dim=(2, 3), keepdim=True) / mass
    cv = (x * v).sum(dim=(2, 3), keepdim=True) / mass
    var_u = (x * (u - cu) ** 2).sum(dim=(2, 3)) / mass.view(B, p)  # [B, p]
    var_v = (x * (v - cv) ** 2).sum(dim=(2, 3)) / mass.view(B, p)
    return (var_u + var_v).sum(dim=1).mean()


def semantic(x: torch.Tensor, feat: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Semantic consistency loss: mean over (B, C, H, W) of (sum_k x_k W_kc - feat_c)^2.

    Args:
        x (Tensor[B, p, H, W]): masked part probabilities.
        feat (Tensor[B, C, H, W]): semantic features at x's size, masked like x.
        basis (Tensor[p, C]): part basis W (already ReLU'd).
    """
    _check_parts("semantic", x)
    if feat.dim() != 4 or feat.shape[0] != x.shape[0] or feat.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"semantic: feat must be Tensor[B, C, H, W] = [{x.shape[0]}, C, {x.shape[2]}, {x.shape[3]}] "
            f"to match x {tuple(x.shape)}, got {tuple(feat.shape)}"
        )
    if basis.dim() != 2 or basis.shape != (x.shape[1], feat.shape[1]):
        raise ValueError(
            f"semantic: basis must be Tensor[p, C] = {(x.shape[1], feat.shape[1])}, got {tuple(basis.shape)}"
        )
    recon = torch.einsum("bphw,pc->bchw", x.float(), basis.float())  # [B, C, H, W]
    return ((recon - feat.float()) ** 2).mean()


def upsampled_sq_norm(feat: torch.Tensor, size, chunk: int = 64) -> torch.Tensor:
    """sum over channels of up(feat)^2 without materialising up(feat).

    Args:
        feat (Tensor[B, C, h, w]): features (no gradient is taken through them).
        size: (H, W) of the bilinear (align_corners=True) upsampling.

    Returns:
        Tensor[B, 1, H, W] float32, computed ``chunk`` channels at a time.
    """
    with torch.no_grad():
        feat = feat.float()
        out = torch.zeros(feat.shape[0], 1, *size, device=feat.device, dtype=torch.float32)
        for c0 in range(0, feat.shape[1], chunk):
            out += upsample(feat[:, c0 : c0 + chunk], size).square().sum(dim=1, keepdim=True)
    return out


def semantic_factored(
    x: torch.Tensor, gate: torch.Tensor, feat: torch.Tensor, basis: torch.Tensor, feat_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`semantic` of ``(x, gate * up(feat), basis)`` without the (B, C, H, W) tensors.

    With R_c = sum_k x_k W_kc and F_c = g up(feat)_c, per pixel
    sum_c (R_c - F_c)^2 = x^T (W W^T) x - 2 g sum_k x_k up(W feat)_k + g^2 sum_c up(feat)_c^2,
    because bilinear upsampling is linear per channel. Only p-channel maps are upsampled;
    the last term is a frozen [B, 1, H, W] map shared by every gate (``feat_sq``).
    Memory drops from O(B C H W) to O(B p H W); the value equals :func:`semantic` up to
    float rounding (the expansion cancels terms of similar size, so it runs in float32).

    Args:
        x (Tensor[B, p, H, W]): masked part probabilities.
        gate (Tensor[B, 1, H, W]): the mask applied to the features (G or sigmoid(S)).
        feat (Tensor[B, C, h, w]): frozen semantic features at any resolution.
        basis (Tensor[p, C]): part basis W.
        feat_sq (Tensor[B, 1, H, W], optional): :func:`upsampled_sq_norm` of ``feat``.
    """
    _check_parts("semantic_factored", x)
    B, p, H, W = x.shape
    if basis.dim() != 2 or basis.shape != (p, feat.shape[1]):
        raise ValueError(
            f"semantic_factored: basis must be Tensor[p, C] = {(p, feat.shape[1])}, got {tuple(basis.shape)}"
        )
    if feat.dim() != 4 or feat.shape[0] != B:
        raise ValueError(f"semantic_factored: feat must be Tensor[B={B}, C, h, w], got {tuple(feat.shape)}")
    if gate.shape != (B, 1, H, W):
        raise ValueError(
            f"semantic_factored: gate must be Tensor[B, 1, H, W] = {(B, 1, H, W)}, got {tuple(gate.shape)}"
        )
    x, gate, basis = x.float(), gate.float(), basis.float()
    if feat_sq is None:
        feat_sq = upsampled_sq_norm(feat, (H, W))
    gram = basis @ basis.t()  # [p, p]
    rr = torch.einsum("bkhw,kl,blhw->bhw", x, gram, x)  # [B, H, W]
    z = upsample(torch.einsum("kc,bchw->bkhw", basis, feat.float()), (H, W))  # [B, p, H, W]
    rf = (x * z).sum(dim=1) * gate[:, 0]  # [B, H, W]
    ff = gate[:, 0].square() * feat_sq[:, 0]  # [B, H, W]
    return (rr - 2 * rf + ff).sum() / (B * feat.shape[1] * H * W)


def orthonormal(basis: torch.Tensor) -> torch.Tensor:
    """sum of (Wn Wn^T - I)^2 with rows of W L2-normalised (eps 1e-7 inside the sqrt)."""
    if basis.dim() != 2:
        raise ValueError(f"orthonormal: basis must be Tensor[p, C], got {tuple(basis.shape)}")
    b = basis.float()
    wn = b / torch.sqrt((b * b).sum(dim=1, keepdim=True) + EPS)  # [p, C]
    gram = wn @ wn.t()  # [p, p]
    eye = torch.eye(b.shape[0], device=b.device, dtype=b.dtype)
    return ((gram - eye) ** 2).sum()


def area(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Area-variance loss (paper eq. 3-4), see :func:`pdnet.ops.area_variance`."""
    return ops.area_variance(x, backend=backend)


def part_total(
    part_logits: torch.Tensor,
    gt: torch.Tensor,
    saliency_logit: torch.Tensor,
    feat: torch.Tensor,
    basis: torch.Tensor,
    variant: str = "release",
    backend: str = "auto",
    semantic_impl: str = "factored",
) -> dict[str, torch.Tensor]:
    """All part losses of one frame, as named terms plus ``total``.

    Args:
        part_logits (Tensor[B, p, H, W]): part logits D at the input size.
        gt (Tensor[B, 1, H, W]): ground-truth mask in [0, 1].
        saliency_logit (Tensor[B, 1, H, W]): saliency logit S at the input size.
        feat (Tensor[B, C, h, w]): semantic features (any size; bilinearly
            upsampled to H x W with align_corners=True).
        basis (Tensor[p, C]): part basis W = ReLU(w).
        variant: ``release`` sums the GT-masked and the saliency-masked terms, the
            latter halved (release code); ``paper`` averages the two (eq. 6).
        semantic_impl: ``factored`` (default, :func:`semantic_factored`: no (B, C, H, W)
            tensors) or ``dense`` (the release's formula, :func:`semantic`).
    """
    if semantic_impl not in ("factored", "dense"):
        raise ValueError(f"part_total: semantic_impl must be 'factored' or 'dense', got {semantic_impl!r}")
    if variant not in ("release", "paper"):
        raise ValueError(f"part_total: variant must be 'release' or 'paper', got {variant!r}")
    for name, t in (("gt", gt), ("saliency_logit", saliency_logit)):
        if (
            t.dim() != 4
            or t.shape[1] != 1
            or t.shape[0] != part_logits.shape[0]
            or t.shape[-2:] != part_logits.shape[-2:]
        ):
            raise ValueError(
                f"part_total: {name} must be Tensor[B, 1, H, W] matching part_logits "
                f"{tuple(part_logits.shape)}, got {tuple(t.shape)}"
            )
    size = part_logits.shape[-2:]
    gt = gt.float()
    sal = torch.sigmoid(saliency_logit.float())  # [B, 1, H, W]
    x_gt = ops.part_masks_gt(part_logits.float(), gt, backend=backend)  # [B, p, H, W]
    x_sal = ops.part_masks(part_logits.float(), saliency_logit.float(), backend=backend)
    if semantic_impl == "dense":
        feat_up = upsample(feat.float(), size)  # [B, C, H, W]
        sem_gt, sem_sal = semantic(x_gt, feat_up * gt, basis), semantic(x_sal, feat_up * sal, basis)
    else:
        feat_sq = upsampled_sq_norm(feat, size)  # [B, 1, H, W], shared by both gates
        sem_gt = semantic_factored(x_gt, gt, feat, basis, feat_sq)
        sem_sal = semantic_factored(x_sal, sal, feat, basis, feat_sq)
    terms = {
        "concentration_gt": concentration(x_gt),
        "concentration_sal": concentration(x_sal),
        "semantic_gt": sem_gt,
        "semantic_sal": sem_sal,
        "orthonormal": orthonormal(basis),
        "area_gt": area(x_gt, backend),
        "area_sal": area(x_sal, backend),
    }
    w_sal = 0.5 if variant == "release" else 1.0
    w_both = 1.0 if variant == "release" else 0.5
    total = (
        w_both * (terms["concentration_gt"] + w_sal * terms["concentration_sal"])
        + w_both * (terms["semantic_gt"] + w_sal * terms["semantic_sal"])
        + terms["orthonormal"]
        + 0.5 * (terms["area_gt"] + terms["area_sal"])
    )
    terms["total"] = total
    return terms


class PartBasis(nn.Module):
    """Learnable part basis w (p, C), initialised |N(0, 1)|; forward returns W = ReLU(w)."""

    def __init__(self, parts: int, channels: int = 512, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(parts, channels, generator=generator).abs())

    def forward(self) -> torch.Tensor:
        return torch.relu(self.weight)
