"""``pdnet export``: write a checkpoint's ONNX graphs (:func:`pdnet.deploy.export_onnx`).

Every value is checked before torch is imported or the checkpoint read (format, input
size, backbone, parts, opset, the checkpoint's path, the output folder, the onnx
packages), then the checkpoint is loaded and exported; a bad one is a one-line error
naming it (exit code 2).
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..cli import UserError, add_command
from ..inference.cli import BACKBONES, MAX_INPUT_SIZE, parse_input_size, parse_positive_int

FORMATS = ("onnx",)
PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def _one_line(exc: BaseException) -> str:
    """The loader lists every problem on its own line: here they share one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "") if lines else type(exc).__name__


def _check_arguments(args: argparse.Namespace) -> None:
    if args.format not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {args.format!r}")
    if args.backbone is not None and args.backbone not in BACKBONES:
        raise UserError(f"--backbone: expected one of {', '.join(BACKBONES)}, got {args.backbone!r}")
    if args.parts is not None:
        args.parts = parse_positive_int("--parts", args.parts)
    if args.input_size is not None:
        args.input_size = parse_input_size(args.input_size)
    args.opset = parse_positive_int("--opset", args.opset)
    for flag, value in (("CHECKPOINT", args.checkpoint), ("--out", args.out)):
        if not value.strip():
            raise UserError(f"{flag}: empty value {value!r}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.is_dir():
        raise UserError(f"checkpoint {checkpoint} is a directory, not a file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    needed = PACKAGES if not args.no_check else PACKAGES[:2]  # onnxruntime: the self-test
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format onnx needs the package(s) {', '.join(missing)}: pip install -e \".[deploy]\"")
    from .export import opset_range

    low, high = opset_range()
    if not low <= args.opset <= high:
        raise UserError(f"--opset: expected {low}..{high}, got {args.opset}")


def _size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    from .export import (
        EXPORT_JSON,
        FLOAT32_ERROR_FACTOR,
        GRAPH_FILES,
        SELF_TEST_TOLERANCE,
        SelfTestError,
        existing_outputs,
    )

    out = Path(args.out)
    found = existing_outputs(out) if out.is_dir() and not args.overwrite else []
    if found:
        raise UserError(f"--out {out} already holds {', '.join(found)}: pass --overwrite to replace them")

    from ..inference.checkpoint import CheckpointError
    from .export import export_onnx

    if not args.quiet:
        print(f"exporting {args.checkpoint} (opset {args.opset}) to {out}", flush=True)
    try:
        result = export_onnx(
            args.checkpoint, out, input_size=args.input_size, opset=args.opset, overwrite=args.overwrite,
            check=not args.no_check, backbone=args.backbone, parts=args.parts,
        )
    except (FileNotFoundError, CheckpointError) as exc:  # the checkpoint (pdnet.load)
        hint = " (--backbone / --parts must match the checkpoint)" if args.backbone or args.parts else ""
        raise UserError(_one_line(exc) + hint) from None
    except (ValueError, FileExistsError, NotADirectoryError, ImportError, SelfTestError) as exc:
        raise UserError(_one_line(exc).removeprefix("export_onnx: ")) from None
    except OSError as exc:
        raise UserError(f"writing {out}: {exc}") from None
    if not args.quiet:
        seconds = sum(result["export_seconds"].values())
        files = ", ".join(f"{GRAPH_FILES[g]} ({_size_text(n)})" for g, n in result["sizes"].items())
        cfg, (H, W) = result["model_config"], result["input_size"]
        print(f"PDNet {cfg['backbone']}, p={cfg['parts']}, input {H}x{W}, dynamic batch: wrote {files} and "
              f"{EXPORT_JSON} in {out} ({seconds:.1f} s)")
        if result["self_test"] is None:
            print("self-test skipped (--no-check)")
        else:
            numbers = ", ".join(f"{g} {e:.2g}" for g, e in result["self_test"].items())
            print(
                f"self-test passed: ONNX Runtime (CPU) vs pdnet, float32, max|onnx - pdnet| / max|pdnet| "
                f"{numbers} (tolerance {SELF_TEST_TOLERANCE:.0e}; onnx.checker passed)"
            )
            if result["self_test_float64"]:
                judged = ", ".join(
                    f"{g} {o} {e['onnx']:.2g} (PyTorch float32 {e['pytorch_float32']:.2g})"
                    for g, outs in result["self_test_float64"].items() for o, e in outs.items()
                )
                print(f"  beyond the tolerance in float32, so judged against pdnet in float64: {judged}: "
                      f"within {FLOAT32_ERROR_FACTOR} x PyTorch's own float32 error (an ill-conditioned network)")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub, "export",
        description=(
            "Export a checkpoint to ONNX: DIR/pdnet.onnx (target, reference -> logits), "
            "DIR/encode_reference.onnx (reference -> keys, values), DIR/step.onnx (target, keys, values -> "
            "logits, logits_stride4) and DIR/export.json (input size, normalisation, every graph's inputs and "
            "outputs). The graphs take ImageNet-normalised float32 frames [batch, 3, H, W] at a fixed H x W "
            "and any batch. Each file is checked with onnx.checker and run by ONNX Runtime against pdnet "
            "(max|onnx - pdnet| <= 1e-4 max|pdnet|) before it is moved into place; files that exist are "
            "replaced only with --overwrite. See docs/deploy.md."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a pdnet checkpoint (e.g. RUN/last.pt) or a release state_dict file")
    p.add_argument("--format", default="onnx", metavar="{" + ",".join(FORMATS) + "}",
                   help="the export format (default onnx)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--input-size", metavar="N|HxW",
                   help=f"the graphs' input size, multiples of 32 up to {MAX_INPUT_SIZE} "
                        "(default: the checkpoint's, 480x480 for release files)")
    p.add_argument("--backbone", metavar="{" + ",".join(BACKBONES) + "}",
                   help="override the backbone (release files: inferred from the weights)")
    p.add_argument("--parts", metavar="P", help="override the number of parts, >= 1 (release files: inferred)")
    p.add_argument("--opset", default="18", metavar="N", help="ONNX opset, 18 or later (default 18)")
    p.add_argument("--overwrite", action="store_true", help="replace the export's files if DIR holds them already")
    p.add_argument("--no-check", action="store_true",
                   help="skip onnx.checker and the ONNX Runtime self-test (onnxruntime not needed)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)
