"""How a collated batch travels from a DataLoader worker to the training process: a
:class:`PairBatch` holds its four pixel entries as views of one buffer, allocated in
shared memory in a worker (:func:`batch_buffer`), so the batch crosses the process
boundary as one shared-memory segment and is pinned or moved to a device as one tensor.
Small tensors travel by value inside the pickle."""
from __future__ import annotations

import torch

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

    def __init__(self, data=(), pixels: torch.Tensor | None = None, layout: str | None = None, shapes=None):
        super().__init__(data)
        self.pixels = pixels
        self.layout = layout
        self.shapes = shapes  # planes: {key: (C, h, w)} in buffer order

    @staticmethod
    def views(pixels: torch.Tensor, layout: str, shapes=None) -> dict[str, torch.Tensor]:
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



def batch_buffer(shape, dtype) -> torch.Tensor:
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
