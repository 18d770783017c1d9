"""``pdnet segment``: segment a video or a folder of frames with a checkpoint (or an ONNX export).

Every value is checked before the model is loaded or a file is written, and a bad one
is a one-line error naming it (exit code 2): the numbers and choices first (no torch
import), then the input, the background, the checkpoint's path, the output files (see
:mod:`pdnet.inference.segment`: nothing that exists is overwritten unless
``--overwrite``, an input never), then the device and precision.

Two engines: ``--engine torch`` (the default) runs ``--checkpoint`` with
:class:`pdnet.inference.VideoSegmenter`; ``--engine onnxruntime`` runs the graphs
``pdnet export --format onnx`` wrote to ``--onnx DIR`` with
:class:`pdnet.deploy.OnnxSegmenter` (float32, the export's input size; ``--device``
picks the execution provider). The options of one engine are errors with the other.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..cli import UserError, add_command

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ENGINES = ("torch", "onnxruntime")
MAX_INPUT_SIZE = 8192  # per side; far beyond what the model is trained for (480)


def parse_input_size(text: str) -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``), positive multiples of 32 up to 8192 -> (H, W)."""
    try:
        parts = [int(s) for s in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise UserError(f"--input-size: expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p <= 0 or p % 32 or p > MAX_INPUT_SIZE for p in parts):
        raise UserError(
            f"--input-size: expected N or HxW with multiples of 32 in 32..{MAX_INPUT_SIZE}, got {text!r}"
        )
    return parts[0], parts[1]


def parse_positive_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{flag}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise UserError(f"{flag}: expected a positive integer, got {text!r}")
    return value


def parse_fps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--fps: expected a number of frames per second, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= 1000:
        raise UserError(f"--fps: expected a finite frame rate in (0, 1000], got {text!r}")
    return value


def _check_engine(args: argparse.Namespace) -> None:
    """Each engine's own options, and none of the other's."""
    if args.engine not in ENGINES:
        raise UserError(f"--engine: expected one of {', '.join(ENGINES)}, got {args.engine!r}")
    if args.engine == "torch":
        if args.onnx is not None:
            raise UserError("--onnx: only with --engine onnxruntime (the torch engine runs --checkpoint)")
        if args.checkpoint is None:
            raise UserError("--checkpoint FILE is required (or --engine onnxruntime --onnx DIR)")
        return
    if args.onnx is None:
        raise UserError("--engine onnxruntime: --onnx DIR is required (a folder written by pdnet export --format onnx)")
    torch_only = [
        ("--checkpoint", args.checkpoint is not None, "the weights are in the --onnx export"),
        ("--backbone", args.backbone is not None, "the export's model is fixed"),
        ("--parts", args.parts is not None, "the export's model is fixed"),
        ("--reference-path", args.reference_path, "it selects the torch engine's plain PDNet"),
        (f"--dtype {args.dtype}", args.dtype not in ("auto", "float32"), "ONNX Runtime runs the export in float32"),
    ]
    for flag, given, why in torch_only:
        if given:
            raise UserError(f"{flag}: not an option of --engine onnxruntime ({why})")


def _check_arguments(args: argparse.Namespace) -> None:
    """The checks that need neither torch nor a file: values become their types in ``args``."""
    _check_engine(args)
    if args.backbone is not None and args.backbone not in BACKBONES:
        raise UserError(f"--backbone: expected one of {', '.join(BACKBONES)}, got {args.backbone!r}")
    if args.dtype not in DTYPES:
        raise UserError(f"--dtype: expected one of {', '.join(DTYPES)}, got {args.dtype!r}")
    if args.parts is not None:
        args.parts = parse_positive_int("--parts", args.parts)
    args.batch_size = parse_positive_int("--batch-size", args.batch_size)
    if args.input_size is not None:
        args.input_size = parse_input_size(args.input_size)
    if args.fps is not None:
        args.fps = parse_fps(args.fps)
    for flag, value in (("INPUT", args.input), ("--checkpoint", args.checkpoint), ("--onnx", args.onnx),
                        ("--out", args.out), ("--composite", args.composite), ("--device", args.device)):
        if value is not None and not value.strip():
            raise UserError(f"{flag}: empty value {value!r}")


def _onnx_inputs(args: argparse.Namespace) -> list[Path]:
    """--engine onnxruntime: read DIR/export.json (no session yet): the export's files, after
    checking --input-size against the export's."""
    try:
        from ..deploy import runtime
    except ImportError as exc:
        raise UserError(f"--engine onnxruntime: {exc}") from None
    folder = Path(args.onnx)
    try:
        meta = runtime.read_export(folder)
    except (FileNotFoundError, runtime.OnnxFolderError) as exc:
        raise UserError(f"--onnx: {exc}") from None
    size = tuple(meta["input_size"])
    if args.input_size is not None and tuple(args.input_size) != size:
        raise UserError(
            f"--input-size {args.input_size[0]}x{args.input_size[1]}: the export {folder} runs at {size[0]}x{size[1]} "
            "(fixed when exported: pdnet export --input-size)"
        )
    return [folder / runtime.META_FILE, *(folder / g["file"] for g in meta["graphs"].values()
                                          if isinstance(g, dict) and isinstance(g.get("file"), str))]


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.engine == "onnxruntime":
        checkpoint, inputs = None, _onnx_inputs(args)
    else:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.exists():
            raise UserError(f"checkpoint {checkpoint} does not exist")
        if checkpoint.is_dir():
            raise UserError(f"checkpoint {checkpoint} is a directory, not a file")
        inputs = [checkpoint]

    import warnings

    from .segment import check_outputs
    from .video import FrameSource, OutputError, SourceError, background_array

    try:  # input and output problems: no torch needed yet
        src = FrameSource(args.input, fps=args.fps, allow_truncated=args.allow_truncated)
        if args.composite is not None:
            background_array(args.composite, (1, 1))  # a bad colour or an unreadable image, before the model
            if Path(args.composite).is_file():
                inputs.append(Path(args.composite))
        check_outputs(src, args.out, overlay=args.overlay, composite=args.composite is not None,
                      overwrite=args.overwrite, inputs=inputs)
    except (SourceError, OutputError) as exc:
        raise UserError(str(exc)) from None

    import torch

    from .segment import segment_video

    if args.engine == "onnxruntime":
        seg, device = _onnx_segmenter(args), "onnxruntime"
    else:
        seg, device = _torch_segmenter(args, checkpoint)

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"pdnet segment: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            summary = segment_video(
                seg, src, args.out, overlay=args.overlay, composite=args.composite,
                batch_size=args.batch_size, progress=not args.quiet, overwrite=args.overwrite,
            )
    except (SourceError, OutputError) as exc:
        raise UserError(str(exc)) from None
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory on {device} at batch size {args.batch_size}, input {seg.input_size[0]}x"
            f"{seg.input_size[1]}: try a smaller --batch-size or --input-size"
        ) from None
    if not args.quiet:
        extra = "".join(f", {k} video {summary[k]}" for k in ("overlay", "composite") if summary[k])
        print(
            f"{summary['frames']} frames ({summary['size'][1]}x{summary['size'][0]}) in {summary['seconds']:.1f} s "
            f"({summary['fps']:.1f} FPS including decoding and encoding); masks in {summary['masks']}{extra}"
        )
    return 0


def _onnx_segmenter(args: argparse.Namespace):
    """--engine onnxruntime: the OnnxSegmenter of --onnx on --device's execution provider."""
    from ..deploy.runtime import OnnxFolderError, OnnxSegmenter, providers_for_device

    try:
        seg = OnnxSegmenter(args.onnx, providers=providers_for_device(args.device, name="--device"))
    except (FileNotFoundError, OnnxFolderError) as exc:
        raise UserError(f"--onnx: {exc}") from None
    except ValueError as exc:  # the device
        raise UserError(str(exc)) from None
    if not args.quiet:
        cfg = seg.meta.get("model_config") or {}
        print(
            f"PDNet {cfg.get('backbone', '?')}, p={cfg.get('parts', '?')}, input {seg.input_size[0]}x"
            f"{seg.input_size[1]}; onnxruntime ({', '.join(seg.providers)}), float32, batch {args.batch_size}"
        )
    return seg


def _torch_segmenter(args: argparse.Namespace, checkpoint: Path):
    """--engine torch: the VideoSegmenter of --checkpoint on --device in --dtype, and the device."""
    import torch

    from .._device import parse_device
    from .checkpoint import CheckpointError
    from .loading import load
    from .segmenter import VideoSegmenter, parse_dtype

    try:
        device = parse_device(args.device, name="--device")
        dtype = parse_dtype(args.dtype, device)
        model = load(checkpoint, device="cpu", backbone=args.backbone, parts=args.parts)
    except (FileNotFoundError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:  # parse_device / parse_dtype
        raise UserError(str(exc)) from None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed frame size: pick the fastest conv algorithms once
    try:
        seg = VideoSegmenter(
            model, device=device, dtype=dtype, fast=not args.reference_path,
            cuda_graphs=False if args.no_cuda_graphs else None, input_size=args.input_size,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = model.config
    if not args.quiet:
        print(
            f"PDNet {cfg.backbone}, p={cfg.parts}, input {seg.input_size[0]}x{seg.input_size[1]}; "
            f"{device}, {str(seg.dtype).replace('torch.', '')}, {'fast' if seg.fast else 'reference'} path"
            f"{', CUDA graphs' if seg.cuda_graphs else ''}, batch {args.batch_size}"
        )
    return seg, device


def add_parser(sub) -> None:
    p = add_command(
        sub, "segment",
        description=(
            "Segment every frame of INPUT against its first frame (the release's protocol) and write one mask "
            "PNG per frame (8-bit, round(255 * probability), at the frame's size) under --out. "
            "Nothing is overwritten unless --overwrite: an output file that exists already (e.g. the masks of "
            "an earlier run) is an error naming it, and the output may never overwrite an input (--out the "
            "input folder of frames, a mask or video that is an input file). Each file is written to a "
            "temporary file and moved into place when complete; a failed or interrupted run (Ctrl-C: exit "
            "code 130) removes the files it wrote. A video that ends early (a decoding error, or fewer frames "
            "than its header or duration x frame rate announce) is an error naming the last good frame, "
            "unless --allow-truncated."
        ),
    )
    p.add_argument("input", metavar="INPUT",
                   help="video file (mp4, mov, mkv, ...) or folder of frames (sorted by name)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a pdnet checkpoint (e.g. RUN/last.pt) or a release state_dict file (--engine torch)")
    p.add_argument("--engine", default="torch", metavar="{" + ",".join(ENGINES) + "}",
                   help="torch (default: --checkpoint with PyTorch) or onnxruntime (--onnx DIR: the graphs of "
                        "pdnet export --format onnx, run in float32 at the export's input size; --device picks "
                        "the execution provider)")
    p.add_argument("--onnx", metavar="DIR", help="an ONNX export folder (export.json and graphs), with --engine "
                                                 "onnxruntime")
    p.add_argument("--backbone", metavar="{" + ",".join(BACKBONES) + "}",
                   help="override the backbone (release files: inferred from the weights)")
    p.add_argument("--parts", metavar="P", help="override the number of parts, >= 1 (release files: inferred)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created if missing; not the input folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist in DIR (never an input file)")
    p.add_argument("--overlay", action="store_true", help="also write DIR/overlay.mp4 (person tinted green)")
    p.add_argument("--composite", metavar="BACKGROUND",
                   help="also write DIR/composite.mp4 with the background replaced by this image file or colour "
                        "(green, blue, black, white, grey, red, #rrggbb or R,G,B)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", metavar="{" + ",".join(DTYPES) + "}",
                   help="compute precision (auto: bfloat16 on CUDA, float32 on the CPU; bfloat16 on a GPU "
                        "without it is an error)")
    p.add_argument("--batch-size", default="1", metavar="N", help="frames per forward pass (default 1: streaming)")
    p.add_argument("--input-size", metavar="N|HxW",
                   help=f"model input size, multiples of 32 up to {MAX_INPUT_SIZE} "
                        "(default: the checkpoint's, 480x480 for release files)")
    p.add_argument("--fps", metavar="FPS",
                   help="frame rate of the written videos, in (0, 1000] (default: the video's own, 25 for a folder)")
    p.add_argument("--allow-truncated", action="store_true",
                   help="a video that ends early: keep the frames decoded so far (a warning) instead of an error")
    p.add_argument("--reference-path", action="store_true",
                   help="use the plain PDNet instead of the fast path (folded BatchNorm, CUDA graphs)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="do not capture CUDA graphs")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)
