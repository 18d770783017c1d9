"""What the layout readers share: :class:`Clip`, reading list files, pairing frames with
masks by file stem, :class:`RootGuard` (list entries stay inside the data root) and
building clips from lists of sequence names or of (image, mask) pairs."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, problem, raise_or_warn
from ..io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, list_files


@dataclass
class Clip:
    """One sequence: frames and their masks in time order (``frames[0]`` is the reference).

    Attributes:
        name: sequence name ("bear", "category/clip", "EG1800/00012").
        frames: image files, in time order.
        masks: mask files, ``masks[i]`` belongs to ``frames[i]``.
        mask_mode: how ``read_mask`` interprets the masks ("auto" or "nonzero").
    """

    name: str
    frames: list[Path]
    masks: list[Path]
    mask_mode: str = "auto"
    sizes: list[tuple[int, int]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frames)


def read_list(path: Path) -> list[tuple[int, str]]:
    """Non-empty, non-comment lines of a list file as (line number, stripped text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise problem(path, "list file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise problem(path, f"cannot read list file ({exc})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((n, line))
    return out


def first_existing(paths: Sequence[Path], what: str) -> Path:
    for p in paths:
        if p.is_file():
            return p
    raise DataError(f"{paths[0]}: {what} not found (looked for {', '.join(str(p) for p in paths)})", path=paths[0])


def pair_by_stem(
    frames: Iterable[Path], mask_dir: Path, skip_bad: bool
) -> tuple[list[Path], list[Path]]:
    """Frames and their masks (same stem, a mask extension, in ``mask_dir``)."""
    masks_by_stem: dict[str, Path] = {}
    if mask_dir.is_dir():
        for m in list_files(mask_dir, MASK_EXTENSIONS):
            masks_by_stem.setdefault(m.stem, m)
    out_f, out_m = [], []
    for f in frames:
        m = masks_by_stem.get(f.stem)
        if m is None:
            raise_or_warn(problem(f, f"frame has no mask (expected {mask_dir / (f.stem + '.png')})"), skip_bad, 4)
            continue
        out_f.append(f)
        out_m.append(m)
    return out_f, out_m


def _clip_from_folders(name: str, image_dir: Path, mask_dir: Path, skip_bad: bool, mask_mode: str) -> Clip | None:
    frames = list_files(image_dir, IMAGE_EXTENSIONS)
    if not frames:
        raise_or_warn(problem(image_dir, f"empty sequence {name!r} (no frames)"), skip_bad, 4)
        return None
    frames, masks = pair_by_stem(frames, mask_dir, skip_bad)
    if not frames:
        raise_or_warn(problem(image_dir, f"sequence {name!r} has no annotated frames"), skip_bad, 4)
        return None
    return Clip(name, frames, masks, mask_mode)


class RootGuard:
    """Resolves the paths a list file names, refusing any that leave the data root.

    A path is relative to the root (a leading ``/`` too: DAVIS lists write
    ``/JPEGImages/...``). Refused, with a :class:`DataError` naming the list file and the
    line (whatever ``skip_bad`` says: such a list is not to be trusted): a path that
    climbs out with ``..``, and one that a symbolic link inside the root sends outside it
    (the root itself may be a link). Folders are resolved once each, so checking a list
    of thousands of frames costs one ``lstat`` a line.
    """

    def __init__(self, root: Path, list_file: Path):
        self.root = Path(root)
        self.real = os.path.realpath(self.root)
        self.list_file = list_file
        self._dirs: dict[str, str] = {}

    def path(self, rel: str, n: int, entry: str | None = None) -> Path:
        """``root / rel`` (normalised), after checking that it stays inside the root;
        ``entry``: the list's text for it, as the error quotes it (default ``rel``)."""
        entry = rel if entry is None else entry
        norm = os.path.normpath(rel.lstrip("/"))
        if norm == os.pardir or norm.startswith(os.pardir + os.sep) or os.path.isabs(norm):
            raise self._leaves(entry, n, "climbs out of it")
        parent, base = os.path.split(norm)
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = self._dirs[parent] = os.path.realpath(self.root / parent)
        real = os.path.join(real_parent, base)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if real != self.real and not real.startswith(self.real.rstrip(os.sep) + os.sep):
            raise self._leaves(entry, n, f"a symbolic link sends it to {real}")
        return self.root / norm

    def _leaves(self, rel: str, n: int, how: str) -> DataError:
        return DataError(
            f"{self.list_file}:{n}: path {rel!r} leaves the data root {self.root} ({how}); refused",
            path=self.list_file,
        )


def _nested_sequences(folder: Path) -> list[str]:
    """Paths (relative to ``folder``, with ``/``) of the folders under it that hold
    frames, at any depth (hidden folders skipped; links to folders followed, each folder
    once: the caller checks where they lead)."""
    found, seen = [], {os.path.realpath(folder)}
    for here, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(here, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        if Path(here) != folder and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            found.append(Path(here).relative_to(folder).as_posix())
    return found


def clips_from_names(
    root: Path, list_file: Path, image_base: Path, mask_base: Path, skip_bad: bool, mask_mode: str = "auto"
) -> list[Clip]:
    """Clips of the sequences a list names, one a line. A sequence is a folder of frames
    at any depth under ``image_base`` ("bear", "category/clip"); a line naming a folder
    that holds no frames but folders of them (an MVPS category) stands for all of them."""
    clips = []
    seen = set()
    guard = RootGuard(root, list_file)
    image_rel, mask_rel = image_base.relative_to(root).as_posix(), mask_base.relative_to(root).as_posix()
    for n, line in read_list(list_file):
        entry = line.split()[0]
        name = entry.strip("/")
        image_dir = guard.path(f"{image_rel}/{name}", n, entry)
        guard.path(f"{mask_rel}/{name}", n, entry)
        name = image_dir.relative_to(image_base).as_posix()
        if name in seen:
            continue
        seen.add(name)
        if not image_dir.is_dir():
            raise_or_warn(
                DataError(f"{list_file}:{n}: sequence {name!r} not found (no folder {image_dir})", path=list_file),
                skip_bad,
                3,
            )
            continue
        names = [name]
        if not list_files(image_dir, IMAGE_EXTENSIONS):
            nested = _nested_sequences(image_dir)
            if nested:
                names = [f"{name}/{sub}" for sub in nested if f"{name}/{sub}" not in seen]
                seen.update(names)
                for seq in names:  # a link inside the category must not lead out of the root
                    guard.path(f"{image_rel}/{seq}", n, entry)
                    guard.path(f"{mask_rel}/{seq}", n, entry)
        for seq in names:
            clip = _clip_from_folders(seq, image_base / seq, mask_base / seq, skip_bad, mask_mode)
            if clip is not None:
                clips.append(clip)
    return clips


def frame_sort_key(path: Path):
    """Sort key putting frame files in time order: by trailing number, then by name."""
    m = re.search(r"(\d+)$", path.stem)
    return (int(m.group(1)) if m else -1, path.name)


def clips_from_pairs(root: Path, list_file: Path, skip_bad: bool, mask_mode: str, sequence_of) -> list[Clip]:
    """Clips from a list of "image mask" lines (paths relative to root, leading '/' allowed)."""
    groups: dict[str, list[tuple[Path, Path]]] = {}
    guard = RootGuard(root, list_file)
    for n, line in read_list(list_file):
        fields = line.split()
        if len(fields) != 2:
            raise_or_warn(
                DataError(
                    f"{list_file}:{n}: expected 'image_path mask_path', got {line!r}"
                    + (" (a frame without its mask)" if len(fields) == 1 else ""),
                    path=list_file,
                ),
                skip_bad,
                3,
            )
            continue
        image, mask = (guard.path(f, n) for f in fields)
        groups.setdefault(sequence_of(fields[0].lstrip("/")), []).append((image, mask))
    if not groups:
        raise DataError(f"{list_file}: list names no frames", path=list_file)
    clips = []
    for name in sorted(groups):
        pairs = sorted(groups[name], key=lambda fm: frame_sort_key(fm[0]))
        clips.append(Clip(name, [f for f, _ in pairs], [m for _, m in pairs], mask_mode))
    return clips

