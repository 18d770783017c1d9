"""``segment_video``: one call from a video (or frame folder) to mask PNGs and videos.

**Outputs never overwrite inputs, nor files this run did not create.** Before the model
is loaded, :func:`check_outputs` lists the files the run will write (one mask per frame,
``overlay.mp4``, ``composite.mp4``) and refuses, with :class:`OutputError`:

* an output folder that is the input folder of frames (however it is spelled: relative
  path, symbolic link), since the masks would land among the frames (and over any
  frame named like a mask);
* an output file that is an input (the video, a frame, the background image, the
  checkpoint), through a symbolic or hard link too, even with ``overwrite``;
* an output file that already exists (e.g. the masks of an earlier run), unless
  ``overwrite``; the error names the first one;
* an output folder that is an existing file, or that cannot be created.

Each file is written to a temporary file beside it and moved into place when complete.
When the run fails or is interrupted, the files it wrote are removed (and the output
folder, if it created it and it is empty), so a re-run starts clean.
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .video import (
    BackgroundWorker,
    FrameSource,
    OutputError,
    VideoWriter,
    background,
    prefetch,
    remove_stale_temporaries,
    write_mask,
)

if TYPE_CHECKING:  # torch and the model are imported by segment_video itself: checking outputs needs neither
    import torch

    from ..deploy.runtime import OnnxSegmenter
    from ..model import PDNet
    from .segmenter import VideoSegmenter

PathLike = str | os.PathLike

#: file names written next to the masks
OVERLAY_NAME = "overlay.mp4"
COMPOSITE_NAME = "composite.mp4"
_VIDEO_MASK = re.compile(r"^\d{5,}\.png$")  # the mask names of a video's frames


def _identity(path: Path, follow: bool = True) -> tuple[int, int] | None:
    """(device, inode) of an existing path (None when absent or unreadable)."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(
    src: FrameSource,
    output: PathLike,
    *,
    overlay: bool = False,
    composite: bool = False,
    overwrite: bool = False,
    inputs: Iterable[PathLike] = (),
) -> list[Path]:
    """The files a segmentation of ``src`` into ``output`` will write, after checking
    that writing them loses nothing (see the module docstring). Writes nothing.

    Args:
        src: the input.
        output: the output folder (created later if missing).
        overlay, composite: whether ``overlay.mp4`` / ``composite.mp4`` will be written.
        overwrite: existing output files may be replaced (never an input).
        inputs: other input files (checkpoint, background image) that must survive.

    Returns:
        the output paths: masks (those known in advance: a video whose frame count is
        unknown has its existing ``NNNNN.png`` files listed), then the videos.

    Raises:
        OutputError: naming the output (and the input it would overwrite).
    """
    if isinstance(output, str) and not output.strip():
        raise OutputError("the output folder is empty ('')")
    out = Path(output)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: the output folder is an existing file")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"{out}: the output folder is not writable")
        if not src.is_video and os.path.samefile(out, src.path):
            raise OutputError(
                f"{out}: the output folder is the input folder {src.path}; the masks would be written among "
                "(or over) the frames: choose another output folder"
            )
    else:
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"{out}: cannot create the output folder: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{out}: cannot create the output folder: {parent} is not writable")

    protected: dict[tuple[int, int], Path] = {}
    files = [src.path] if src.is_video else list(src.files)
    for f in [*files, *(Path(p) for p in inputs)]:
        ident = _identity(f)
        if ident is not None:
            protected.setdefault(ident, f)

    if src.names is not None:
        masks = [out / n for n in src.names]
    elif src.num_frames is not None:
        masks = [out / f"{i:05d}.png" for i in range(src.num_frames)]
    else:
        masks = sorted(out / n for n in os.listdir(out) if _VIDEO_MASK.match(n)) if out.is_dir() else []
    videos = [out / name for name, on in ((OVERLAY_NAME, overlay), (COMPOSITE_NAME, composite)) if on]
    targets = masks + videos
    if not out.exists():
        return targets
    for path in targets:
        if not os.path.lexists(path):
            continue
        hit = protected.get(_identity(path)) or protected.get(_identity(path, follow=False))
        if hit is not None:
            raise OutputError(f"{path}: this output would overwrite the input {hit}")
        if path.is_dir():
            raise OutputError(f"{path}: an output file would replace this folder")
        if not overwrite:
            raise OutputError(f"{path}: already exists (not written by this run); --overwrite replaces it")
    return targets


def _missing_folders(folder: Path) -> list[Path]:
    """The folders ``folder.mkdir(parents=True)`` will create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _blend(frames: torch.Tensor, probs: torch.Tensor, other: torch.Tensor, alpha: float) -> torch.Tensor:
    """frames [B, 3, H, W] uint8, probs [B, 1, H, W], other [3, H, W] or [3, 1, 1] uint8 ->
    frames * (1 - alpha * p) + other * alpha * p as uint8 [B, H, W, 3]."""
    import torch

    a = probs.float() * alpha  # [B, 1, H, W]
    out = frames.float() * (1.0 - a) + other.float() * a  # [B, 3, H, W]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # [B, H, W, 3]


class _OnnxEngine:
    """The interface :func:`segment_video` drives (that of :class:`VideoSegmenter`) over an
    :class:`pdnet.deploy.OnnxSegmenter`: frames and probabilities are CPU tensors, the
    network runs in ONNX Runtime on numpy arrays."""

    cuda_graphs = False

    def __init__(self, seg: OnnxSegmenter) -> None:
        import torch

        self.seg = seg
        self.device = torch.device("cpu")  # where the frames and results live (not the ORT provider)
        self.dtype = torch.float32

    def to_device(self, frames: np.ndarray) -> torch.Tensor:
        from .segmenter import as_frame_batch

        return as_frame_batch(frames)  # [B, 3, H, W] uint8, a view of the [B, H, W, 3] array

    def encode_reference(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        return self.seg.encode_reference(frame)

    def predict(self, frames: torch.Tensor, state: dict[str, np.ndarray]) -> torch.Tensor:
        """frames [B, 3, H, W] uint8 (from :meth:`to_device`) -> probabilities Tensor[B, 1, H, W]."""
        import torch

        return torch.from_numpy(self.seg.predict(frames.permute(0, 2, 3, 1).numpy(), state))


def _is_onnx_segmenter(model: Any) -> bool:
    """Whether ``model`` is a :class:`pdnet.deploy.OnnxSegmenter` (without importing onnxruntime
    when pdnet.deploy.runtime was never imported: then it cannot be one)."""
    runtime = sys.modules.get("pdnet.deploy.runtime")
    return runtime is not None and isinstance(model, runtime.OnnxSegmenter)


def segment_video(
    model: PDNet | VideoSegmenter | OnnxSegmenter | PathLike,
    source: PathLike | FrameSource,
    output: PathLike,
    *,
    overlay: bool = False,
    composite: str | PathLike | tuple[int, int, int] | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    batch_size: int = 1,
    fast: bool = True,
    cuda_graphs: bool | None = None,
    input_size: int | tuple[int, int] | None = None,
    fps: float | None = None,
    overlay_colour: tuple[int, int, int] = (0, 255, 0),
    progress: bool = True,
    overwrite: bool = False,
    allow_truncated: bool = False,
) -> dict[str, Any]:
    """Segment every frame of a clip against its first frame and write the results.

    In the spirit of RobustVideoMatting's ``convert_video``: one call, explicit outputs.

    Args:
        model: a PDNet, a checkpoint path (see :func:`pdnet.load`), a ready
            :class:`VideoSegmenter` (then device / dtype / fast / cuda_graphs / input_size
            are its own), or a :class:`pdnet.deploy.OnnxSegmenter` (an exported folder run
            with ONNX Runtime; then those options are ignored and ``device`` reports
            ``onnxruntime`` and its providers).
        source: a video file (mp4, mov, mkv, ...) or a folder of frames (sorted by name),
            or a :class:`FrameSource` (then ``fps`` and ``allow_truncated`` are its own).
        output: folder for the results: one mask PNG per frame (8-bit grey,
            ``round(p * 255)`` at the frame's size; named after the frame files, or
            ``00000.png`` ... for a video), plus ``overlay.mp4`` / ``composite.mp4``.
            It may not be the input folder; see the module docstring for the rules.
        overlay: also write ``overlay.mp4``: the frames with the person tinted in
            ``overlay_colour`` (alpha 0.5 * p).
        composite: also write ``composite.mp4``, the person over this background: an
            image file, a colour name, ``#rrggbb``, ``R,G,B`` or an (R, G, B) tuple
            (``frame * p + background * (1 - p)``).
        device, dtype, fast, cuda_graphs, input_size: see :class:`VideoSegmenter`.
        batch_size: frames per forward pass (1: streaming; more: offline throughput).
        fps: frame rate of the written videos for a folder source (default 25; a video
            keeps its own rate unless this is given); finite, in (0, 1000].
        progress: show a tqdm progress bar.
        overwrite: replace output files that already exist (inputs never are).
        allow_truncated: a video that ends early (see :mod:`pdnet.inference.video`)
            keeps its decoded frames with a warning instead of failing.

    Returns:
        dict with ``frames``, ``size`` (H, W), ``fps_source``, ``seconds`` (wall time of
        the whole call, decoding and encoding included), ``fps`` (frames / seconds),
        ``masks`` (the output folder), ``overlay`` / ``composite`` (paths or None),
        ``device``, ``dtype``, ``batch_size``, ``truncated`` (None, or why a video
        read with ``allow_truncated`` ended early).

    Raises:
        pdnet.inference.SourceError: the source (or background) cannot be read, or a
            video ends early.
        pdnet.inference.video.OutputError: an output would overwrite an input or an
            existing file, or cannot be written (disk full ...).
        FileNotFoundError / pdnet.inference.CheckpointError: a checkpoint path that
            cannot be loaded.

    On any error or interruption the files written by this call are removed.
    """
    import torch

    from ..model import PDNet
    from .loading import load
    from .segmenter import VideoSegmenter, to_uint8

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    t0 = time.perf_counter()
    src = source if isinstance(source, FrameSource) else FrameSource(source, fps=fps, allow_truncated=allow_truncated)
    bg_host = background(composite, src.size) if composite is not None else None
    onnx = _is_onnx_segmenter(model)
    if onnx:  # the export's files must survive the run too
        extra_inputs = [model.folder / "export.json", *(model.folder / g["file"] for g in model.meta["graphs"].values()
                                                        if isinstance(g, dict) and isinstance(g.get("file"), str))]
    else:
        extra_inputs = [] if isinstance(model, (PDNet, VideoSegmenter)) else [Path(model)]
    if composite is not None and not isinstance(composite, tuple) and Path(composite).is_file():
        extra_inputs.append(Path(composite))
    out = Path(output)
    targets = check_outputs(src, out, overlay=overlay, composite=bg_host is not None, overwrite=overwrite,
                            inputs=extra_inputs)
    names = {t.name for t in targets}
    remove_stale_temporaries(out, lambda n: n in names or bool(src.is_video and _VIDEO_MASK.match(n)))  # kill -9
    protected = {i for i in (_identity(p) for p in ([src.path] if src.is_video else src.files) + extra_inputs) if i}

    if onnx:
        seg = _OnnxEngine(model)
    elif isinstance(model, VideoSegmenter):
        seg = model
    else:
        if not isinstance(model, PDNet):
            model = load(model, device="cpu")
        seg = VideoSegmenter(model, device=device, dtype=dtype, fast=fast, cuda_graphs=cuda_graphs,
                             input_size=input_size)

    created = _missing_folders(out)
    written: list[Path] = []  # files this call has put in place (list.append is atomic across threads)
    writers: dict[str, VideoWriter] = {}
    worker = pngs = None
    bar = None
    ok = False
    count = 0
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
        bg = bg_host.to(seg.device) if bg_host is not None else None
        tint = torch.tensor(overlay_colour, dtype=torch.uint8, device=seg.device).view(3, 1, 1)
        if overlay:
            writers["overlay"] = VideoWriter(out / OVERLAY_NAME, src.fps, src.size)
        if bg is not None:
            writers["composite"] = VideoWriter(out / COMPOSITE_NAME, src.fps, src.size)
        worker = BackgroundWorker()  # video encoding, in frame order
        pngs = ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) - 1)),
                                  thread_name_prefix="pdnet-png")
        pending: deque = deque()
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        bar = tqdm(total=src.num_frames, unit="frame", desc=src.path.name, disable=not progress) if tqdm else None

        state = None
        names, frames = [], []

        def write_one(path: Path, mask: np.ndarray) -> None:
            if overwrite and _identity(path) in protected:  # a name the up-front check could not foresee
                raise OutputError(f"{path}: this output would overwrite an input")
            write_mask(path, mask, overwrite=overwrite)
            written.append(path)

        def flush() -> None:
            nonlocal count
            n = len(frames)
            batch = seg.to_device(np.stack(frames))  # [n, 3, H, W] uint8
            if seg.cuda_graphs and n < batch_size:  # one graph per batch size: pad the last batch
                batch = torch.cat([batch, batch[-1:].expand(batch_size - n, *batch.shape[1:])])
            probs = seg.predict(batch, state)[:n]  # [n, 1, H, W]
            batch = batch[:n]
            results = {"masks": to_uint8(probs)[:, 0]}  # [n, H, W]
            if "overlay" in writers:
                results["overlay"] = _blend(batch, probs, tint, 0.5)
            if "composite" in writers:
                results["composite"] = _blend(batch, 1.0 - probs, bg, 1.0)  # frame * p + bg * (1 - p)
            host = {k: v.cpu().numpy() for k, v in results.items()}  # one synchronisation per batch
            batch_names = list(names)

            def write_pngs() -> None:
                for i, name in enumerate(batch_names):
                    write_one(out / name, host["masks"][i])

            def write_videos() -> None:
                for i in range(len(batch_names)):
                    for key, writer in writers.items():
                        writer.write(host[key][i])

            pending.append(pngs.submit(write_pngs))
            while len(pending) > 8:  # bound the frames held in memory
                pending.popleft().result()
            if writers:
                worker.submit(write_videos)
            count += n
            if bar is not None:
                bar.update(n)
            names.clear()
            frames.clear()

        for name, frame in prefetch(src, depth=2 * batch_size + 2):
            if state is None:
                state = seg.encode_reference(frame)
            names.append(name)
            frames.append(frame)
            if len(frames) == batch_size:
                flush()
        if frames:
            flush()
        pngs.shutdown(wait=True)
        for job in pending:
            job.result()  # re-raise a failed PNG write
        worker.close()
        for writer in writers.values():
            writer.close()
            written.append(writer.path)
        ok = True
    finally:
        if bar is not None:
            bar.close()
        if not ok:
            _roll_back(pngs, worker, writers, written, created)
    seconds = time.perf_counter() - t0
    return {
        "frames": count,
        "size": tuple(src.size),
        "fps_source": src.fps,
        "seconds": seconds,
        "fps": count / seconds if seconds > 0 else float("inf"),
        "masks": str(out),
        "overlay": str(out / OVERLAY_NAME) if overlay else None,
        "composite": str(out / COMPOSITE_NAME) if bg_host is not None else None,
        "device": f"onnxruntime ({', '.join(model.providers)})" if onnx else str(seg.device),
        "dtype": str(seg.dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "truncated": src.truncated,
    }


def _roll_back(pngs, worker, writers, written: list[Path], created: list[Path]) -> None:
    """After a failure or an interruption: stop the writers, remove every file this run
    wrote and the folders it created (when empty). Errors here are not raised: the
    original one is."""
    if pngs is not None:
        pngs.shutdown(wait=True, cancel_futures=True)
    if worker is not None:
        worker.cancel()
    for writer in writers.values():
        writer.abort()
    for path in written:
        try:
            os.unlink(path)
        except OSError:
            pass
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            break
