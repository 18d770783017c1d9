"""``pdnet segment``: segment a video or a folder of frames with a checkpoint."""
from __future__ import annotations

import argparse

from ..cli import UserError


def _input_size(text: str):
    try:
        parts = [int(s) for s in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p <= 0 or p % 32 for p in parts):
        raise argparse.ArgumentTypeError(f"the input size must be N or HxW with multiples of 32, got {text!r}")
    return tuple(parts)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import CheckpointError, load
    from .segment import segment_video
    from .segmenter import VideoSegmenter, parse_device, parse_dtype
    from .video import FrameSource, SourceError

    try:
        device = parse_device(args.device)
        dtype = parse_dtype(args.dtype, device)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        FrameSource(args.input)  # input problems first: they are the cheapest to report
        model = load(args.checkpoint, device="cpu", backbone=args.backbone, parts=args.parts)
    except (SourceError, FileNotFoundError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed frame size: pick the fastest conv algorithms once
    seg = VideoSegmenter(
        model, device=device, dtype=dtype, fast=not args.reference_path,
        cuda_graphs=False if args.no_cuda_graphs else None, input_size=args.input_size,
    )
    cfg = model.config
    if not args.quiet:
        print(
            f"PDNet {cfg.backbone}, p={cfg.parts}, input {seg.input_size[0]}x{seg.input_size[1]}; "
            f"{device}, {str(seg.dtype).replace('torch.', '')}, {'fast' if seg.fast else 'reference'} path"
            f"{', CUDA graphs' if seg.cuda_graphs else ''}, batch {args.batch_size}"
        )
    try:
        summary = segment_video(
            seg, args.input, args.out, overlay=args.overlay, composite=args.composite,
            batch_size=args.batch_size, fps=args.fps, progress=not args.quiet,
        )
    except SourceError as exc:
        raise UserError(str(exc)) from None
    if not args.quiet:
        extra = "".join(f", {k} video {summary[k]}" for k in ("overlay", "composite") if summary[k])
        print(
            f"{summary['frames']} frames ({summary['size'][1]}x{summary['size'][0]}) in {summary['seconds']:.1f} s "
            f"({summary['fps']:.1f} FPS including decoding and encoding); masks in {summary['masks']}{extra}"
        )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment a video or a folder of frames: mask PNGs, optional overlay / composite videos",
        description=(
            "Segment every frame of INPUT against its first frame (the release's protocol) and write one mask "
            "PNG per frame (8-bit, round(255 * probability), at the frame's size) under --out."
        ),
    )
    p.add_argument("input", metavar="INPUT",
                   help="video file (mp4, mov, mkv, ...) or folder of frames (sorted by name)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a pdnet checkpoint (e.g. RUN/last.pt) or a release state_dict file")
    p.add_argument("--backbone", choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                   help="override the backbone (release files: inferred from the weights)")
    p.add_argument("--parts", type=int, help="override the number of parts (release files: inferred)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overlay", action="store_true", help="also write DIR/overlay.mp4 (person tinted green)")
    p.add_argument("--composite", metavar="BACKGROUND",
                   help="also write DIR/composite.mp4 with the background replaced by this image file or colour "
                        "(green, blue, black, white, grey, red, #rrggbb or R,G,B)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute precision (auto: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="frames per forward pass (default 1: streaming)")
    p.add_argument("--input-size", type=_input_size, metavar="N|HxW",
                   help="model input size (default: the checkpoint's, 480x480 for release files)")
    p.add_argument("--fps", type=float, help="frame rate of the written videos for a folder INPUT (default 25)")
    p.add_argument("--reference-path", action="store_true",
                   help="use the plain PDNet instead of the fast path (folded BatchNorm, CUDA graphs)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="do not capture CUDA graphs")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)
