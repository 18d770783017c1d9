"""Inference: checkpoints, the fast path, streaming / batched segmentation, video I/O.

* :func:`load` builds a PDNet from this project's checkpoints or the release's files
  (:mod:`.loading`, :mod:`.release_config`); :func:`save_model_checkpoint` writes this
  project's format (see :mod:`.checkpoint`).
* :class:`FastPDNet` is the fast path (BatchNorm folded, parts batched), used by
* :class:`VideoSegmenter`, the per-clip streaming object (``step(frame)``) with a batched
  ``predict(frames, state)``, channels_last, bf16/fp16 and CUDA graphs on GPUs;
* :func:`segment_video` goes from a video file or frame folder to mask PNGs, an overlay
  video and a background-replaced video. ``pdnet segment`` is its command line.

The package imports lazily: ``import pdnet.inference`` (as ``pdnet segment`` does to
check its arguments) loads neither torch nor the model; the first use of a name below
imports the module that defines it.
"""
import typing as _typing

from .._lazy import lazy_attributes as _lazy_attributes

#: public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_model_checkpoint": "checkpoint",
    "FastPDNet": "fused",
    "fold_batchnorm": "fused",
    "fold_conv_bn": "fused",
    "checkpoint_kind": "loading",
    "load": "loading",
    "load_engine_state_dict": "loading",
    "infer_config": "release_config",
    "check_outputs": "segment",
    "segment_video": "segment",
    "VideoSegmenter": "segmenter",
    "as_frame_batch": "segmenter",
    "preprocess": "segmenter",
    "to_uint8": "segmenter",
    "FrameSource": "video",
    "OutputError": "video",
    "SourceError": "video",
    "TruncatedVideoWarning": "video",
    "VideoWriter": "video",
    "WinogradConv2d": "winograd",
    "convert_winograd": "winograd",
}

__all__ = [
    "CheckpointError",
    "FastPDNet",
    "FrameSource",
    "OutputError",
    "SourceError",
    "TruncatedVideoWarning",
    "VideoSegmenter",
    "VideoWriter",
    "WinogradConv2d",
    "as_frame_batch",
    "check_outputs",
    "checkpoint_kind",
    "convert_winograd",
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

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .checkpoint import CheckpointError, read_checkpoint, save_model_checkpoint
    from .fused import FastPDNet, fold_batchnorm, fold_conv_bn
    from .loading import checkpoint_kind, load, load_engine_state_dict
    from .release_config import infer_config
    from .segment import check_outputs, segment_video
    from .segmenter import VideoSegmenter, as_frame_batch, preprocess, to_uint8
    from .video import FrameSource, OutputError, SourceError, TruncatedVideoWarning, VideoWriter
    from .winograd import WinogradConv2d, convert_winograd


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)
