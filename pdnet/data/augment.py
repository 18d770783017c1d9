"""Joint (image, mask) augmentation of the release, on uint8 tensors.

Per frame, as the release's training transform: a random crop removing up to 1/8 of
the height and of the width (``dh`` uniform in ``[0, H//8)``, the top offset uniform in
``[0, dh)``; the same for the width), a horizontal flip with probability 1/2, a bilinear
resize (``align_corners=False``, no antialiasing, like ``cv2.resize``) to the configured
size, and ImageNet normalisation. The mask gets the same crop, flip and resize, so it
becomes soft (values in [0, 1]). Evaluation uses the resize and normalisation only.

Differences from the release, on purpose: on the CPU the image is resized in uint8 and
normalised afterwards (the release normalises first, then resizes in float); the
difference is the uint8 rounding of the resized image (within one grey level), and it
is several times faster. The mask rides along as the alpha channel of that resize (one
RGBA buffer: torch's vectorised uint8 kernel works on four channels anyway, so the mask
costs nothing), so on the CPU the resized mask is also a uint8 grey level: within one
grey level (1/255) of a float resize of the mask, and at most one level from its rounding
(the kernel's fixed-point weights and two rounded passes). On other devices
(``prepare_batch`` of ``output="raw"`` batches on a GPU) image and mask are resized in
float32.

Datasets keep frames as RGBA ``Tensor[H, W, 4]`` uint8 (:func:`pack_rgba`,
:func:`pdnet.data.io.read_rgba`) and augment them with :func:`augment_rgba`; batches of
such samples are collated by :mod:`pdnet.data.collate` into a
:class:`~pdnet.data.transport.PairBatch`.

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is a
pure function of its seed (see :func:`pdnet.data.datasets.sample_rng`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

SizeLike = int | tuple[int, int]
#: sample formats (see pdnet.data.datasets): "float" (normalised images, [0, 1] masks),
#: "uint8" (compact), "raw" (decoded frames + crop/flip, resampled by prepare_batch)
OUTPUTS = ("float", "uint8", "raw")

_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32).view(3, 1, 1)
_OFFSET = torch.tensor(
    [m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)], dtype=torch.float32
).view(3, 1, 1)


def as_size(size: SizeLike) -> tuple[int, int]:
    """``480`` or ``(480, 480)`` -> ``(H, W)``; rejects non-positive sizes."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return size


def normalize_uint8(image: torch.Tensor) -> torch.Tensor:
    """Fast ImageNet normalisation of uint8 RGB, equal to :func:`pdnet.preprocess.normalize`
    up to float rounding (one multiply-subtract, in place on the float copy). Works on
    any device (used by :func:`pdnet.data.prepare_batch` for ``output="uint8"`` batches).

    Args:
        image (Tensor[..., 3, H, W] uint8)

    Returns:
        Tensor[..., 3, H, W] float32.
    """
    if image.dtype != torch.uint8 or image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"normalize_uint8: expected uint8 [..., 3, H, W], got {image.dtype} {tuple(image.shape)}")
    if image.device.type == "cpu":
        return image.to(torch.float32).mul_(_SCALE).sub_(_OFFSET)
    return image.to(torch.float32).mul_(_SCALE.to(image.device)).sub_(_OFFSET.to(image.device))


@dataclass(frozen=True)
class CropFlip:
    """Geometry of one augmented frame: crop ``[top:top+height, left:left+width]``, then flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_crop_flip(
    rng: np.random.Generator, height: int, width: int, crop: bool = True, flip: bool = True
) -> CropFlip:
    """Draws the release's random crop (up to 1/8 of each side) and flip for an H x W frame."""
    top = left = 0
    ch, cw = height, width
    if crop:
        dh = int(rng.integers(0, height // 8)) if height // 8 >= 1 else 0
        dw = int(rng.integers(0, width // 8)) if width // 8 >= 1 else 0
        top = int(rng.integers(0, dh)) if dh > 0 else 0
        left = int(rng.integers(0, dw)) if dw > 0 else 0
        ch, cw = height - dh, width - dw
    do_flip = bool(rng.integers(0, 2) == 0) if flip else False
    return CropFlip(top, left, ch, cw, do_flip)


def apply_crop_flip_resize(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    geom: CropFlip | None,
    size: tuple[int, int],
    output: str = "float",
):
    """Crops, flips and resizes a frame and its mask.

    Args:
        image (Tensor[3, H, W] uint8; or float 0..255, as on devices without uint8 resize)
        mask (Tensor[1, H, W] uint8 0..255, or None)
        geom: the crop and flip (None: whole frame, no flip).
        size: (h, w) output size.
        output: "float": ImageNet-normalised float32 image, float32 mask in [0, 1];
            "uint8": uint8 image and uint8 mask (0..255, the resized mask rounded), four
            times less to move between processes (finish with ``prepare_batch``).

    Returns:
        (image Tensor[3, h, w], mask Tensor[1, h, w] or None)
    """
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    if image.dtype == torch.uint8 and image.device.type == "cpu" and mask is not None:
        # the CPU path: image and mask resized together as one RGBA buffer
        out = augment_rgba(pack_rgba(image, mask), geom, size)
        if output == "float":
            return rgba_to_float(out)
        chw = out.permute(2, 0, 1)
        return chw[:3].contiguous(), chw[3:].contiguous()
    flip = False
    if geom is not None:
        sl = (slice(None), slice(geom.top, geom.top + geom.height), slice(geom.left, geom.left + geom.width))
        image = image[sl]
        mask = None if mask is None else mask[sl]
        flip = geom.flip
    # The flip is applied after the resize, to the smaller output: a bilinear resize with
    # align_corners=False samples symmetrically about the centre, so it commutes with a
    # horizontal flip (tested). The crop is a view, so nothing is copied before the resize.
    if image.dtype == torch.uint8 and image.device.type != "cpu":
        image = image.to(torch.float32)  # bilinear resize of uint8 is a CPU speciality
    if tuple(image.shape[-2:]) != tuple(size):
        # uint8 on the CPU: torch's vectorised uint8 kernel, which wants a dense HWC
        # (channels_last) input: decoded frames are HWC, but a crop of one is not dense, and
        # resizing a dense copy of the crop is faster than resizing the strided view
        x = image[None]
        if x.dtype == torch.uint8:
            x = x.contiguous(memory_format=torch.channels_last)
        image = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)[0]
    if flip:
        image = image.flip(-1)
    if output == "float":
        out_image = normalize_uint8(image) if image.dtype == torch.uint8 else _normalize_255(image)
    else:
        out_image = image.contiguous() if image.dtype == torch.uint8 else image.round().clamp_(0, 255).to(torch.uint8)
    out_mask = None
    if mask is not None:
        if tuple(mask.shape[-2:]) != tuple(size):
            # resized as float in 0..255 (torch has no vectorised one-channel uint8 resize);
            # a bilinear blend of values in [0, 255] stays in [0, 255]
            m = F.interpolate(mask[None].to(torch.float32), size=size, mode="bilinear", align_corners=False)[0]
            out_mask = m.mul_(1.0 / 255.0).clamp_(0.0, 1.0) if output == "float" else m.round_().to(torch.uint8)
        else:
            out_mask = mask.to(torch.float32).mul_(1.0 / 255.0) if output == "float" else mask.contiguous()
        if flip:
            out_mask = out_mask.flip(-1)
    return out_image, out_mask


def pack_rgba(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A frame and its mask as one RGBA buffer (the mask is the alpha channel).

    Args:
        image (Tensor[3, H, W] uint8, any strides), mask (Tensor[1, H, W] uint8)

    Returns:
        Tensor[H, W, 4] uint8, contiguous.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"pack_rgba: image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    if mask.dtype != torch.uint8 or tuple(mask.shape) != (1, *image.shape[1:]):
        expected = f"[1, {image.shape[1]}, {image.shape[2]}]"
        raise ValueError(f"pack_rgba: mask must be uint8 {expected}, got {tuple(mask.shape)}")
    out = torch.empty((*image.shape[1:], 4), dtype=torch.uint8, device=image.device)
    out[..., :3] = image.permute(1, 2, 0)
    out[..., 3] = mask[0]
    return out


def augment_rgba(rgba: torch.Tensor, geom: CropFlip | None, size: tuple[int, int]) -> torch.Tensor:
    """Crops, resizes and flips an RGBA frame (:func:`pack_rgba`) in one pass of torch's
    vectorised uint8 bilinear kernel (``align_corners=False``, no antialiasing): the RGB
    channels equal the uint8 resize of the image alone, the alpha channel is the mask
    resized within one grey level of a float resize (see the module docstring).

    Args:
        rgba (Tensor[H, W, 4] uint8 on the CPU; any strides)
        geom: the crop and flip (None: whole frame, no flip).
        size: (h, w) output size.

    Returns:
        Tensor[h, w, 4] uint8, contiguous (a new tensor).
    """
    if rgba.dtype != torch.uint8 or rgba.dim() != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"augment_rgba: expected uint8 [H, W, 4], got {rgba.dtype} {tuple(rgba.shape)}")
    size = tuple(int(v) for v in size)
    flip = False
    if geom is not None:
        rgba = rgba[geom.top : geom.top + geom.height, geom.left : geom.left + geom.width]
        flip = geom.flip
    if tuple(rgba.shape[:2]) != size:
        # [1, 4, H, W] channels_last: the layout of the fast kernel; a crop is not dense,
        # and the kernel is fastest from a dense copy
        x = rgba.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        out = out[0].permute(1, 2, 0)
        if not out.is_contiguous():  # not the case with torch's kernel, but cheap to guard
            out = out.contiguous()
    elif not flip:
        return rgba.contiguous() if not rgba.is_contiguous() else rgba.clone()
    else:
        out = rgba
    if flip:
        # after the resize, on the smaller output (bilinear resizing commutes with a flip);
        # a pixel is 4 bytes: flip it as one int32
        h, w = out.shape[:2]
        words = out.contiguous().view(torch.int32).view(h, w)
        out = words.flip(-1).view(torch.uint8).view(h, w, 4)
    return out


def rgba_to_float(rgba: torch.Tensor):
    """RGBA uint8 (``Tensor[..., H, W, 4]``, any strides) -> (ImageNet-normalised image
    ``Tensor[..., 3, H, W]`` float32, mask ``Tensor[..., 1, H, W]`` float32 in [0, 1]),
    both contiguous, computed as :func:`normalize_uint8` and ``mask / 255`` are."""
    chw = rgba.movedim(-1, -3)
    # a converting copy into the contiguous result, then in-place float ops (a mixed-dtype
    # torch.mul(uint8, float, out=) of the strided view is about 8 times slower)
    image = torch.empty(chw[..., :3, :, :].shape, dtype=torch.float32, device=rgba.device)
    image.copy_(chw[..., :3, :, :])
    if rgba.device.type == "cpu":
        image.mul_(_SCALE).sub_(_OFFSET)
    else:
        image.mul_(_SCALE.to(rgba.device)).sub_(_OFFSET.to(rgba.device))
    mask = torch.empty(chw[..., 3:, :, :].shape, dtype=torch.float32, device=rgba.device)
    mask.copy_(chw[..., 3:, :, :]).mul_(1.0 / 255.0)
    return image, mask


def _normalize_255(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of float RGB in 0..255 (Tensor[3, H, W]), any device."""
    return image.to(torch.float32).mul(_SCALE.to(image.device)).sub_(_OFFSET.to(image.device))


def geometry_tensor(geom: CropFlip | None, height: int, width: int) -> torch.Tensor:
    """A crop/flip as Tensor[5] int64 (top, left, height, width, flip); None = whole frame."""
    if geom is None:
        geom = CropFlip(0, 0, height, width, False)
    return torch.tensor([geom.top, geom.left, geom.height, geom.width, int(geom.flip)], dtype=torch.int64)


class PairAugment:
    """The release's training (or evaluation) transform of one frame and its mask.

    Args:
        size: output (H, W) (default 480 x 480).
        train: random crop + flip (True) or resize only (False).
        output: "float" (ImageNet-normalised image, mask in [0, 1]) or "uint8" (image
            and mask as uint8, see :func:`apply_crop_flip_resize`); "raw" datasets use
            only :meth:`geometry` and leave the pixels to :func:`prepare_batch`.

    Call ``aug(image, mask, rng)`` with image Tensor[3, H, W] uint8, mask
    Tensor[1, H, W] uint8 and a ``numpy.random.Generator``; returns
    (Tensor[3, h, w], Tensor[1, h, w]).
    """

    def __init__(self, size: SizeLike = 480, train: bool = True, output: str = "float"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.size = as_size(size)
        self.train = bool(train)
        self.output = output

    def geometry(self, rng: np.random.Generator | None, height: int, width: int) -> CropFlip | None:
        if not self.train:
            return None
        if rng is None:
            raise ValueError("PairAugment(train=True) needs a numpy Generator")
        return sample_crop_flip(rng, height, width)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator | None = None):
        geom = self.geometry(rng, image.shape[-2], image.shape[-1])
        return apply_crop_flip_resize(image, mask, geom, self.size, self.output)

    def __repr__(self) -> str:
        return f"PairAugment(size={self.size}, train={self.train}, output={self.output!r})"
