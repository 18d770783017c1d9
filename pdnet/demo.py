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

``pdnet demo --quick`` only runs a forward/backward of a small PDNet on one synthetic
pair and prints the named loss terms (seconds). The pair is built from the person mask of scikit-image's astronaut photo shipped in
``pdnet/assets``: a textured person on a textured background (reference frame), and
the same scene with the person moved and the head moved further (target frame, the
imbalanced part motion PDNet is built for). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import math
import time
from importlib import resources
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:
    import torch

#: default wall-time budget of ``pdnet demo`` (minutes), all stages together
DEFAULT_MINUTES = 4.5


def _load_person_mask(size: int) -> "torch.Tensor":
    import numpy as np
    import torch
    from PIL import Image

    with resources.files("pdnet.assets").joinpath("astronaut_mask.png").open("rb") as f:
        m = Image.open(f).convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(m) >= 128).astype(np.float32))  # [H, W]


def synthetic_pair(size: int = 128, batch: int = 2, seed: int = 0):
    """Returns (target, reference, mask_t, mask_r): images Tensor[B, 3, H, W] uint8, masks Tensor[B, 1, H, W]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mask = _load_person_mask(size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    head = (mask > 0) & (yy < size * 0.45)  # the upper part of the silhouette moves on its own
    frames, masks = [], []
    for b in range(batch):
        bg = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.25 * torch.sin(xx / (3 + b) + yy / 7.0)
        fg = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2 + 0.1 * torch.cos(yy / 4.0)
        pair = []
        for shift, head_shift in ((0, 0), (size // 16, size // 10)):
            body = torch.roll(mask * (~head), shifts=shift, dims=1)
            hd = torch.roll(head.float(), shifts=shift + head_shift, dims=1)
            m = (body + hd).clamp(0, 1)
            img = bg * (1 - m) + fg * m
            pair.append(((img.clamp(0, 1) * 255).to(torch.uint8), m[None]))
        frames.append(pair)
    reference = torch.stack([p[0][0] for p in frames])
    target = torch.stack([p[1][0] for p in frames])
    mask_r = torch.stack([p[0][1] for p in frames])
    mask_t = torch.stack([p[1][1] for p in frames])
    return target, reference, mask_t, mask_r


def run_quick(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from . import PDNet, PDNetConfig
    from .losses import PartBasis, SemanticFeatures, video_step_loss
    from .preprocess import normalize

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    cfg = PDNetConfig(backbone=args.backbone, parts=args.parts, input_size=(args.size, args.size))
    model = PDNet(cfg)
    basis = PartBasis(cfg.parts, SemanticFeatures.channels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sem = SemanticFeatures()
    target, reference, mask_t, mask_r = synthetic_pair(args.size, args.batch, args.seed)
    x_t, x_r = normalize(target), normalize(reference)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"PDNet {cfg.backbone}, p={cfg.parts}, input {args.size}x{args.size}, batch {args.batch}")
    print(f"parameters: {n_params / 1e6:.2f} M (+ part basis {basis.weight.numel()})")
    if caught:
        print("semantic-loss extractor: no ImageNet weights available offline, random ResNet-18")
    opt = torch.optim.SGD(list(model.parameters()) + list(basis.parameters()), lr=args.lr, momentum=0.9)
    model.train()
    for step in range(args.steps):
        ts = time.perf_counter()
        out = model.train_outputs(x_t, x_r)
        loss = video_step_loss(out, mask_t, mask_r, sem(x_t), sem(x_r), basis(), cfg.loss_variant)
        opt.zero_grad(set_to_none=True)
        loss["total"].backward()
        opt.step()
        dt = time.perf_counter() - ts
        if step == 0:
            print("loss terms of the first video step:")
            width = max(len(k) for k in loss)
            for k, v in loss.items():
                print(f"  {k:<{width}}  {v.item():.5f}")
        print(f"step {step + 1}/{args.steps}: total {loss['total'].item():.4f}  ({dt * 1000:.0f} ms forward+backward)")
    model.eval()
    with torch.no_grad():
        state = model.encode_reference(x_r)
        logits = model(x_t, state)
        iou = (((logits > 0) & (mask_t > 0.5)).sum() / ((logits > 0) | (mask_t > 0.5)).sum().clamp_min(1)).item()
    print(f"inference with a cached reference state: logits {tuple(logits.shape)}, IoU after {args.steps} steps {iou:.3f}")
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

    from .cli import UserError, main
    from .train import ConfigError, Trainer, TrainError, load_config

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
    try:
        cfg = load_config("demo-cpu", args.set)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    t0 = time.perf_counter()
    budget_s = 60.0 * args.minutes
    stages: Dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - since, 1)
        return now

    data = out / "data"
    print(f"[1/5] synthesising {args.clips} clips x {args.frames} frames at {args.synth_size} into {data}")
    code = main(["synth", str(data), "--clips", str(args.clips), "--frames", str(args.frames),
                 "--size", args.synth_size, "--seed", str(args.seed)])
    if code:
        return code
    t = stage("synth", t0)
    cfg["data"]["video"] = [{"kind": "davis", "root": str(data)}]
    try:
        trainer = Trainer(cfg, out / "run")
    except TrainError as exc:
        raise UserError(str(exc)) from None
    t = stage("setup", t)
    print("[2/5] J&F of the untrained model on the held-out clips")
    before = trainer.validate()
    print(f"      J&F {before['J&F']:.3f} (J {before['J']:.3f}, F {before['F']:.3f})")
    t = stage("validate_before", t)
    train_s = training_budget(budget_s, t - t0, stages["validate_before"])
    epochs = cfg["train"]["epochs"]
    print(f"[3/5] training demo-cpu: {epochs} epochs ({trainer.total_steps} steps) or {train_s / 60:.1f} min "
          f"(what is left of the {args.minutes:g}-min budget), whichever ends first")
    try:
        result = trainer.fit(max_seconds=train_s)
    except TrainError as exc:
        raise UserError(str(exc)) from None
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
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on synthetic data: synth, train demo-cpu, evaluate, segment, report (CPU)",
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
    p.add_argument("--clips", type=_int_at_least(2), default=24, help="synthetic clips, at least 2 (train and held-out)")
    p.add_argument("--frames", type=_int_at_least(2), default=8, help="frames per clip, at least 2")
    p.add_argument("--synth-size", type=_synth_size, default="128x128", help="HxW of the synthetic clips")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override demo-cpu values")
    p.add_argument("--quick", action="store_true",
                   help="only a forward/backward of a small PDNet on one synthetic pair (seconds)")
    g = p.add_argument_group("--quick options")
    g.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    g.add_argument("--parts", type=_parts, default=5, help="parts, 1..8")
    g.add_argument("--size", type=_input_size, default=128, help="input size (multiple of 32)")
    g.add_argument("--batch", type=_int_at_least(1), default=2)
    g.add_argument("--steps", type=_int_at_least(0), default=3, help="training steps to run (0: forward only)")
    g.add_argument("--lr", type=_positive_float("a learning rate"), default=0.01)
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.set_defaults(func=run)
