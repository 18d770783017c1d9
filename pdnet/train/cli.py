"""``pdnet train``: the release recipe from a config file."""
from __future__ import annotations

import argparse
import json
import math

from ..cli import UserError, add_command


def add_parser(sub) -> None:
    p = add_command(
        sub, "train",
        description="Train PDNet. Configs: a YAML file or a shipped name (release, demo-cpu). "
        "Multi-GPU: torchrun --nproc_per_node=N -m pdnet train ... "
        "Every config value and flag is checked before any data is read (one-line errors, exit code 2). "
        "Ctrl-C (SIGINT) or SIGTERM: the run writes RUN/last.pt after the current step and exits "
        "(code 130 for SIGINT, 143 for SIGTERM; a second Ctrl-C stops at once, last.pt stays the "
        "previous complete checkpoint). A loss that turns NaN/inf stops the run (exit code 2) naming the "
        "step and the loss terms, last.pt keeping the last finite weights (train.nonfinite=skip skips "
        "such steps instead).",
    )
    p.add_argument("--config", default="release", help="YAML config file or shipped name (default: release)")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="video dataset folder (layout detected); repeatable; adds to data.video")
    p.add_argument("--out", help="run folder (checkpoints, metrics, TensorBoard); temporary files a killed "
                   "run left there are removed when a run starts")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from RUN/last.pt")
    p.add_argument("--max-steps", metavar="N", help="stop after this many steps in total (an integer >= 1)")
    p.add_argument("--max-minutes", metavar="M",
                   help="stop (with a checkpoint) after this much wall time (a number > 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 --set data.size=256")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=run)


def _positive(raw: str | None, flag: str, integer: bool):
    """The value of ``flag``: an integer >= 1 (``integer``) or a finite number > 0; None when not given."""
    if raw is None:
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or (not integer and not math.isfinite(value)) or value <= 0:
        want = "an integer >= 1" if integer else "a finite number > 0"
        raise UserError(f"{flag} must be {want}, got {raw!r}")
    return value


def _run_folder(flag: str, value: str):
    """The run folder of --out / --resume, refused when it cannot be one."""
    from pathlib import Path

    out = Path(value)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {value} is a file, not a run folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {value}: {parent} is a file, not a folder")
            break
    return out


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    from pathlib import Path

    from .config import ConfigError, load_config, read_yaml_mapping

    # flags and config first: nothing heavy is imported before they are known good
    if not args.out and not args.resume:
        raise UserError("give --out RUN for a new run or --resume RUN to continue one")
    if args.out and args.resume and Path(args.out) != Path(args.resume):
        raise UserError(f"--out {args.out} and --resume {args.resume} name different runs")
    max_steps = _positive(args.max_steps, "--max-steps", integer=True)
    max_minutes = _positive(args.max_minutes, "--max-minutes", integer=False)
    out = _run_folder("--resume" if args.resume else "--out", args.resume or args.out)
    for d in args.data:
        if not Path(d).is_dir():
            raise UserError(f"--data {d}: " + ("not a folder" if Path(d).exists() else "folder not found"))
    try:
        if args.resume:
            saved = out / "config.yaml"
            if not saved.is_file():
                raise UserError(f"cannot resume: {saved} not found (is {out} a run folder?)")
            base = read_yaml_mapping(saved)
            cfg = load_config(None, args.set, base=base, base_name=str(saved), resume=True)
        else:
            cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    for d in args.data:
        entry = {"kind": "auto", "root": str(Path(d).resolve())}
        if entry not in cfg["data"]["video"]:
            cfg["data"]["video"].append(entry)

    from ..data.errors import DataError
    from .errors import TrainError, TrainInterrupted
    from .trainer import Trainer

    try:
        trainer = Trainer(cfg, out, resume=bool(args.resume), device=args.device)
        result = trainer.fit(max_steps, None if max_minutes is None else 60 * max_minutes)
    except TrainInterrupted as stop:
        how = "interrupted" if stop.signum == signal.SIGINT else "terminated"
        print(f"pdnet train: {how} ({signal.Signals(stop.signum).name}) {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (ConfigError, TrainError, DataError) as exc:
        raise UserError(str(exc)) from None
    if trainer.is_main:
        print(json.dumps(result))
    return 0
