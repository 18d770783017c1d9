"""``pdnet evaluate``: DAVIS J&F (and flicker) of a folder of predicted masks.

    pdnet evaluate --pred DIR --gt DIR [--protocol davis|mvps] [--out FILE.json|FILE.csv]
                   [--missing-as-empty] [--sequences A,B] [--device cpu|cuda]

Both folders hold ``<sequence>/<frame>.png``, where a sequence is any folder of PNG frames,
at any depth (MVPS: ``<category>/<clip>``), named by its relative path; the predictions
mirror the ground truth's folders. Masks are read by the training data's rules
(:func:`pdnet.data.io.decode_mask`, decided per file). Prints a table (per sequence and overall:
J&F, J and F mean / recall / decay, flicker) and optionally writes it as JSON or CSV.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_command


def add_parser(subparsers) -> None:
    p = add_command(
        subparsers, "evaluate",
        description="DAVIS J&F, J and F mean/recall/decay, and flicker of predicted masks. Both folders "
        "hold <sequence>/<frame>.png, a sequence being any folder of PNG frames at any depth, named by its "
        "relative path (MVPS: <category>/<clip>); the predictions mirror the ground truth's folders. "
        "Masks, decided per file: 8-bit grey 0/255 masks or 0..255 probabilities as stored, 0/1 masks "
        "scaled to 0/255, palette and colour-coded RGB: non-zero is foreground.",
    )
    p.add_argument("--pred", required=True, type=Path, metavar="DIR", help="predictions: DIR/<sequence>/<frame>.png")
    p.add_argument("--gt", required=True, type=Path, metavar="DIR", help="ground truth: DIR/<sequence>/<frame>.png")
    p.add_argument(
        "--protocol",
        choices=("davis", "mvps"),
        default="davis",
        help="davis: foreground >= 128, every frame (default); mvps: foreground non-zero, "
        "first and last frame of each clip skipped (the MVPS evaluation release)",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the results to FILE.json or FILE.csv")
    p.add_argument("--missing-as-empty", action="store_true", help="score a missing prediction frame as an empty mask")
    p.add_argument(
        "--sequences",
        metavar="A,B,...",
        help="evaluate only these sequences (comma-separated); a folder of sequences (an MVPS category) "
        "stands for every sequence under it",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N, for the metrics (default: cuda if available, else cpu)"
    )
    p.set_defaults(func=run)


def _check_out(out: Path) -> None:
    """One-line errors for an --out file that cannot be written (checked before evaluating)."""
    from ..cli import UserError

    if out.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"--out {out}: the file name must end in .json or .csv")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder")
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"--out {out}: cannot create it: {parent} is not a folder")
            break


def _check_device(text: str):
    from .._device import parse_device
    from ..cli import UserError

    try:
        parse_device(text, name="--device")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from ..cli import UserError
    from ..data.errors import DataWarning
    from .evaluate import evaluate
    from .io import EvaluationError

    if args.out is not None:
        _check_out(args.out)
    if args.device is not None:
        _check_device(args.device)
    seqs = None
    if args.sequences is not None:
        seqs = [s.strip() for s in args.sequences.split(",") if s.strip()]
        if not seqs:
            raise UserError(f"--sequences {args.sequences!r}: names no sequence")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            result = evaluate(
                args.pred,
                args.gt,
                protocol=args.protocol,
                sequences=seqs,
                missing_as_empty=args.missing_as_empty,
                device=args.device,
                progress=True,
            )
    except EvaluationError as exc:
        raise UserError(str(exc)) from None
    for w in caught:  # one line each (masks whose values fit no rule, ...)
        print(f"pdnet evaluate: warning: {w.message}", file=sys.stderr)
    print(result.table())
    if args.out is not None:
        text = result.to_json() if args.out.suffix.lower() == ".json" else result.to_csv()
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + ("\n" if not text.endswith("\n") else ""), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {args.out}")
    return 0
