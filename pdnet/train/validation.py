"""Validation during training: J&F of the model on the held-out clips.

The clips are segmented the way inference segments them (:class:`pdnet.inference.VideoSegmenter`
on the reference path, in float32: each frame resized to the model input, segmented
against the clip's first frame and upsampled to its own size) and scored by
:func:`pdnet.evaluation.evaluate_arrays` (DAVIS protocol; foreground where the probability
is above 0.5, i.e. the logit above 0).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..model import PDNet


def validate(model: PDNet, datasets: Sequence, device: torch.device, max_clips: int = 0,
             stopping: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
    """J&F, J and F means of ``model`` on the clips of ``datasets``.

    Args:
        model: the PDNet being trained; it is evaluated in eval mode and left in the mode
            it was in.
        datasets: evaluation datasets (``build_dataset(..., augment=False, output="raw")``).
        device: where the model is.
        max_clips: at most this many clips of each dataset (0: all).
        stopping: checked before each clip; when it turns true validation ends early.

    Returns:
        ``{"J&F", "J", "F"}``, or None without datasets, without :mod:`pdnet.evaluation`
        or when ``stopping`` ended it.
    """
    if not datasets:
        return None
    try:
        from ..evaluation import evaluate_arrays
    except ImportError:
        return None
    from ..inference.segmenter import VideoSegmenter

    was_training = model.training
    segmenter = VideoSegmenter(model, device=device, dtype=torch.float32, fast=False)
    preds = {}
    try:
        for ds in datasets:
            for c, clip in enumerate(ds.clips[: max_clips or None]):
                if stopping():
                    return None
                segmenter.reset()
                start = ds.clip_start(c)
                masks, truth = [], []
                for pos in range(len(clip)):
                    sample = ds[start + pos]  # the decoded frame and its mask, at the frame's size
                    masks.append((segmenter.step(sample["target"])[0] > 0.5).cpu())
                    truth.append(sample["target_mask"][0] >= 128)
                preds[clip.name] = (torch.stack(masks), torch.stack(truth))
    finally:
        model.train(was_training)
    overall = evaluate_arrays(preds, protocol="davis").to_dict()["overall"]
    return {"J&F": float(overall["J&F"]), "J": float(overall["J"]["mean"]), "F": float(overall["F"]["mean"])}
