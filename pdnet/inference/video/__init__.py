"""Video and frame-folder I/O for inference (PyAV for video files).

* :mod:`.source`: reading. :class:`FrameSource` gives the frames of a video file or of
  a folder of images, as RGB uint8 arrays [H, W, 3] each with the name of its mask
  file; a video that ends early is detected (the rules are in that module). Input
  problems raise :class:`SourceError`, naming the file.
* :mod:`.writer`: writing. :func:`write_mask` (one 8-bit grey PNG), :class:`VideoWriter`
  (H.264, else MPEG-4), both atomic: a temporary file beside the target, moved into
  place when complete. Output problems raise :class:`OutputError`, naming the file.
* :mod:`.background`: the ``--composite`` background, an image file or a colour.

None of these modules imports torch (:func:`background` does, when called), so that
``pdnet segment`` checks its input and outputs before loading the model.
"""
from .background import background, background_array, parse_colour
from .source import (
    DEFAULT_FOLDER_FPS,
    IMAGE_EXTENSIONS,
    FrameSource,
    SourceError,
    TruncatedVideoWarning,
    check_fps,
    prefetch,
)
from .writer import BackgroundWorker, OutputError, VideoWriter, remove_stale_temporaries, write_mask

__all__ = [
    "DEFAULT_FOLDER_FPS",
    "IMAGE_EXTENSIONS",
    "BackgroundWorker",
    "FrameSource",
    "OutputError",
    "SourceError",
    "TruncatedVideoWarning",
    "VideoWriter",
    "background",
    "background_array",
    "check_fps",
    "parse_colour",
    "prefetch",
    "remove_stale_temporaries",
    "write_mask",
]
