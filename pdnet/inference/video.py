"""Video and frame-folder I/O for inference (PyAV for video files).

* :class:`FrameSource`: frames of a video file (mp4, mov, mkv, anything FFmpeg reads)
  or of a folder of images (jpg/jpeg/png/bmp/webp, sorted by name), as RGB uint8 numpy
  arrays [H, W, 3], each with the name of its mask file.
* :class:`VideoWriter`: RGB frames -> an H.264 (libx264, else MPEG-4) video.
* :func:`write_mask`: one 8-bit grey PNG.
* :func:`background`: the ``--composite`` background, an image file or a colour.

Problems with the input (missing path, unreadable video, empty folder, frames of
different sizes) raise :class:`SourceError`, whose message names the file.
"""
from __future__ import annotations

import os
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FOLDER_FPS = 25.0

_COLOURS = {
    "green": (0, 177, 64),  # chroma-key green
    "blue": (0, 71, 187),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "red": (255, 0, 0),
}


class SourceError(ValueError):
    """An input video / frame folder / background that cannot be used; the message names it."""


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
        num_frames (int or None): number of frames when known (video containers may not say).

    Iterating yields ``(name, frame)`` with frame a numpy uint8 array [H, W, 3] (RGB)
    and name the mask file name (``00000.png`` ... for videos).
    """

    def __init__(self, path: PathLike, fps: Optional[float] = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file or directory")
        self.is_video = not self.path.is_dir()
        self.names: Optional[List[str]] = None
        if self.is_video:
            self._probe_video()
            if fps is not None:
                self.fps = float(fps)
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
            self.fps = float(fps) if fps is not None else DEFAULT_FOLDER_FPS
            self.size = self._read_image(files[0]).shape[:2]

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
            self.num_frames = int(stream.frames) or None
            first = self._first_video_frame(container)
            self.size = first.shape[:2]
        finally:
            container.close()

    def _first_video_frame(self, container) -> np.ndarray:
        for _, frame in self._decode(container):
            return frame
        raise SourceError(f"{self.path}: the video has no frames")

    def _decode(self, container) -> Iterator[Tuple[str, np.ndarray]]:
        av = _av()
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        i = 0
        try:
            for frame in container.decode(stream):
                yield f"{i:05d}.png", frame.to_ndarray(format="rgb24")
                i += 1
        except av.FFmpegError as exc:
            raise SourceError(f"{self.path}: cannot decode frame {i} ({exc})") from None

    # ------------------------------------------------------------------ folder
    @staticmethod
    def _read_image(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise SourceError(f"{path}: cannot read image ({exc})") from None

    def __iter__(self) -> Iterator[Tuple[str, np.ndarray]]:
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
            for path, name in zip(self.files, self.names):
                frame = self._read_image(path)
                if frame.shape[:2] != tuple(self.size):
                    raise SourceError(f"{path}: frame is {frame.shape[1]}x{frame.shape[0]} but the first frame of "
                                      f"the folder is {self.size[1]}x{self.size[0]}")
                yield name, frame

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("the number of frames of this video is not known in advance")
        return self.num_frames


def prefetch(items: Iterable, depth: int = 8) -> Iterator:
    """Iterate ``items`` in a background thread (decoding overlaps computing); errors are re-raised here."""
    q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
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


class BackgroundWorker:
    """Runs callables in order on one background thread (PNG and video encoding).

    ``submit`` blocks when ``depth`` jobs are pending; the first error is re-raised by
    the next ``submit`` or by ``close``.
    """

    def __init__(self, depth: int = 16) -> None:
        self._q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="pdnet-encode")
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(job)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def write_mask(path: PathLike, mask: np.ndarray) -> None:
    """Write a uint8 mask [H, W] (0..255) as an 8-bit grey PNG."""
    from PIL import Image

    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"write_mask: expected a uint8 array [H, W], got {mask.dtype} {mask.shape}")
    Image.fromarray(mask, mode="L").save(path, compress_level=1)


class VideoWriter:
    """RGB uint8 frames [H, W, 3] -> a video file (H.264 via libx264 when FFmpeg has it, else MPEG-4).

    yuv420p needs even sizes: an odd last row / column is duplicated.
    """

    def __init__(self, path: PathLike, fps: float, size: Tuple[int, int], crf: int = 18) -> None:
        av = _av()
        self.path = Path(path)
        self.size = tuple(size)
        H, W = self.size
        self.even = (H + H % 2, W + W % 2)
        rate = Fraction(fps).limit_denominator(1001)
        self.container = av.open(str(self.path), mode="w")
        try:
            self.stream = self.container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        except (av.FFmpegError, ValueError):
            self.stream = self.container.add_stream("mpeg4", rate=rate)
            self.stream.bit_rate = 8_000_000
        self.stream.height, self.stream.width = self.even
        self.stream.pix_fmt = "yuv420p"
        self._av = av

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (*self.size, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"VideoWriter: expected uint8 [{self.size[0]}, {self.size[1]}, 3], got {frame.dtype} {frame.shape}"
            )
        if self.even != self.size:
            pad = ((0, self.even[0] - self.size[0]), (0, self.even[1] - self.size[1]), (0, 0))
            frame = np.pad(frame, pad, mode="edge")
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def parse_colour(text: str) -> Optional[Tuple[int, int, int]]:
    """``"green"``, ``"#00b140"``, ``"0,177,64"`` -> (R, G, B); None when ``text`` is not a colour."""
    s = text.strip().lower()
    if s in _COLOURS:
        return _COLOURS[s]
    if s.startswith("#") and len(s) == 7:
        try:
            return tuple(int(s[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return None
    parts = s.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and 0 <= int(p) <= 255 for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    return None


def background(spec: Union[str, PathLike, Tuple[int, int, int]], size: Tuple[int, int]) -> torch.Tensor:
    """The composite background at the frame size: Tensor[3, H, W] uint8.

    Args:
        spec: an image file (resized to the frame, bilinear), a colour name
            (``green``, ``blue``, ``black``, ``white``, ``grey``, ``red``), ``#rrggbb``,
            ``R,G,B`` or an (R, G, B) tuple.
        size: (H, W) of the frames.
    """
    H, W = size
    if isinstance(spec, tuple):
        colour = spec
    else:
        path = Path(spec)
        if path.is_file():
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB").resize((W, H), Image.BILINEAR))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise SourceError(f"{path}: cannot read the background image ({exc})") from None
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        colour = parse_colour(str(spec))
        if colour is None:
            raise SourceError(
                f"composite background {str(spec)!r} is neither an existing image file nor a colour "
                f"({', '.join(sorted(_COLOURS))}, #rrggbb or R,G,B)"
            )
    if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
        raise SourceError(f"composite colour must be three values in 0..255, got {colour}")
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, H, W).contiguous()
