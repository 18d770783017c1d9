"""``pdnet evaluate``: DAVIS J&F (and flicker) of a folder of predicted masks.

    pdnet evaluate --pred DIR --gt DIR [--protocol davis|mvps] [--out FILE.json|FILE.csv]
                   [--missing-as-empty] [--sequences A,B] [--device cpu|cuda]

Both folders hold ``<sequence>/<frame>.png``. Prints a table (per sequence and overall:
J&F, J and F mean / recall / decay, flicker) and optionally writes it as JSON or CSV.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="DAVIS J&F of predicted mask PNGs against ground truth",
        description="DAVIS J&F, J and F mean/recall/decay, and flicker of predicted masks. Both folders "
        "hold <sequence>/<frame>.png; predictions may be 0/255 masks or 0..255 probabilities.",
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
    p.add_argument("--sequences", metavar="A,B,...", help="evaluate only these sequences (comma-separated)")
    p.add_argument("--device", default=None, help="torch device for the metrics (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import UserError
    from .evaluate import evaluate
    from .io import EvaluationError

    if args.out is not None and args.out.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"--out {args.out}: the file name must end in .json or .csv")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError as exc:
            raise UserError(f"--device {args.device}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {args.device}: CUDA is not available")
    seqs = None
    if args.sequences is not None:
        seqs = [s.strip() for s in args.sequences.split(",") if s.strip()]
    try:
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
