"""The recipe's step plan: image and video steps, epochs and the learning rate of each step.

Steps alternate image, video, video, image, ... (``train.image_every``). An epoch is one
pass over the video data plus the image steps interleaved with it, so the epoch of a
step is a pure function of the step number. The lr follows a poly schedule (power
``train.poly_power``) over all steps and is halved from epoch ``train.halve_lr_from_epoch``.
Image steps train the backbone at lr and the rest at ``image_head_lr`` * lr; video steps
the backbone at ``video_backbone_lr`` * lr and the rest at ``video_head_lr`` * lr.
"""
from __future__ import annotations

import math
from typing import Any


class Schedule:
    """Step numbers (0-based) -> kind of step, epoch and learning rates.

    Args:
        tc: the config's ``train`` section.
        video_batches_per_epoch: batches of one pass over the video data (per process).
    """

    def __init__(self, tc: dict[str, Any], video_batches_per_epoch: int) -> None:
        k, v = tc["image_every"], video_batches_per_epoch
        self.image_every = k
        #: steps of one epoch: the video batches plus the image steps among them
        self.steps_per_epoch = v if k <= 0 else math.ceil(v * k / (k - 1)) if k > 1 else v
        self.total_steps = self.steps_per_epoch * tc["epochs"]
        self.lr, self.poly_power, self.halve_from = tc["lr"], tc["poly_power"], tc["halve_lr_from_epoch"]
        #: (backbone, rest) lr multipliers of image and video steps
        self.image_scales = (1.0, tc["image_head_lr"])
        self.video_scales = (tc["video_backbone_lr"], tc["video_head_lr"])

    def is_image_step(self, step: int) -> bool:
        return self.image_every > 0 and step % self.image_every == 0

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The base lr of ``step``: poly decay over all steps, halved from the configured epoch."""
        lr = self.lr * (1.0 - min(step, self.total_steps - 1) / self.total_steps) ** self.poly_power
        if self.halve_from is not None and self.epoch_of(step) >= self.halve_from:
            lr *= 0.5
        return lr

    def group_lrs(self, step: int, image: bool) -> tuple[float, float, float]:
        """(base lr, backbone lr, lr of the rest) of ``step``, an image step or a video step."""
        lr = self.lr_at(step)
        backbone, rest = self.image_scales if image else self.video_scales
        return lr, lr * backbone, lr * rest
