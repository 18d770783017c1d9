"""``pdnet synth``'s command line (argument checks, one-line errors, ``--force``); the
generator is :mod:`pdnet.data.synth.writer`. Importing this module imports neither torch nor
NumPy, so ``pdnet synth --help`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...cli import add_command

MAX_SIDE = 4096


def parse_size(text: str) -> tuple[int, int]:
    """"480x854" -> (480, 854); "256" -> (256, 256); each side in 16..4096."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 16 or max(parts) > MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"size must be HxW with both in 16..{MAX_SIDE}, e.g. 480x854 (got {text!r})"
        )
    return parts[0], parts[1]


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "synth",
        description=(
            "Writes N synthetic clips of T frames in the DAVIS-2016 layout (JPEGImages/480p, "
            "Annotations/480p with 0/255 masks, ImageSets train/val lists, synth.json): articulated "
            "figures and people cut out of scikit-image photos on real backgrounds, moved by fake "
            "motion (smooth random flow at three scales). The same seed gives the same bytes."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder (must be empty or absent, unless --force)")
    p.add_argument("--clips", type=int, default=20, help="number of clips, at least 1 (default 20)")
    p.add_argument("--frames", type=int, default=30, help="frames per clip, at least 1 (default 30)")
    p.add_argument(
        "--size", type=parse_size, default=(480, 854), help=f"frame size HxW, each in 16..{MAX_SIDE} (default 480x854)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed, a non-negative integer (default 0)")
    p.add_argument("--val", type=float, default=0.2, help="fraction of clips in the val split, in [0, 1) (default 0.2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality, 1..100 (default 90)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes, at least 1 (default: up to 2; the output does not depend on it)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a previous pdnet synth output in OUT: the files it wrote (listed by its synth.json) "
        "are deleted first, other files are kept; a non-empty OUT without synth.json is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_out(out: Path, force: bool) -> None:
    """One-line errors for an output folder synth cannot (or must not) write into."""
    from ...cli import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if not out.exists():
        for parent in out.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise UserError(f"{out}: cannot create the folder: {parent} is not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise UserError(f"{out}: cannot create the folder: {parent} is not writable")
                break
        return
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{out}: folder is not writable")
    if any(out.iterdir()) and not force:
        raise UserError(f"{out}: folder is not empty (use --force to replace a previous pdnet synth output)")


def run(args: argparse.Namespace) -> int:
    from ...cli import UserError

    out = Path(args.out)
    for flag, value, low in (("--clips", args.clips, 1), ("--frames", args.frames, 1), ("--workers", args.workers, 1)):
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be a non-negative integer")
    if not 0.0 <= args.val < 1.0:
        raise UserError(f"--val {args.val}: must be in [0, 1)")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality {args.quality}: must be in 1..100")
    _check_out(out, args.force)
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise UserError("pdnet synth needs scikit-image (pip install 'pdnet[data]')") from None
    from .writer import NotSynthOutput, remove_previous, split_of, synthesize  # torch: only now
    try:
        if args.force and out.is_dir() and any(out.iterdir()):
            try:
                removed = remove_previous(out)
            except NotSynthOutput as exc:
                raise UserError(f"--force: {exc}; refusing to delete anything in {out}") from None
            if not args.quiet:
                print(f"removed the {removed} files of the previous synth output in {out}")
        synthesize(
            out,
            clips=args.clips,
            frames=args.frames,
            size=args.size,
            seed=args.seed,
            val_fraction=args.val,
            quality=args.quality,
            workers=args.workers,
            progress=not args.quiet,
        )
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    n_val = sum(split_of(i, args.clips, args.val) == "val" for i in range(args.clips))
    print(
        f"wrote {args.clips} clips x {args.frames} frames ({args.size[0]}x{args.size[1]}) to {out} "
        f"({args.clips - n_val} train, {n_val} val)"
    )
    return 0
