"""``segment_video``: one call from a video (or frame folder) to mask PNGs and videos."""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ..model import PDNet
from .checkpoint import load
from .segmenter import VideoSegmenter, to_uint8
from .video import BackgroundWorker, FrameSource, VideoWriter, background, prefetch, write_mask

PathLike = Union[str, os.PathLike]

#: file names written next to the masks
OVERLAY_NAME = "overlay.mp4"
COMPOSITE_NAME = "composite.mp4"


def _blend(frames: torch.Tensor, probs: torch.Tensor, other: torch.Tensor, alpha: float) -> torch.Tensor:
    """frames [B, 3, H, W] uint8, probs [B, 1, H, W], other [3, H, W] or [3, 1, 1] uint8 ->
    frames * (1 - alpha * p) + other * alpha * p as uint8 [B, H, W, 3]."""
    a = probs.float() * alpha  # [B, 1, H, W]
    out = frames.float() * (1.0 - a) + other.float() * a  # [B, 3, H, W]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # [B, H, W, 3]


def segment_video(
    model: Union[PDNet, VideoSegmenter, PathLike],
    source: PathLike,
    output: PathLike,
    *,
    overlay: bool = False,
    composite: Union[str, PathLike, Tuple[int, int, int], None] = None,
    device: Union[str, torch.device, None] = "auto",
    dtype: Union[str, torch.dtype, None] = "auto",
    batch_size: int = 1,
    fast: bool = True,
    cuda_graphs: Optional[bool] = None,
    input_size: Union[int, Tuple[int, int], None] = None,
    fps: Optional[float] = None,
    overlay_colour: Tuple[int, int, int] = (0, 255, 0),
    progress: bool = True,
) -> Dict[str, Any]:
    """Segment every frame of a clip against its first frame and write the results.

    In the spirit of RobustVideoMatting's ``convert_video``: one call, explicit outputs.

    Args:
        model: a PDNet, a checkpoint path (see :func:`pdnet.load`), or a ready
            :class:`VideoSegmenter` (then device / dtype / fast / cuda_graphs / input_size
            are its own).
        source: a video file (mp4, mov, mkv, ...) or a folder of frames (sorted by name).
        output: folder for the results: one mask PNG per frame (8-bit grey,
            ``round(p * 255)`` at the frame's size; named after the frame files, or
            ``00000.png`` ... for a video), plus ``overlay.mp4`` / ``composite.mp4``.
        overlay: also write ``overlay.mp4``: the frames with the person tinted in
            ``overlay_colour`` (alpha 0.5 * p).
        composite: also write ``composite.mp4``, the person over this background: an
            image file, a colour name, ``#rrggbb``, ``R,G,B`` or an (R, G, B) tuple
            (``frame * p + background * (1 - p)``).
        device, dtype, fast, cuda_graphs, input_size: see :class:`VideoSegmenter`.
        batch_size: frames per forward pass (1: streaming; more: offline throughput).
        fps: frame rate of the written videos for a folder source (default 25; a video
            keeps its own rate unless this is given).
        progress: show a tqdm progress bar.

    Returns:
        dict with ``frames``, ``size`` (H, W), ``fps_source``, ``seconds`` (wall time of
        the whole call, decoding and encoding included), ``fps`` (frames / seconds),
        ``masks`` (the output folder), ``overlay`` / ``composite`` (paths or None),
        ``device``, ``dtype``, ``batch_size``.

    Raises:
        pdnet.inference.SourceError: the source (or background) cannot be read.
        FileNotFoundError / pdnet.inference.CheckpointError: a checkpoint path that
            cannot be loaded.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    t0 = time.perf_counter()
    src = FrameSource(source, fps=fps)
    if isinstance(model, VideoSegmenter):
        seg = model
    else:
        if not isinstance(model, PDNet):
            model = load(model, device="cpu")
        seg = VideoSegmenter(model, device=device, dtype=dtype, fast=fast, cuda_graphs=cuda_graphs,
                             input_size=input_size)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    bg = background(composite, src.size).to(seg.device) if composite is not None else None
    tint = torch.tensor(overlay_colour, dtype=torch.uint8, device=seg.device).view(3, 1, 1)
    writers = {}
    if overlay:
        writers["overlay"] = VideoWriter(out / OVERLAY_NAME, src.fps, src.size)
    if bg is not None:
        writers["composite"] = VideoWriter(out / COMPOSITE_NAME, src.fps, src.size)
    worker = BackgroundWorker()  # video encoding, in frame order
    pngs = ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) - 1)), thread_name_prefix="pdnet-png")
    pending: deque = deque()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    bar = tqdm(total=src.num_frames, unit="frame", desc=src.path.name, disable=not progress) if tqdm else None

    state = None
    count = 0
    names, frames = [], []

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
                write_mask(out / name, host["masks"][i])

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

    try:
        for name, frame in prefetch(src, depth=2 * batch_size + 2):
            if state is None:
                state = seg.encode_reference(frame)
            names.append(name)
            frames.append(frame)
            if len(frames) == batch_size:
                flush()
        if frames:
            flush()
    finally:
        if bar is not None:
            bar.close()
        try:
            pngs.shutdown(wait=True)
            for job in pending:
                job.result()  # re-raise a failed PNG write
            worker.close()
        finally:
            for writer in writers.values():
                writer.close()
    seconds = time.perf_counter() - t0
    return {
        "frames": count,
        "size": tuple(src.size),
        "fps_source": src.fps,
        "seconds": seconds,
        "fps": count / seconds if seconds > 0 else float("inf"),
        "masks": str(out),
        "overlay": str(out / OVERLAY_NAME) if overlay else None,
        "composite": str(out / COMPOSITE_NAME) if bg is not None else None,
        "device": str(seg.device),
        "dtype": str(seg.dtype).replace("torch.", ""),
        "batch_size": batch_size,
    }
