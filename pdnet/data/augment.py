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
:func:`pdnet.data.io.read_rgba`) and augment them with :func:`augment_rgba`; a collated
batch of such samples is a :class:`PairBatch`, whose pixels travel between processes as
one buffer (see :func:`collate_pairs`).

All randomness comes from the ``numpy.random.Generator`` passed in, so a sample is a
pure function of its seed (see :func:`pdnet.data.datasets.sample_rng`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD

SizeLike = Union[int, Tuple[int, int]]
#: sample formats (see pdnet.data.datasets): "float" (normalised images, [0, 1] masks),
#: "uint8" (compact), "raw" (decoded frames + crop/flip, resampled by prepare_batch)
OUTPUTS = ("float", "uint8", "raw")

_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32).view(3, 1, 1)
_OFFSET = torch.tensor([m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32).view(3, 1, 1)


def as_size(size: SizeLike) -> Tuple[int, int]:
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


def sample_crop_flip(rng: np.random.Generator, height: int, width: int, crop: bool = True, flip: bool = True) -> CropFlip:
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
    mask: Optional[torch.Tensor],
    geom: Optional[CropFlip],
    size: Tuple[int, int],
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
        # copying it first (~0.1 ms) about halves the resize time at 480p (bench/bench_data.py)
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
        raise ValueError(f"pack_rgba: mask must be uint8 [1, {image.shape[1]}, {image.shape[2]}], got {tuple(mask.shape)}")
    out = torch.empty((*image.shape[1:], 4), dtype=torch.uint8, device=image.device)
    out[..., :3] = image.permute(1, 2, 0)
    out[..., 3] = mask[0]
    return out


def augment_rgba(rgba: torch.Tensor, geom: Optional[CropFlip], size: Tuple[int, int]) -> torch.Tensor:
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
        # and the kernel is fastest from a dense copy (about 0.03 ms at 480p)
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


def geometry_tensor(geom: Optional[CropFlip], height: int, width: int) -> torch.Tensor:
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

    def geometry(self, rng: Optional[np.random.Generator], height: int, width: int) -> Optional[CropFlip]:
        if not self.train:
            return None
        if rng is None:
            raise ValueError("PairAugment(train=True) needs a numpy Generator")
        return sample_crop_flip(rng, height, width)

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor], rng: Optional[np.random.Generator] = None):
        geom = self.geometry(rng, image.shape[-2], image.shape[-1])
        return apply_crop_flip_resize(image, mask, geom, self.size, self.output)

    def __repr__(self) -> str:
        return f"PairAugment(size={self.size}, train={self.train}, output={self.output!r})"


PIXEL_KEYS = ("target", "target_mask", "reference", "reference_mask")
#: tensors up to this size travel between processes inside the pickle (a shared-memory
#: segment and a file descriptor each would cost more)
_BY_VALUE_BYTES = 1 << 16


class PairBatch(dict):
    """A collated batch (a dict, as ``default_collate`` makes) whose four pixel entries
    (``target``, ``target_mask``, ``reference``, ``reference_mask``) are views of one
    buffer, :attr:`pixels`, so that a DataLoader worker hands the batch over as one
    shared-memory segment instead of four, and :func:`prepare_batch` (and
    ``pin_memory``) moves one tensor. Small tensors (``size``, ``index``) travel by value.

    Layouts (:attr:`layout`):

    - ``"rgba"``: ``pixels`` Tensor[B, 2, h, w, 4] uint8, frame 0 the target, frame 1 the
      reference, the mask as alpha; ``target`` is ``pixels[:, 0, ..., :3]`` as
      [B, 3, h, w] (channels-last strides), ``target_mask`` the alpha as [B, 1, h, w];
    - ``"planes"``: ``pixels`` one flat tensor holding the four entries one after the
      other, each a contiguous [B, C, h, w] tensor.

    Entries may be replaced like in any dict; the buffer is used only while all four are
    still its views.
    """

    def __init__(self, data=(), pixels: Optional[torch.Tensor] = None, layout: Optional[str] = None, shapes=None):
        super().__init__(data)
        self.pixels = pixels
        self.layout = layout
        self.shapes = shapes  # planes: {key: (C, h, w)} in buffer order

    @staticmethod
    def views(pixels: torch.Tensor, layout: str, shapes=None) -> Dict[str, torch.Tensor]:
        """The four pixel entries as views of ``pixels``."""
        if layout == "rgba":
            out = {}
            for f, key in enumerate(("target", "reference")):
                chw = pixels[:, f].permute(0, 3, 1, 2)
                out[key], out[f"{key}_mask"] = chw[:, :3], chw[:, 3:]
            return out
        if layout == "planes":
            out, start = {}, 0
            flat = pixels.view(-1)
            batch = shapes["_batch"]
            for key in PIXEL_KEYS:
                c, h, w = shapes[key]
                n = batch * c * h * w
                out[key] = flat[start : start + n].view(batch, c, h, w)
                start += n
            return out
        raise ValueError(f"PairBatch: unknown layout {layout!r}")

    def intact(self) -> bool:
        """Whether the four pixel entries are still the views of :attr:`pixels`."""
        if self.pixels is None:
            return False
        for key, v in self.views(self.pixels, self.layout, self.shapes).items():
            x = self.get(key)
            if not isinstance(x, torch.Tensor) or x.data_ptr() != v.data_ptr():
                return False
            if x.stride() != v.stride() or x.shape != v.shape:
                return False
        return True

    def __copy__(self):
        return PairBatch(self, self.pixels, self.layout, self.shapes)

    def __reduce__(self):
        packed = self.intact()
        entries = []
        for key, v in self.items():
            if packed and key in PIXEL_KEYS:
                entries.append((key, "view", None))
            elif (
                isinstance(v, torch.Tensor)
                and v.device.type == "cpu"
                and not v.requires_grad
                and v.numel() * v.element_size() <= _BY_VALUE_BYTES
            ):
                entries.append((key, "numpy", v.numpy()))
            else:
                entries.append((key, "value", v))
        if packed:
            return _rebuild_pair_batch, (entries, self.pixels, self.layout, self.shapes)
        return _rebuild_pair_batch, (entries, None, None, None)

    def pin_memory(self, device=None):
        """Page-locked copy (DataLoader ``pin_memory=True``): the buffer is pinned once."""
        from torch.utils.data._utils.pin_memory import pin_memory as _pin

        if not self.intact():
            return PairBatch({k: _pin(v) for k, v in self.items()})
        pixels = self.pixels.pin_memory()
        views = self.views(pixels, self.layout, self.shapes)
        out = PairBatch({}, pixels, self.layout, self.shapes)
        for k, v in self.items():
            out[k] = views[k] if k in views else _pin(v)
        return out


def _rebuild_pair_batch(entries, pixels, layout, shapes) -> PairBatch:
    views = PairBatch.views(pixels, layout, shapes) if pixels is not None else {}
    out = PairBatch({}, pixels, layout, shapes)
    for key, how, v in entries:
        out[key] = views[key] if how == "view" else torch.from_numpy(v) if how == "numpy" else v
    return out


def _rgba_of(image: torch.Tensor, mask: torch.Tensor) -> Optional[torch.Tensor]:
    """The [h, w, 4] buffer that ``image`` ([3, h, w]) and ``mask`` ([1, h, w]) are views
    of (the dataset's uint8 samples), or None."""
    if image.dtype != torch.uint8 or mask.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        return None
    h, w = image.shape[1:]
    strides = (1, 4 * w, 4)
    if tuple(mask.shape) != (1, h, w) or image.stride() != strides or mask.stride() != strides:
        return None
    storage = image.untyped_storage()
    if storage.data_ptr() != mask.untyped_storage().data_ptr() or mask.storage_offset() != image.storage_offset() + 3:
        return None
    if image.storage_offset() + h * w * 4 > storage.nbytes():
        return None
    return image.as_strided((h, w, 4), (4 * w, 4, 1))


def _empty(shape, dtype) -> torch.Tensor:
    """A new CPU tensor; in a DataLoader worker, in shared memory (as ``default_collate``
    allocates, so the batch is not copied again to be sent)."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = 1
    for n in shape:
        numel *= int(n)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(numel, device="cpu")
    return elem.new(storage).resize_(tuple(shape))


def _collate_small(values):
    from torch.utils.data import default_collate

    first = values[0]
    if isinstance(first, torch.Tensor) and first.device.type == "cpu":
        return torch.stack(values)  # small: stays in this process's memory, sent by value
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return default_collate(values)
    return torch.tensor(values, dtype=torch.float64 if isinstance(first, float) else torch.int64)


def _pack(samples) -> Optional[PairBatch]:
    """Packs the four pixel entries of ``samples`` into one buffer, or None when the
    samples do not fit a layout (different dtypes, devices or shapes)."""
    first = samples[0]
    dtype = first["target"].dtype
    shapes = {k: tuple(first[k].shape) for k in PIXEL_KEYS}
    for s in samples:
        for k in PIXEL_KEYS:
            x = s[k]
            if not isinstance(x, torch.Tensor) or x.dtype != dtype or x.device.type != "cpu":
                return None
            if tuple(x.shape) != shapes[k]:
                return None
    b = len(samples)
    c, h, w = shapes["target"]
    if dtype == torch.uint8 and c == 3 and all(shapes[k] == (c if "mask" not in k else 1, h, w) for k in PIXEL_KEYS):
        pixels = _empty((b, 2, h, w, 4), torch.uint8)
        for i, s in enumerate(samples):
            for f, key in enumerate(("target", "reference")):
                rgba = _rgba_of(s[key], s[f"{key}_mask"])
                if rgba is not None:
                    pixels[i, f].copy_(rgba)  # one dense copy
                else:
                    pixels[i, f, ..., :3].copy_(s[key].permute(1, 2, 0))
                    pixels[i, f, ..., 3].copy_(s[f"{key}_mask"][0])
        layout, meta = "rgba", None
    else:
        total = sum(b * c_ * h_ * w_ for c_, h_, w_ in shapes.values())
        pixels = _empty((total,), dtype)
        meta = dict(shapes, _batch=b)
        views = PairBatch.views(pixels, "planes", meta)
        for k in PIXEL_KEYS:
            torch.stack([s[k] for s in samples], out=views[k])
        layout = "planes"
    out = PairBatch({}, pixels, layout, meta)
    out.update(PairBatch.views(pixels, layout, meta))
    return out


def prepare_batch(batch: Dict[str, object], device=None, non_blocking: bool = True) -> Dict[str, object]:
    """Moves a collated batch to ``device`` and finishes it there.

    - ``output="raw"`` batches (full decoded frames plus ``target_crop`` /
      ``reference_crop``): each frame is cropped, flipped and resized to ``out_size`` on
      the device (on the CPU this is exactly the ``output="float"`` computation);
    - uint8 images (``output="uint8"``) are ImageNet-normalised, uint8 masks become
      float32 in [0, 1];
    - float batches are only moved. Other entries are kept.

    A :class:`PairBatch` whose pixel entries are still views of its buffer is moved as
    that one buffer (one transfer) and finished from it.

    Returns:
        a new dict: ``target``/``reference`` Tensor[B, 3, H, W] float32,
        ``target_mask``/``reference_mask`` Tensor[B, 1, H, W] float32 in [0, 1].
    """
    out = dict(batch)
    packed = isinstance(batch, PairBatch) and batch.intact()
    if packed:  # one transfer; the four entries are views of the moved buffer
        pixels = batch.pixels.to(device, non_blocking=non_blocking) if device is not None else batch.pixels
        moved = PairBatch.views(pixels, batch.layout, batch.shapes)
    else:
        moved = {}
        for key in PIXEL_KEYS:
            if key in batch:
                moved[key] = batch[key].to(device, non_blocking=non_blocking) if device is not None else batch[key]
    if "target_crop" in batch:
        size = tuple(int(v) for v in batch["out_size"][0])
        rgba = packed and batch.layout == "rgba" and pixels.device.type == "cpu"
        for f, frame in enumerate(("target", "reference")):
            geoms = batch[f"{frame}_crop"].tolist()
            images, masks = [], []
            for b, (top, left, h, w, flip) in enumerate(geoms):
                geom = CropFlip(top, left, h, w, bool(flip))
                if rgba:  # the RGBA frame as it is (what apply_crop_flip_resize packs)
                    img, m = rgba_to_float(augment_rgba(pixels[b, f], geom, size))
                else:
                    img, m = apply_crop_flip_resize(moved[frame][b], moved[f"{frame}_mask"][b], geom, size, "float")
                images.append(img)
                masks.append(m)
            out[frame] = torch.stack(images)
            out[f"{frame}_mask"] = torch.stack(masks)
        return out
    if packed and batch.layout == "rgba":
        for f, frame in enumerate(("target", "reference")):
            out[frame], out[f"{frame}_mask"] = rgba_to_float(pixels[:, f])
        return out
    for key, x in moved.items():
        if x.dtype == torch.uint8:
            x = normalize_uint8(x) if key in ("target", "reference") else x.to(torch.float32).mul_(1.0 / 255.0)
        out[key] = x
    return out


def collate_pairs(samples):
    """``default_collate`` for (target, reference) samples, as a :class:`PairBatch`: the
    four pixel entries packed into one buffer (one shared-memory segment when called in a
    DataLoader worker), small tensors kept out of shared memory. Frames of different sizes
    (``output="raw"`` samples of a dataset with mixed frame sizes) are zero-padded at the
    bottom and right to the largest in the batch (their crops stay inside the original
    frames). Other samples go to ``default_collate``."""
    from torch.utils.data import default_collate

    if not (isinstance(samples[0], dict) and all(k in samples[0] for k in PIXEL_KEYS)):
        return default_collate(samples)
    shapes = {tuple(s[k].shape[-2:]) for s in samples for k in PIXEL_KEYS}
    if len(shapes) > 1:
        hmax = max(h for h, _ in shapes)
        wmax = max(w for _, w in shapes)
        padded = []
        for s in samples:
            s = dict(s)
            for k in PIXEL_KEYS:
                x = s[k]
                s[k] = F.pad(x, (0, wmax - x.shape[-1], 0, hmax - x.shape[-2]))
            padded.append(s)
        samples = padded
    out = _pack(samples)
    if out is None:
        out = PairBatch({k: default_collate([s[k] for s in samples]) for k in PIXEL_KEYS})
    batch = PairBatch({}, out.pixels, out.layout, out.shapes)
    for key in samples[0]:
        batch[key] = out[key] if key in PIXEL_KEYS else _collate_small([s[key] for s in samples])
    return batch
