"""Writing the results atomically: mask PNGs and videos, and the thread that encodes them.

* :func:`write_mask`: one 8-bit grey PNG.
* :class:`VideoWriter`: RGB frames -> an H.264 (libx264, else MPEG-4) video.
* :class:`BackgroundWorker`: runs the encoding jobs in order on one background thread.
* :func:`remove_stale_temporaries`: clears what a killed run left behind.

Problems writing the results (disk full, a read-only folder) raise :class:`OutputError`,
which names the file. Every output file is written to a temporary file in its own
folder and moved into place with ``os.replace`` once complete, so a failed or
interrupted write never leaves a partial (or 0-byte) file under the final name.
"""
from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..._fs import temporary_beside
from .source import PathLike, _av, check_fps


class OutputError(RuntimeError):
    """An output that cannot (or may not) be written; the message names the file."""


class BackgroundWorker:
    """Runs callables in order on one background thread (PNG and video encoding).

    ``submit`` blocks when ``depth`` jobs are pending; the first error is re-raised by
    the next ``submit`` or by ``close``.
    """

    def __init__(self, depth: int = 16) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="pdnet-encode")
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            if self._error is None and not self._cancelled:
                try:
                    job()
                except BaseException as exc:  # kept for the next submit / close to re-raise
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

    def cancel(self) -> None:
        """Skip the pending jobs, wait for the running one, stop; errors are dropped."""
        self._cancelled = True
        self._q.put(None)
        self._thread.join()


def _temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file in ``path``'s folder, hidden, named after ``path``, for an atomic write."""
    fd, tmp = temporary_beside(path, suffix)
    os.close(fd)
    return tmp


def remove_stale_temporaries(folder: PathLike, owned: Callable[[str], bool]) -> list[Path]:
    """Remove the temporaries that :func:`_temporary_beside` made in ``folder`` for files
    whose name ``owned(name)`` accepts, and that a killed run (``kill -9``, power loss)
    left behind: ``.<name>.<8 random characters><suffix>``. Other files are not touched.

    Returns:
        the files removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _STALE_TEMPORARY.match(entry.name)
        if m and owned(m.group(1)) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


#: :func:`pdnet._fs.temporary_beside` names (``tempfile.mkstemp``): 8 characters from [a-z0-9_]
_STALE_TEMPORARY = re.compile(r"^\.(.+)\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)$")


def _remove_quietly(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - nothing more can be done
            pass


def _write_error(path: Path, what: str, exc: BaseException) -> OutputError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return OutputError(f"{path}: cannot write the {what} ({reason})")


def write_mask(path: PathLike, mask: np.ndarray, overwrite: bool = True) -> None:
    """Write a uint8 mask [H, W] (0..255) as an 8-bit grey PNG, atomically.

    The PNG goes to a temporary file in the same folder, moved into place once complete
    (``os.replace``); on failure (disk full ...) the temporary is removed and
    :class:`OutputError` names ``path``: no partial or 0-byte file is left, and a file
    already at ``path`` is intact.

    Args:
        overwrite: replace a file already at ``path`` (False: OutputError instead).
    """
    from PIL import Image

    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"write_mask: expected a uint8 array [H, W], got {mask.dtype} {mask.shape}")
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputError(f"{path}: already exists; not overwriting it")
    tmp = None
    try:
        tmp = _temporary_beside(path)
        with open(tmp, "wb") as f:
            Image.fromarray(mask, mode="L").save(f, format="PNG", compress_level=1)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _write_error(path, "mask", exc) from None
    finally:
        _remove_quietly(tmp)


class VideoWriter:
    """RGB uint8 frames [H, W, 3] -> a video file (H.264 via libx264 when FFmpeg has it, else MPEG-4).

    yuv420p needs even sizes: an odd last row / column is duplicated. The video is
    written to a temporary file in the same folder and moved to ``path`` by
    :meth:`close` (``abort`` removes it instead): an unfinished video never appears under
    ``path``. Write failures raise :class:`OutputError` naming ``path``.
    """

    def __init__(self, path: PathLike, fps: float, size: tuple[int, int], crf: int = 18) -> None:
        av = _av()
        self.path = Path(path)
        self.size = tuple(size)
        H, W = self.size
        self.even = (H + H % 2, W + W % 2)
        rate = Fraction(check_fps(fps)).limit_denominator(1001)
        self._tmp: Path | None = None
        try:
            self._tmp = _temporary_beside(self.path, suffix=self.path.suffix or ".mp4")
            self.container = av.open(str(self._tmp), mode="w")  # the format from the suffix, as ``path``'s
        except (OSError, av.FFmpegError, ValueError) as exc:
            _remove_quietly(self._tmp)
            raise _write_error(self.path, "video", exc) from None
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
        try:
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
        except (OSError, self._av.FFmpegError) as exc:
            raise _write_error(self.path, "video", exc) from None

    def close(self) -> None:
        """Flush the encoder and move the finished video to ``path``."""
        if self._tmp is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            os.replace(self._tmp, self.path)
            self._tmp = None
        except (OSError, self._av.FFmpegError) as exc:
            self.abort()
            raise _write_error(self.path, "video", exc) from None

    def abort(self) -> None:
        """Discard the video: close the file and remove the temporary (``path`` is not touched)."""
        if self._tmp is None:
            return
        try:
            self.container.close()
        except Exception:  # the file is removed anyway
            pass
        _remove_quietly(self._tmp)
        self._tmp = None


