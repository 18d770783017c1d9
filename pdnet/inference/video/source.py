"""Reading the input: the frames of a video file (PyAV) or of a folder of images.

* :class:`FrameSource`: frames of a video file (mp4, mov, mkv, anything FFmpeg reads)
  or of a folder of images (jpg/jpeg/png/bmp/webp, sorted by name), as RGB uint8 numpy
  arrays [H, W, 3], each with the name of its mask file.
* :func:`prefetch`: iterate a source in a background thread, so decoding overlaps computing.

Problems with the input (missing path, unreadable video, empty folder, frames of
different sizes, a video that ends early) raise :class:`SourceError`, whose message names
the file.

**Truncated videos.** A video whose decoding ends early is an error naming the file and
its last good frame (``allow_truncated=True`` keeps the decoded frames, with a
warning). It ends early when decoding fails mid-stream, or when fewer frames come out
than the file announces. The announced count is, first that applies:

1. the frame count in the stream's header (mp4 / mov / avi ...);
2. ``round(duration * rate)`` with the video stream's duration (its header field, or
   Matroska's per-track ``DURATION`` tag) and its average frame rate;
3. ``round(duration * rate)`` with the container's duration when the file holds no
   other stream (an audio track may be longer than the video).

Rules 2 and 3 apply to containers that record their duration in a header (Matroska /
WebM, MP4 / MOV, AVI, FLV, ASF). Files that announce no length (raw H.264, MPEG-TS / PS,
whose duration FFmpeg estimates from the data present) cannot be checked: a truncated
one cannot be told from a short one. Rule 2 and 3 assume a constant frame
rate; a variable-rate file they misjudge can be read with ``allow_truncated=True``.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = 25.0

#: FFmpeg demuxers whose files record their duration in a header (in others, such as
#: MPEG-TS, the duration is estimated from the data present, truncated or not)
_DURATION_IN_HEADER = frozenset({"matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2", "avi", "flv", "asf"})


class SourceError(ValueError):
    """An input video / frame folder / background that cannot be used; the message names it."""


class TruncatedVideoWarning(UserWarning):
    """A video ended early and ``allow_truncated`` kept the frames decoded so far."""


def check_fps(fps: float) -> float:
    """``fps`` as a float, checked: finite, 0 < fps <= 1000 (else ValueError naming it)."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"the frame rate must be a number, got {fps!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1000:
        raise ValueError(f"the frame rate must be a finite number in (0, 1000], got {fps!r}")
    return value


def _matroska_duration(text: str) -> float | None:
    """Matroska's ``DURATION`` tag ``HH:MM:SS.nnnnnnnnn`` -> seconds (None when malformed)."""
    parts = text.strip().split(":")
    try:
        h, m, sec = (float(x) for x in parts) if len(parts) == 3 else (None, None, None)
    except ValueError:
        return None
    if h is None or not all(math.isfinite(x) and x >= 0 for x in (h, m, sec)):
        return None
    return h * 3600 + m * 60 + sec


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is installed with the "data" extra
        raise SourceError("video I/O needs PyAV: pip install av") from None
    return av


class FrameSource:
    """The frames of a video file or of a folder of images.

    Attributes:
        path (Path): the input.
        is_video (bool): a video file (True) or a folder of images (False).
        fps (float): the video's average frame rate (folders: ``fps`` given, default 25).
        size (tuple): (H, W) of the first frame.
        names (list or None): folder: mask file names (frame stem + ".png").
        num_frames (int or None): number of frames when known: a folder's files, a video's
            announced count (see the module's rule; None when the file does not say).
        count_rule (str or None): where a video's ``num_frames`` comes from.
        decoded (int): frames yielded by the last complete iteration.
        truncated (str or None): with ``allow_truncated``, why the last iteration ended early.

    Iterating yields ``(name, frame)`` with frame a numpy uint8 array [H, W, 3] (RGB)
    and name the mask file name (``00000.png`` ... for videos). A video that ends early
    raises :class:`SourceError` at the end of the iteration (naming the file and the
    last good frame) unless ``allow_truncated``, which warns (:class:`TruncatedVideoWarning`).
    """

    def __init__(self, path: PathLike, fps: float | None = None, allow_truncated: bool = False) -> None:
        if isinstance(path, str) and not path.strip():
            raise SourceError("the input path is empty")
        if fps is not None:
            fps = check_fps(fps)
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file or directory")
        self.is_video = not self.path.is_dir()
        self.allow_truncated = bool(allow_truncated)
        self.names: list[str] | None = None
        self.count_rule: str | None = None
        self.decoded = 0
        self.truncated: str | None = None
        if self.is_video:
            self._probe_video()
            if fps is not None:
                self.fps = fps
        else:
            files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise SourceError(f"{self.path}: folder holds no frames ({', '.join(IMAGE_EXTENSIONS)})")
            self.files = files
            self.names = [p.stem + ".png" for p in files]
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            if dup:
                raise SourceError(f"{self.path}: several frames would write the same mask file: {dup[:5]}")
            self.num_frames = len(files)
            self.fps = fps if fps is not None else DEFAULT_FOLDER_FPS
            self.size = self._read_image(files[0]).shape[:2]
            self._check_headers()

    def _check_headers(self) -> None:
        """Every frame file opens as an image of the first frame's size (headers only: cheap)."""
        from PIL import Image, UnidentifiedImageError

        H, W = self.size
        for path in self.files[1:]:
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise SourceError(f"{path}: cannot read image ({exc})") from None
            if (h, w) != (H, W):
                raise SourceError(f"{path}: frame is {w}x{h} but the first frame of the folder is {W}x{H}")

    # ------------------------------------------------------------------ video
    def _open(self):
        av = _av()
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{self.path}: cannot read video ({exc})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.path}: no video stream in this file")
        return container

    def _probe_video(self) -> None:
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FOLDER_FPS)
            self.fps = float(rate)
            self.num_frames, self.count_rule = self._announced_frames(container, stream)
            first = self._first_video_frame(container)
            self.size = first.shape[:2]
        finally:
            container.close()

    @staticmethod
    def _announced_frames(container, stream) -> tuple[int | None, str | None]:
        """(number of frames the file announces, the rule that gave it); see the module docstring."""
        if stream.frames and stream.frames > 0:
            return int(stream.frames), "the stream header's frame count"
        rate = stream.average_rate or stream.guessed_rate
        if not rate or rate <= 0 or container.format.name not in _DURATION_IN_HEADER:
            return None, None
        seconds, what = None, None
        if stream.duration and stream.time_base and stream.duration > 0:
            seconds, what = float(stream.duration * stream.time_base), "the stream's duration"
        elif "DURATION" in (stream.metadata or {}):
            seconds, what = _matroska_duration(stream.metadata["DURATION"]), "the stream's DURATION tag"
        if seconds is None and container.duration and container.duration > 0 and len(container.streams) == 1:
            seconds, what = container.duration / 1_000_000, "the container's duration"
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            return None, None
        n = int(round(seconds * float(rate)))
        if n < 1:
            return None, None
        return n, f"{what} {seconds:.3f} s x {float(rate):.6g} fps"

    def _ended_early(self, decoded: int, reason: str) -> None:
        """Decoding stopped after ``decoded`` frames: an error, or a warning with ``allow_truncated``."""
        last = f"last good frame {decoded - 1}" if decoded else "no frame decoded"
        msg = f"{self.path}: the video ends early ({reason}; {last})"
        if not self.allow_truncated:
            raise SourceError(f"{msg}: truncated or damaged file; --allow-truncated keeps the decoded frames")
        self.truncated = msg
        warnings.warn(f"{msg}; keeping the {decoded} decoded frames", TruncatedVideoWarning, stacklevel=2)

    def _first_video_frame(self, container) -> np.ndarray:
        for _, frame in self._decode(container):
            return frame
        raise SourceError(f"{self.path}: the video has no frames")

    def _decode(self, container) -> Iterator[tuple[str, np.ndarray]]:
        av = _av()
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        i = 0
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
                array = frame.to_ndarray(format="rgb24")
            except StopIteration:
                break
            except av.FFmpegError as exc:
                if i == 0:
                    raise SourceError(f"{self.path}: cannot decode frame 0 ({exc})") from None
                self._ended_early(i, f"cannot decode frame {i}: {exc}")
                break
            yield f"{i:05d}.png", array
            i += 1
        self.decoded = i
        if self.num_frames is not None and i < self.num_frames and self.truncated is None:
            self._ended_early(i, f"{i} of {self.num_frames} frames decoded, {self.count_rule}")

    # ------------------------------------------------------------------ folder
    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise SourceError(f"{path}: cannot read image ({exc})") from None

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.truncated = None
        if self.is_video:
            container = self._open()
            try:
                for name, frame in self._decode(container):
                    if frame.shape[:2] != tuple(self.size):
                        raise SourceError(
                            f"{self.path}: frame {name[:-4]} is {frame.shape[1]}x{frame.shape[0]} but the first "
                            f"frame is {self.size[1]}x{self.size[0]}"
                        )
                    yield name, frame
            finally:
                container.close()
        else:
            for path, name in zip(self.files, self.names, strict=True):
                frame = self._read_image(path)
                if frame.shape[:2] != tuple(self.size):
                    raise SourceError(f"{path}: frame is {frame.shape[1]}x{frame.shape[0]} but the first frame of "
                                      f"the folder is {self.size[1]}x{self.size[0]}")
                yield name, frame
            self.decoded = len(self.files)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("the number of frames of this video is not known in advance")
        return self.num_frames


def prefetch(items: Iterable, depth: int = 8) -> Iterator:
    """Iterate ``items`` in a background thread (decoding overlaps computing); errors are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((False, exc))
            return
        q.put((True, done))

    t = threading.Thread(target=work, daemon=True, name="pdnet-decode")
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
