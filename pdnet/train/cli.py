"""``pdnet train``: the release recipe from a config file."""
from __future__ import annotations

import argparse
import json

from ..cli import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train PDNet with the release recipe (resumable; multi-GPU via torchrun)",
        description="Train PDNet. Configs: a YAML file or a shipped name (release, demo-cpu). "
        "Multi-GPU: torchrun --nproc_per_node=N -m pdnet train ...",
    )
    p.add_argument("--config", default="release", help="YAML config file or shipped name (default: release)")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="video dataset folder (layout detected); repeatable; adds to data.video")
    p.add_argument("--out", help="run folder (checkpoints, metrics, TensorBoard)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from RUN/last.pt")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in total")
    p.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this much wall time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 --set data.size=256")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from ..data.errors import DataError
    from .config import ConfigError, load_config
    from .loop import Trainer, TrainError

    if not args.out and not args.resume:
        raise UserError("give --out RUN for a new run or --resume RUN to continue one")
    if args.out and args.resume and Path(args.out) != Path(args.resume):
        raise UserError(f"--out {args.out} and --resume {args.resume} name different runs")
    out = Path(args.resume or args.out)
    try:
        if args.resume:
            saved = out / "config.yaml"
            if not saved.is_file():
                raise UserError(f"cannot resume: {saved} not found (is {out} a run folder?)")
            cfg = load_config(None, args.set, base=yaml.safe_load(saved.read_text()))
        else:
            cfg = load_config(args.config, args.set)
        for d in args.data:
            if not Path(d).is_dir():
                raise UserError(f"--data {d}: folder not found")
            entry = {"kind": "auto", "root": str(Path(d).resolve())}
            if entry not in cfg["data"]["video"]:
                cfg["data"]["video"].append(entry)
        trainer = Trainer(cfg, out, resume=bool(args.resume), device=args.device)
        result = trainer.fit(args.max_steps, None if args.max_minutes is None else 60 * args.max_minutes)
    except (ConfigError, TrainError, DataError) as exc:
        raise UserError(str(exc)) from None
    if trainer.is_main:
        print(json.dumps(result))
    return 0
