"""Writing a synthetic dataset: the clips (rendered in worker processes, the same bytes
whatever their number), the split lists, the manifest ``synth.json``, and
:func:`remove_previous`, which deletes exactly what a previous run wrote (``--force``)."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .cli import MAX_SIDE
from .layers import ClipRenderer


def split_of(index: int, clips: int, val_fraction: float) -> str:
    """The last ``round(clips * val_fraction)`` clips (at least one when clips >= 2 and
    val_fraction > 0) are "val", the others "train"."""
    n_val = int(round(clips * val_fraction))
    if val_fraction > 0 and clips >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, clips - 1) if clips >= 2 else 0
    return "val" if index >= clips - n_val else "train"


def _write_clip(job) -> tuple[int, dict]:
    """Renders and writes one clip (worker entry point). Returns (index, plan dict)."""
    out, seed, index, frames, size, quality = job
    from PIL import Image

    torch.set_num_threads(1)
    r = ClipRenderer(seed, index, frames, size)
    name = r.plan.name
    jdir = Path(out) / "JPEGImages" / "480p" / name
    adir = Path(out) / "Annotations" / "480p" / name
    jdir.mkdir(parents=True, exist_ok=True)
    adir.mkdir(parents=True, exist_ok=True)
    for t, (img, mask) in enumerate(r):
        Image.fromarray(img).save(jdir / f"{t:05d}.jpg", quality=quality)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(adir / f"{t:05d}.png")
    return index, r.plan.__dict__


def synthesize(
    out: os.PathLike,
    clips: int = 20,
    frames: int = 30,
    size: tuple[int, int] = (480, 854),
    seed: int = 0,
    val_fraction: float = 0.2,
    quality: int = 90,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Writes a synthetic dataset (see the module docstring); returns the output folder.

    Deterministic: the same arguments give the same bytes, whatever ``workers``.
    """
    from tqdm import tqdm

    out = Path(out)
    if clips < 1 or frames < 1:
        raise ValueError(f"need at least one clip and one frame, got clips={clips}, frames={frames}")
    h, w = size
    if not (16 <= h <= MAX_SIDE and 16 <= w <= MAX_SIDE):
        raise ValueError(f"size must be HxW with both in 16..{MAX_SIDE}, got {h}x{w}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {val_fraction}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": GENERATOR,
        "seed": int(seed),
        "clips": clips,
        "frames": frames,
        "size": [h, w],
        "val_fraction": val_fraction,
        "jpeg_quality": quality,
    }
    # written first, so that an interrupted run is known (and removable) as synth output
    _write_manifest(out, {**meta, "in_progress": True})
    jobs = [(str(out), int(seed), i, int(frames), (int(h), int(w)), int(quality)) for i in range(clips)]
    plans: dict[int, dict] = {}
    bar = tqdm(total=clips, desc="synth", unit="clip", disable=not progress)
    try:
        if workers > 1 and clips > 1:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(min(workers, clips)) as pool:
                for index, plan in pool.imap_unordered(_write_clip, jobs):
                    plans[index] = plan
                    bar.update(1)
        else:
            threads = torch.get_num_threads()
            try:
                for job in jobs:
                    index, plan = _write_clip(job)
                    plans[index] = plan
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
    finally:
        bar.close()
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(clips):
        splits[split_of(i, clips, val_fraction)].append(plans[i]["name"])
        plans[i]["split"] = split_of(i, clips, val_fraction)
    (out / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2016").mkdir(parents=True, exist_ok=True)

    def pairs(names: Sequence[str]) -> str:
        return "".join(
            f"/JPEGImages/480p/{n}/{t:05d}.jpg /Annotations/480p/{n}/{t:05d}.png\n"
            for n in names
            for t in range(frames)
        )

    for split, names in splits.items():
        (out / "ImageSets" / "480p" / f"{split}.txt").write_text(pairs(names))
        (out / "ImageSets" / "2016" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    (out / "ImageSets" / "480p" / "trainval.txt").write_text(pairs(splits["train"] + splits["val"]))
    _write_manifest(out, {**meta, "sequences": [plans[i] for i in range(clips)]})
    return out


GENERATOR = "pdnet synth"
MANIFEST = "synth.json"
_LISTS = ("ImageSets/480p/train.txt", "ImageSets/480p/val.txt", "ImageSets/480p/trainval.txt",
          "ImageSets/2016/train.txt", "ImageSets/2016/val.txt")
_FOLDERS = ("JPEGImages/480p", "JPEGImages", "Annotations/480p", "Annotations", "ImageSets/480p",
            "ImageSets/2016", "ImageSets")


def _write_manifest(out: Path, meta: dict) -> None:
    (out / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


class NotSynthOutput(ValueError):
    """A folder that ``remove_previous`` will not touch: not (provably) synth's output."""


def remove_previous(out: os.PathLike) -> int:
    """Deletes the files a previous ``pdnet synth`` run wrote in ``out`` (finished or
    interrupted), as its manifest ``synth.json`` describes them, and the folders that
    leaves empty; any other file stays. Returns the number of files removed.

    Only files synth writes are removed: ``JPEGImages/480p/clipNNNN/NNNNN.jpg`` and
    ``Annotations/480p/clipNNNN/NNNNN.png`` with clip and frame numbers below the
    manifest's ``clips`` and ``frames``, the five ImageSets lists and the manifest.

    Raises:
        NotSynthOutput: no manifest, one that is not synth's, or a symbolic link where
            synth writes folders (nothing is deleted then).
    """
    import re

    out = Path(out)
    manifest = out / MANIFEST
    if not manifest.is_file() or manifest.is_symlink():
        raise NotSynthOutput(f"{out}: not a previous pdnet synth output (no {MANIFEST})")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotSynthOutput(f"{manifest}: unreadable manifest ({exc})") from None
    ok = isinstance(meta, dict) and meta.get("generator") == GENERATOR
    clips, frames = (meta.get("clips"), meta.get("frames")) if ok else (None, None)
    if not (ok and all(type(v) is int and v >= 1 for v in (clips, frames))):
        raise NotSynthOutput(f"{manifest}: not a pdnet synth manifest")
    for folder in _FOLDERS:
        if (out / folder).is_symlink():
            raise NotSynthOutput(f"{out / folder}: a symbolic link, not a folder synth wrote")
    clip_re, files = re.compile(r"clip(\d{4,})"), []
    for kind, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        base = out / kind / "480p"
        for clip in sorted(base.iterdir()) if base.is_dir() else []:
            m = clip_re.fullmatch(clip.name)
            if not (m and int(m.group(1)) < clips and clip.is_dir() and not clip.is_symlink()):
                continue
            for f in clip.iterdir():
                stem = f.name[: -len(ext)] if f.name.endswith(ext) else ""
                if stem.isdigit() and len(stem) >= 5 and int(stem) < frames and not f.is_dir():
                    files.append(f)
    files += [out / n for n in _LISTS if (out / n).is_file()]
    for f in files:
        f.unlink()
    for clip in {f.parent for f in files if f.parent.name.startswith("clip")}:
        _rmdir_if_empty(clip)
    for folder in _FOLDERS:
        _rmdir_if_empty(out / folder)
    manifest.unlink()
    return len(files) + 1


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or holds files synth did not write
