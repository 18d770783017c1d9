"""PyTorch datasets of (target, reference) pairs, and the factory the trainer uses.

A sample (``dataset[i]``) is a dict:

==================  ===============================================================
``target``          Tensor[3, H, W] float32, ImageNet-normalised, H x W = ``size``
                    (default 480 x 480)
``target_mask``     Tensor[1, H, W] float32 in [0, 1] (soft after the resize)
``reference``       Tensor[3, H, W]: the clip's first annotated frame
``reference_mask``  Tensor[1, H, W] float32
``sequence``        str, the clip's name
``frame``           str, the target frame's file stem
``size``            Tensor[2] int64, (height, width) of the target frame on disk
``index``           int, ``i``
==================  ===============================================================

Faster formats for training on a GPU fed by few CPU cores (finish each collated batch
with :func:`pdnet.data.prepare_batch` on the device):

- ``output="uint8"``: images uint8 RGB, masks uint8 0..255, four times less for
  DataLoader workers to hand over;
- ``output="raw"``: the decoded frames at their own size (``target``, ``target_mask``,
  ``reference``, ``reference_mask`` uint8) plus the sampled geometry
  ``target_crop`` / ``reference_crop`` (Tensor[5] int64: top, left, height, width, flip)
  and ``out_size`` (Tensor[2]); workers only decode, and ``prepare_batch`` crops, flips,
  resizes and normalises on the device (on the CPU: exactly the ``"float"`` result).
  Use :func:`pdnet.data.collate_pairs` (``make_loader`` does) when frame sizes differ.

How: a frame and its mask are read as one RGBA buffer (:func:`pdnet.data.io.read_rgba`,
the mask as alpha; each worker caches its clips' reference frames that way) and
cropped, resized and flipped in one pass (:func:`pdnet.data.augment.augment_rgba`), so on
the CPU the resized mask is a grey level within 1/255 of a float resize. uint8 and raw
samples are views of [H, W, 4] buffers (image and mask with channels-last strides);
:func:`pdnet.data.collate_pairs` packs a batch's pixels into one buffer
(:class:`pdnet.data.transport.PairBatch`: one shared-memory segment per batch from a
worker, moved once by ``prepare_batch``). Throughput: bench/bench_data.py.

Video datasets have one sample per annotated frame (every frame of a clip is a target,
the first included); image datasets have one sample per image, used as both frames.
In training (``augment=True``) the target and the reference are augmented
independently: they share the clip and nothing else.

Determinism: a sample's randomness is a function of ``(seed, epoch, index)`` only
(:func:`sample_rng`), so it does not depend on the number of DataLoader workers, on which
worker loads it, or on what was loaded before; resuming mid-epoch replays the same
samples. Call :meth:`PairDataset.set_epoch` before iterating a new epoch (the epoch is
held in shared memory, so persistent workers see it too).

Bad data: files are checked in the main process at construction (``validate=``); a
decoding failure later, in a worker, raises :class:`DataError` naming the file (the
DataLoader re-raises it in the main process), or with ``skip_bad=True`` warns and
loads the next sample instead.

Memory: reading samples leaves the process's allocator as it is;
``make_loader(keep_freed_memory=True)`` makes the workers' glibc ``malloc`` keep the
memory they free (:func:`tune_worker_malloc`), so that each sample's frame buffers reuse
resident pages instead of page-faulting fresh ones.
"""
from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import OUTPUTS, PairAugment, SizeLike, as_size, augment_rgba, geometry_tensor, rgba_to_float
from .collate import collate_pairs
from .errors import DataError, PathLike, problem, raise_or_warn
from .io import read_rgba
from .layouts import LAYOUTS, SCANNERS, Clip, detect_layout, validate_clips

#: tries to find a loadable sample after a bad one when ``skip_bad=True``
_MAX_SKIPS = 16


def tune_sample_malloc() -> bool:
    """Makes this process's glibc ``malloc`` keep the large blocks it frees instead of
    handing them back to the kernel, so that the frame buffers of each sample (megabytes)
    reuse resident memory instead of page-faulting fresh pages every sample. Process-wide;
    only an explicit call applies it. Returns whether it applied (False without glibc)."""
    from .._malloc import keep_freed_memory

    return keep_freed_memory(trim_threshold=128 << 20)


def tune_worker_malloc() -> bool:
    """:func:`tune_sample_malloc` in a DataLoader worker process, a no-op elsewhere (for
    a ``worker_init_fn``; ``make_loader(keep_freed_memory=True)`` calls it). Returns
    whether it applied."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None and tune_sample_malloc()


def sample_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """The random generator of one frame of one sample (stream 0: target, 1: reference)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])


class PairDataset(Dataset):
    """(target, reference) pairs from clips. See the module docstring for the sample dict.

    Args:
        clips: from a ``pdnet.data.scan_*`` function (validated by the caller, or pass
            ``validate``).
        size: output (H, W) or int (default 480).
        augment: the release's random crop + flip (training) or resize only (evaluation).
        seed: augmentation seed.
        output: "float" (normalised float32 images, masks in [0, 1]), "uint8"
            (compact) or "raw" (decoded frames + geometry); finish "uint8" and "raw"
            batches with :func:`pdnet.data.prepare_batch`.
        skip_bad: warn and skip bad files instead of raising :class:`DataError`.
        validate: file checks run now, in this process: "none", "exists", "header"
            (default: formats, truncation, frame/mask sizes; no decoding), "full".
        images: one-frame clips whose single frame is both target and reference.
        ref_cache: decoded reference frames kept per process (LRU, clips).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        size: SizeLike = 480,
        augment: bool = True,
        seed: int = 0,
        output: str = "float",
        skip_bad: bool = False,
        validate: str = "header",
        images: bool = False,
        ref_cache: int = 16,
    ):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        clips = list(clips)
        if not clips:
            raise DataError("no clips: the dataset is empty")
        self.clips: list[Clip] = validate_clips(clips, validate, skip_bad)
        self.size = as_size(size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.skip_bad = bool(skip_bad)
        self.images = bool(images)
        self.output = output
        self.transform = PairAugment(self.size, train=self.augment, output="float" if output == "raw" else output)
        self._starts = np.cumsum([0] + [len(c) for c in self.clips]).tolist()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._ref_cache_size = int(ref_cache)
        self._ref_cache: OrderedDict[int, tuple] = OrderedDict()

    # ------------------------------------------------------------------ API
    def __len__(self) -> int:
        return self._starts[-1]

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation of epoch ``epoch`` (call before ``iter(loader)``)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def locate(self, index: int):
        """``index`` -> (clip, frame position in the clip)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        c = bisect.bisect_right(self._starts, index) - 1
        return self.clips[c], c, index - self._starts[c]

    def clip_start(self, c: int) -> int:
        """Index of the first sample (the reference frame) of clip ``c``; its samples are
        ``clip_start(c) .. clip_start(c) + len(clips[c]) - 1`` in time order."""
        return self._starts[c]

    @property
    def sequences(self) -> list[str]:
        return [c.name for c in self.clips]

    def __getitem__(self, index: int) -> dict[str, object]:
        index = int(index)
        first = index
        for _ in range(_MAX_SKIPS if self.skip_bad else 1):
            try:
                return self._load(index)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                raise_or_warn(exc, True, 2)
                clip, c, _ = self.locate(index)
                if exc.path in (str(clip.frames[0]), str(clip.masks[0])):
                    index = self._starts[c + 1] % len(self)  # bad reference: next clip
                else:
                    index = (index + 1) % len(self)
        raise DataError(f"{_MAX_SKIPS} bad samples in a row from index {first}; giving up")

    # ------------------------------------------------------------------ internals
    def _read(self, clip: Clip, pos: int) -> torch.Tensor:
        """The RGBA frame (Tensor[H, W, 4] uint8, the mask as alpha)."""
        return read_rgba(clip.frames[pos], clip.masks[pos], clip.mask_mode)

    def _reference(self, c: int, clip: Clip):
        hit = self._ref_cache.get(c)
        if hit is not None:
            self._ref_cache.move_to_end(c)
            return hit
        pair = self._read(clip, 0)
        if self._ref_cache_size > 0:
            self._ref_cache[c] = pair
            if len(self._ref_cache) > self._ref_cache_size:
                self._ref_cache.popitem(last=False)
        return pair

    def _load(self, index: int) -> dict[str, object]:
        clip, c, pos = self.locate(index)
        epoch = self.epoch
        rng_t = sample_rng(self.seed, epoch, index, 0) if self.augment else None
        rng_r = sample_rng(self.seed, epoch, index, 1) if self.augment else None
        if self.output != "raw":
            return self._load_rgba(clip, c, pos, index, rng_t, rng_r)
        # raw: the decoded frames as views of their RGBA buffers (collate_pairs packs them
        # with one dense copy each)
        ref = self._reference(c, clip).permute(2, 0, 1)
        frame = ref if pos == 0 else self._read(clip, pos).permute(2, 0, 1)
        image, mask, ref_image, ref_mask = frame[:3], frame[3:], ref[:3], ref[3:]
        info = {
            "sequence": clip.name,
            "frame": clip.frames[pos].stem,
            "size": torch.tensor(image.shape[1:], dtype=torch.int64),
            "index": index,
        }
        if self.output == "raw":
            geom_t = self.transform.geometry(rng_t, *image.shape[1:])
            geom_r = self.transform.geometry(rng_r, *ref_image.shape[1:])
            return {
                "target": image,
                "target_mask": mask,
                "reference": ref_image,
                "reference_mask": ref_mask,
                "target_crop": geometry_tensor(geom_t, *image.shape[1:]),
                "reference_crop": geometry_tensor(geom_r, *ref_image.shape[1:]),
                "out_size": torch.tensor(self.size, dtype=torch.int64),
                **info,
            }
        target, target_mask = self.transform(image, mask, rng_t)
        reference, reference_mask = self.transform(ref_image, ref_mask, rng_r)
        return {
            "target": target,
            "target_mask": target_mask,
            "reference": reference,
            "reference_mask": reference_mask,
            **info,
        }

    def _load_rgba(self, clip: Clip, c: int, pos: int, index: int, rng_t, rng_r) -> dict[str, object]:
        """"float" / "uint8" samples: each frame is read as one RGBA buffer (the mask as
        alpha; the reference stays cached in that layout) and cropped, resized and flipped
        in one pass (:func:`pdnet.data.augment.augment_rgba`). uint8 samples are views of
        that [h, w, 4] buffer (image ``[3, h, w]`` and mask ``[1, h, w]`` with HWC strides),
        which :func:`collate_pairs` packs into one buffer per batch."""
        ref = self._reference(c, clip)
        frame = ref if pos == 0 else self._read(clip, pos)
        h, w = frame.shape[:2]
        rh, rw = ref.shape[:2]
        target = augment_rgba(frame, self.transform.geometry(rng_t, h, w), self.size)
        reference = augment_rgba(ref, self.transform.geometry(rng_r, rh, rw), self.size)
        out = {}
        for key, rgba in (("target", target), ("reference", reference)):
            if self.output == "float":
                out[key], out[f"{key}_mask"] = rgba_to_float(rgba)
            else:
                chw = rgba.permute(2, 0, 1)
                out[key], out[f"{key}_mask"] = chw[:3], chw[3:]
        return {
            "target": out["target"],
            "target_mask": out["target_mask"],
            "reference": out["reference"],
            "reference_mask": out["reference_mask"],
            "sequence": clip.name,
            "frame": clip.frames[pos].stem,
            "size": torch.tensor((h, w), dtype=torch.int64),
            "index": index,
        }

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ref_cache"] = OrderedDict()  # each worker process fills its own
        return state

    def __repr__(self) -> str:
        kind = "images" if self.images else "clips"
        return (
            f"{type(self).__name__}({len(self.clips)} {kind}, {len(self)} samples, size={self.size}, "
            f"augment={self.augment}, seed={self.seed})"
        )


class VideoPairDataset(PairDataset):
    """Pairs (frame, first frame of its clip) from a video layout; see :func:`build_dataset`."""

    @classmethod
    def from_layout(cls, layout: str, root: PathLike, split: str = "train", skip_bad: bool = False, **kwargs):
        if layout not in ("davis", "mvps", "pphumanseg"):
            raise ValueError(f"VideoPairDataset: layout must be davis, mvps or pphumanseg, got {layout!r}")
        clips = SCANNERS[layout](root, split, skip_bad=skip_bad)
        return cls(clips, skip_bad=skip_bad, **kwargs)


class ImagePairDataset(PairDataset):
    """Pairs (image, same image) from image + mask folders; see :func:`build_dataset`."""

    def __init__(self, clips: Sequence[Clip], **kwargs):
        kwargs["images"] = True
        kwargs["ref_cache"] = 0  # each image is read once per epoch: nothing to cache
        super().__init__(clips, **kwargs)

    @classmethod
    def from_folders(cls, root: PathLike, split: str = "train", skip_bad: bool = False, **kwargs):
        return cls(SCANNERS["images"](root, split, skip_bad=skip_bad), skip_bad=skip_bad, **kwargs)


def build_dataset(
    kind: str,
    root: PathLike,
    split: str = "train",
    size: SizeLike = 480,
    augment: bool | None = None,
    seed: int = 0,
    output: str = "float",
    skip_bad: bool = False,
    validate: str = "header",
    ref_cache: int = 16,
) -> PairDataset:
    """The dataset of a layout.

    Args:
        kind: "davis" (also ``pdnet synth`` output), "mvps", "pphumanseg", "images"
            (EG1800 / SuperviselyPerson / COCO-person folders) or "auto" (guessed from
            the folder, :func:`detect_layout`).
        root: the dataset folder.
        split: the split list to read ("train", "val", ...).
        size: output (H, W) or int.
        augment: random crop + flip; default: ``split == "train"``.
        seed, output, skip_bad, validate, ref_cache: see :class:`PairDataset`.

    Returns:
        :class:`VideoPairDataset` or :class:`ImagePairDataset`.

    Raises:
        DataError: naming the bad file or list (checked here, in the main process).
    """
    if not Path(root).is_dir():
        raise problem(root, "dataset folder not found")
    if kind == "auto":
        kind = detect_layout(root)
    if kind not in LAYOUTS:
        raise ValueError(f"build_dataset: kind must be one of {LAYOUTS + ('auto',)}, got {kind!r}")
    opts = dict(
        size=size,
        augment=(split == "train") if augment is None else augment,
        seed=seed,
        output=output,
        validate=validate,
        ref_cache=ref_cache,
    )
    if kind == "images":
        return ImagePairDataset.from_folders(root, split, skip_bad=skip_bad, **opts)
    return VideoPairDataset.from_layout(kind, root, split, skip_bad=skip_bad, **opts)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker, and Python's and
    NumPy's global generators seeded from the worker's torch seed (the datasets here do
    not use them, but other transforms may)."""
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _init_tuned_worker(worker_id: int) -> None:
    """``worker_init_fn`` of ``make_loader(keep_freed_memory=True)``."""
    seed_worker(worker_id)
    tune_worker_malloc()


def make_loader(
    dataset: PairDataset,
    batch_size: int = 4,
    workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    persistent_workers: bool = True,
    pin_memory: bool = False,
    sampler=None,
    keep_freed_memory: bool = False,
) -> DataLoader:
    """A DataLoader with this package's conventions: ``seed_worker``, a seeded shuffle
    order (``torch.Generator().manual_seed(seed)``), persistent workers, prefetch 4,
    :func:`collate_pairs`. ``keep_freed_memory``: the workers' ``malloc`` keeps freed
    memory (:func:`tune_worker_malloc`; faster samples, a resident set that stays at its
    peak)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    kw = {}
    if workers > 0:
        kw.update(persistent_workers=persistent_workers, prefetch_factor=4)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_init_tuned_worker if keep_freed_memory else seed_worker,
        generator=g,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_pairs,
        **kw,
    )
