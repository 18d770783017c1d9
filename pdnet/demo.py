"""``pdnet demo``: the whole pipeline on an embedded default, on the CPU.

1. ``pdnet synth``: a small synthetic video dataset (DAVIS layout, fake-motion clips);
2. J&F of the untrained model on the held-out clips (DAVIS protocol, each frame's
   original size);
3. ``pdnet train --config demo-cpu`` (ResNet-18, 96x96 input, p=5, 12 epochs);
4. J&F after training;
5. ``pdnet segment`` of one held-out clip with the trained checkpoint: mask PNGs and an
   overlay video;
6. a report (printed, and written to OUT/report.json): J&F before/after, the steps and
   epochs trained, whether the time budget cut training short, throughput, timings of
   each stage, where the checkpoint and the logs are.

The whole run keeps to a wall-time budget, ``--minutes`` (default 4.5): training stops
at the end of the recipe or when the budget left, less the time the final J&F and the
segmenting are expected to take (estimated from the first J&F, which does the same
work), runs out, whichever comes first. A slow or busy machine trains fewer steps and
reports a lower J&F rather than running longer.

``pdnet demo --quick`` is the same pipeline in miniature (seconds): two ``pdnet synth``
clips (one to train on, one held out) in a temporary folder, ``--steps`` video steps of
the trainer with the demo-cpu recipe changed by the ``--quick`` options, the named loss
terms of the first step, and the J&F of the held-out clip. Nothing is downloaded and
nothing is left behind.
"""
from __future__ import annotations

import argparse
import math
import time

from .cli import add_command

#: default wall-time budget of ``pdnet demo`` (minutes), all stages together
DEFAULT_MINUTES = 4.5


def _synthesize(data, clips: int, frames: int, size: str, seed: int, *extra: str) -> int:
    """``pdnet synth`` into ``data`` (``extra``: more of its options); its exit code."""
    from .cli import main

    return main(["synth", str(data), "--clips", str(clips), "--frames", str(frames), "--size", size,
                 "--seed", str(seed), *extra])


def _config(overrides) -> dict:
    """The demo-cpu recipe with ``overrides`` ("section.key=value"); a bad one is a
    one-line :class:`UserError`."""
    from .cli import UserError
    from .train import ConfigError, load_config

    try:
        return load_config("demo-cpu", overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _trainer(cfg: dict, data, run):
    """The trainer of ``cfg`` on the DAVIS-layout ``data``, writing its run into ``run``."""
    from .cli import UserError
    from .train import Trainer, TrainError

    cfg["data"]["video"] = [{"kind": "davis", "root": str(data)}]
    try:
        return Trainer(cfg, run)
    except TrainError as exc:
        raise UserError(str(exc)) from None


def _fit(trainer, **limits) -> dict:
    from .cli import UserError
    from .train import TrainError

    try:
        return trainer.fit(**limits)
    except TrainError as exc:
        raise UserError(str(exc)) from None


def run_quick(args: argparse.Namespace) -> int:
    import json
    import tempfile
    import warnings
    from pathlib import Path

    t0 = time.perf_counter()
    # one training clip of at least one batch, one held-out clip: every epoch is
    # frames // batch steps, and the recipe has enough epochs for --steps
    frames = max(2, args.batch)
    epochs = max(1, math.ceil(args.steps / (frames // args.batch)))
    overrides = [f"model.backbone={args.backbone}", f"model.parts={args.parts}", f"data.size={args.size}",
                 "data.workers=0", f"data.seed={args.seed}", f"train.seed={args.seed}", f"train.epochs={epochs}",
                 f"train.batch_size={args.batch}", f"train.lr={args.lr}", "train.image_every=0",
                 "log.every=1", "log.progress=false", "log.tensorboard=false", *args.set]
    cfg = _config(overrides)
    with tempfile.TemporaryDirectory(prefix="pdnet-demo-quick-") as tmp:
        data = Path(tmp) / "data"
        code = _synthesize(data, 2, frames, f"{args.size}x{args.size}", args.seed, "--val", "0.5", "--quiet")
        if code:
            return code
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = _trainer(cfg, data, Path(tmp) / "run")
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"PDNet {cfg['model']['backbone']}, p={cfg['model']['parts']}, input {args.size}x{args.size}, "
              f"batch {args.batch}: the demo-cpu recipe on pdnet synth clips")
        print(f"parameters: {n_params / 1e6:.2f} M (+ part basis {trainer.basis.weight.numel()})")
        for message in dict.fromkeys(str(w.message) for w in caught):
            print(f"note: {message}")
        result = _fit(trainer, max_steps=args.steps)
        metrics = Path(result["metrics"])
        lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        steps = [line for line in lines if "total" in line]  # the other lines are validations
        video = [{k[len("video."):]: v for k, v in line.items() if k.startswith("video.")} for line in steps]
        for line, terms in zip(steps, video, strict=True):
            if terms and terms is next(t for t in video if t):
                print("loss terms of the first video step:")
                width = max(len(k) for k in terms)
                for k, v in terms.items():
                    print(f"  {k:<{width}}  {v:.5f}")
            ms = 1000.0 * args.batch / max(line["pairs_per_s"], 1e-9)
            print(f"step {line['step']}/{args.steps}: total {line['total']:.4f}  ({ms:.0f} ms with data loading)")
        val = trainer.validate()
    if val is not None:
        print(f"J&F of the held-out clip (a cached reference state per clip) after {result['step']} steps: "
              f"{val['J&F']:.3f} (J {val['J']:.3f}, F {val['F']:.3f})")
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return 0


def training_budget(total_s: float, elapsed_s: float, validate_s: float) -> float:
    """Seconds of training that fit in a demo budget of ``total_s`` seconds when
    ``elapsed_s`` are spent and the first J&F took ``validate_s``: what is left, less
    the final J&F (the same work as the first) and the segmenting of one clip (a
    quarter of the J&F's clips, plus loading the checkpoint and encoding a video),
    with a 10% margin for a machine whose speed varies, and less 5% of the budget for
    the step and the checkpoint that run past the training deadline (the trainer
    checks it after each step). At least 1 s (one step)."""
    reserve = 1.1 * (validate_s * 1.5 + 10.0) + 0.05 * total_s
    return max(1.0, total_s - elapsed_s - reserve)


def run_pipeline(args: argparse.Namespace) -> int:
    import json
    import shutil
    from pathlib import Path

    from .cli import UserError

    cfg = _config(args.set)  # a bad --set ends the demo before anything is written or removed
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --out")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS)
        if foreign:  # --overwrite replaces a previous demo's output, never an arbitrary folder
            raise UserError(f"--overwrite: {out} is not the output of a previous demo (it holds {foreign[0]!r}); "
                            "choose another --out")
        for name in DEMO_OUTPUTS:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    t0 = time.perf_counter()
    budget_s = 60.0 * args.minutes
    stages: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 1)
        return now

    data = out / "data"
    print(f"[1/5] synthesising {args.clips} clips x {args.frames} frames at {args.synth_size} into {data}")
    code = _synthesize(data, args.clips, args.frames, args.synth_size, args.seed)
    if code:
        return code
    t = stage("synth", t0)
    trainer = _trainer(cfg, data, out / "run")
    t = stage("setup", t)
    print("[2/5] J&F of the untrained model on the held-out clips")
    before = trainer.validate()
    print(f"      J&F {before['J&F']:.3f} (J {before['J']:.3f}, F {before['F']:.3f})")
    t = stage("validate_before", t)
    train_s = training_budget(budget_s, t - t0, stages["validate_before"])
    epochs = cfg["train"]["epochs"]
    print(f"[3/5] training demo-cpu: {epochs} epochs ({trainer.total_steps} steps) or {train_s / 60:.1f} min "
          f"(what is left of the {args.minutes:g}-min budget), whichever ends first")
    result = _fit(trainer, max_seconds=train_s)
    t = stage("train", t)
    steps = result["step"]
    epochs_done = steps / trainer.steps_per_epoch
    cut_short = steps < trainer.total_steps
    print("[4/5] J&F after training")
    after = trainer.validate()
    t = stage("validate_after", t)
    clip = (data / "ImageSets" / "2016" / "val.txt").read_text().split()[0]
    seg_out = out / "segment" / clip
    print(f"[5/5] pdnet segment of the held-out clip {clip}: mask PNGs and an overlay video in {seg_out}")
    from .inference import segment_video

    seg = segment_video(result["checkpoint"], data / "JPEGImages" / "480p" / clip, seg_out,
                        overlay=True, device="cpu", progress=False)
    stage("segment", t)
    total_s = time.perf_counter() - t0
    report = {
        "J&F_before": before["J&F"],
        "J&F_after": after["J&F"],
        "before": before,
        "after": after,
        "steps": steps,
        "epochs": round(epochs_done, 2),
        "recipe_steps": trainer.total_steps,
        "stopped_by_time_budget": cut_short,
        "budget_minutes": args.minutes,
        "train_seconds": round(result["seconds"], 1),
        "pairs_per_s": round(result["pairs_per_s"], 2),
        "checkpoint": result["checkpoint"],
        "metrics": result["metrics"],
        "config": str(out / "run" / "config.yaml"),
        "data": str(data),
        "segmented": {"clip": clip, "masks": str(seg_out), "overlay": seg["overlay"], "fps": round(seg["fps"], 1)},
        "stage_seconds": stages,
        "total_seconds": round(total_s, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    why = (f"stopped by the {args.minutes:g}-min budget; the recipe has {trainer.total_steps}"
           if cut_short else "the whole recipe")
    print()
    print(f"J&F on held-out synthetic clips: {before['J&F']:.3f} untrained -> {after['J&F']:.3f} "
          f"after {steps} steps, {epochs_done:.1f} epochs ({why}; {result['seconds'] / 60:.1f} min of training, "
          f"{result['pairs_per_s']:.1f} pairs/s)")
    print(f"demo time:  {total_s / 60:.1f} min (synth {stages['synth']:.0f} s, set-up {stages['setup']:.0f} s, "
          f"J&F {stages['validate_before']:.0f} + "
          f"{stages['validate_after']:.0f} s, training {stages['train']:.0f} s, segment {stages['segment']:.0f} s)")
    print(f"checkpoint: {report['checkpoint']}")
    print(f"metrics:    {report['metrics']} (TensorBoard: {out / 'run' / 'tb'})")
    print(f"segmented:  {clip} -> {seg_out} (masks, overlay.mp4; {seg['fps']:.1f} FPS with decoding and encoding)")
    print(f"report:     {out / 'report.json'}")
    print(f"segment a video with it: pdnet segment VIDEO.mp4 --checkpoint {report['checkpoint']} --out masks/")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_quick(args) if args.quick else run_pipeline(args)


#: what a demo writes in --out: all that --overwrite removes
DEMO_OUTPUTS = ("data", "run", "segment", "report.json")


def _int_at_least(low: int):
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _parts(text: str) -> int:
    value = _int_at_least(1)(text)
    if value > 8:
        raise argparse.ArgumentTypeError(f"expected a number of parts in 1..8, got {value}")
    return value


def _input_size(text: str) -> int:
    value = _int_at_least(32)(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"the input size must be a multiple of 32, got {value}")
    return value


def _synth_size(text: str) -> str:
    """argparse type of --synth-size: pdnet synth's HxW rule, checked before anything runs."""
    from .data.synth.cli import parse_size

    parse_size(text)
    return text


def _positive_float(what: str):
    """argparse type: a finite number > 0 (``what`` names it in the error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {what} (a finite number > 0), got {text!r}")
        return value

    return parse


def add_parser(sub) -> None:
    p = add_command(
        sub, "demo",
        description="Synthesise a small video dataset, measure J&F of the untrained model on its held-out "
        "clips, train demo-cpu, measure J&F again, segment a held-out clip with the trained checkpoint and "
        "write OUT/report.json, all within --minutes of wall time: training ends at the end of the recipe "
        "or when the budget would be exceeded, and the report says which, with the steps reached.",
    )
    p.add_argument("--out", default="demo-out", help="folder for the data, the run and the report")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous demo's output in --out (a folder holding anything else is refused)")
    p.add_argument("--minutes", type=_positive_float("a number of minutes"), default=DEFAULT_MINUTES, metavar="N",
                   help="wall-time budget of the whole demo in minutes, training gets what the other stages "
                   f"leave (default {DEFAULT_MINUTES:g}); more minutes train longer on slow machines, and with "
                   "--set train.epochs=N beyond the recipe's 12 epochs")
    p.add_argument("--clips", type=_int_at_least(2), default=24,
                   help="synthetic clips, at least 2 (train and held-out)")
    p.add_argument("--frames", type=_int_at_least(2), default=8, help="frames per clip, at least 2")
    p.add_argument("--synth-size", type=_synth_size, default="128x128", help="HxW of the synthetic clips")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override demo-cpu values (also with --quick, after its options)")
    p.add_argument("--quick", action="store_true",
                   help="the pipeline in miniature (seconds): two synthetic clips, a few training steps, "
                   "the loss terms and the held-out J&F")
    g = p.add_argument_group("--quick options")
    g.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    g.add_argument("--parts", type=_parts, default=5, help="parts, 1..8")
    g.add_argument("--size", type=_input_size, default=128, help="input size (multiple of 32)")
    g.add_argument("--batch", type=_int_at_least(1), default=2)
    g.add_argument("--steps", type=_int_at_least(0), default=3, help="training steps to run (0: none, only the J&F)")
    g.add_argument("--lr", type=_positive_float("a learning rate"), default=0.01)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.set_defaults(func=run)
