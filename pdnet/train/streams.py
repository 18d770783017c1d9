"""The training data as endless, resumable streams of batches.

Data order and augmentation are functions of (seed, epoch, position): the sampler draws
a seeded permutation per epoch, sharded across ranks, and the datasets draw each
sample's augmentation from its epoch and index. A :class:`Stream`'s state (epoch,
batches consumed) is all a resumed run needs to replay exactly the batches the
uninterrupted run would have seen.
"""
from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from .errors import TrainError


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded across ranks, starting at any position.

    ``set_epoch(epoch, start)`` selects the epoch's order and skips its first ``start``
    indices of this rank, so a resumed run continues where it stopped.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("ResumableSampler: empty dataset")
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0

    def per_rank(self) -> int:
        return math.ceil(self.size / self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        total = self.per_rank() * self.world
        perm = (perm * math.ceil(total / len(perm)))[:total]  # pad by wrapping, as DistributedSampler
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.per_rank() - self.start


class Stream:
    """An endless supply of batches from one DataLoader, with a resumable position."""

    def __init__(self, loader: DataLoader, sampler: ResumableSampler, batch_size: int) -> None:
        self.loader, self.sampler, self.batch_size = loader, sampler, batch_size
        self.epoch, self.consumed = 0, 0  # batches consumed in the current epoch
        self._it: Iterator | None = None

    def batches_per_epoch(self) -> int:
        return self.sampler.per_rank() // self.batch_size

    def _restart(self) -> None:
        self.sampler.set_epoch(self.epoch, self.consumed * self.batch_size)
        for ds in _leaf_datasets(self.loader.dataset):
            ds.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def next(self):
        if self.consumed >= self.batches_per_epoch():
            self.epoch, self.consumed = self.epoch + 1, 0
            self._it = None
        if self._it is None:
            self._restart()
        batch = next(self._it)
        self.consumed += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state(self, s: dict[str, int]) -> None:
        self.epoch, self.consumed, self._it = int(s["epoch"]), int(s["consumed"]), None


def _leaf_datasets(ds):
    if isinstance(ds, ConcatDataset):
        for d in ds.datasets:
            yield from _leaf_datasets(d)
    elif hasattr(ds, "set_epoch"):
        yield ds


def build_datasets(dc: dict[str, Any], group: str, split: str, augment: bool) -> list:
    """The datasets of ``data.<group>`` (``video`` or ``image``) for ``split``.

    Training datasets (``augment``) give ``data.output`` samples; evaluation ones give
    the decoded frames as they are (``raw``), which validation segments like inference.
    """
    from ..data import build_dataset

    return [
        build_dataset(
            entry.get("kind", "auto"),
            entry["root"],
            split=entry.get("split", split),
            size=dc["size"],
            augment=augment,
            seed=dc["seed"] + (0 if group == "video" else 7919),
            output=dc["output"] if augment else "raw",
            skip_bad=dc["skip_bad"],
        )
        for entry in dc[group]
    ]


def build_stream(datasets: list, seed: int, batch_size: int, workers: int, rank: int, world: int,
                 pin_memory: bool, keep_freed_memory: bool = False) -> Stream:
    """A stream over ``datasets`` (concatenated), ``batch_size`` samples per process and step;
    ``keep_freed_memory``: the loader's worker processes keep the memory they free
    (:func:`pdnet.data.datasets.tune_worker_malloc`).

    Raises:
        TrainError: fewer samples than one batch per process.
    """
    from ..data import collate_pairs

    ds = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    sampler = ResumableSampler(len(ds), seed, rank, world)
    if sampler.per_rank() < batch_size:
        raise TrainError(f"the training data has {len(ds)} samples, fewer than one batch of {batch_size} per process")
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=partial(_init_worker, keep_freed_memory=keep_freed_memory),
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate_pairs,
    )
    return Stream(loader, sampler, batch_size)


def _init_worker(worker_id: int, keep_freed_memory: bool) -> None:
    from ..data.datasets import seed_worker, tune_worker_malloc

    # Ctrl-C reaches the whole process group: the main process stops the run at a step
    # boundary, so the workers ignore it and keep serving until they are shut down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed_worker(worker_id)
    if keep_freed_memory:
        tune_worker_malloc()
