"""Inference: checkpoints, the fast path, streaming / batched segmentation, video I/O.

* :func:`load` builds a PDNet from this project's checkpoints or the release's files;
  :func:`save_model_checkpoint` writes this project's format (see :mod:`.checkpoint`).
* :class:`FastPDNet` is the fast path (BatchNorm folded, parts batched), used by
* :class:`VideoSegmenter`, the per-clip streaming object (``step(frame)``) with a batched
  ``predict(frames, state)``, channels_last, bf16/fp16 and CUDA graphs on GPUs;
* :func:`segment_video` goes from a video file or frame folder to mask PNGs, an overlay
  video and a background-replaced video. ``pdnet segment`` is its command line.
"""
from .checkpoint import (
    CheckpointError,
    checkpoint_kind,
    infer_config,
    load,
    load_engine_state_dict,
    read_checkpoint,
    save_model_checkpoint,
)
from .fused import FastPDNet, fold_batchnorm, fold_conv_bn
from .segment import segment_video
from .segmenter import VideoSegmenter, as_frame_batch, preprocess, to_uint8
from .video import FrameSource, SourceError, VideoWriter

__all__ = [
    "CheckpointError",
    "FastPDNet",
    "FrameSource",
    "SourceError",
    "VideoSegmenter",
    "VideoWriter",
    "as_frame_batch",
    "checkpoint_kind",
    "fold_batchnorm",
    "fold_conv_bn",
    "infer_config",
    "load",
    "load_engine_state_dict",
    "preprocess",
    "read_checkpoint",
    "save_model_checkpoint",
    "segment_video",
    "to_uint8",
]
