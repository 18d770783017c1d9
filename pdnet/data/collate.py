"""Batches of (target, reference) samples: :func:`collate_pairs` packs the four pixel
entries of a batch into one :class:`~pdnet.data.transport.PairBatch` buffer, and
:func:`prepare_batch` moves a batch to the training device and finishes it there
(normalises uint8 batches, crops, flips and resizes ``output="raw"`` batches)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .augment import CropFlip, apply_crop_flip_resize, augment_rgba, normalize_uint8, rgba_to_float
from .transport import PIXEL_KEYS, PairBatch, batch_buffer


def _rgba_of(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
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



def _collate_small(values):
    from torch.utils.data import default_collate

    first = values[0]
    if isinstance(first, torch.Tensor) and first.device.type == "cpu":
        return torch.stack(values)  # small: stays in this process's memory, sent by value
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return default_collate(values)
    return torch.tensor(values, dtype=torch.float64 if isinstance(first, float) else torch.int64)


def _pack(samples) -> PairBatch | None:
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
        pixels = batch_buffer((b, 2, h, w, 4), torch.uint8)
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
        pixels = batch_buffer((total,), dtype)
        meta = dict(shapes, _batch=b)
        views = PairBatch.views(pixels, "planes", meta)
        for k in PIXEL_KEYS:
            torch.stack([s[k] for s in samples], out=views[k])
        layout = "planes"
    out = PairBatch({}, pixels, layout, meta)
    out.update(PairBatch.views(pixels, layout, meta))
    return out


def prepare_batch(batch: dict[str, object], device=None, non_blocking: bool = True) -> dict[str, object]:
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
