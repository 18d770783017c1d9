"""Frames per second of PDNet inference: the reference path vs the fast path.

Paths:

* ``reference``: the plain :class:`pdnet.PDNet` in fp32, recomputing the reference frame
  with every target frame, as the release's test script does (``model(img, ref)``);
* ``fast``: :class:`pdnet.inference.VideoSegmenter`: BatchNorm folded, parts batched,
  channels_last, the reference frame encoded once per clip, ``--dtype`` (auto: bf16 on
  CUDA), CUDA graphs on CUDA, the ops' ``auto`` backend (Triton / C++ kernels when built).

Modes:

* ``streaming``: batch 1, one frame per call (a live video);
* ``batched``: ``--batch`` frames per call (offline throughput);
* ``e2e`` (with ``--e2e``): ``pdnet.segment_video`` on a synthetic H.264 clip of
  ``--e2e-frames`` frames of ``--e2e-size``, decoding, resizing, PNG writing and (with
  ``--overlay``) video encoding included.

"Model compute" (streaming / batched) is timed from uint8 frames already on the device at
the model's input size to probabilities on the device (normalisation, network and sigmoid
included; decoding, host transfers and encoding excluded). Each measurement runs
``--warmup`` untimed calls, then ``--iters`` timed calls with a device synchronisation
before and after: ``fps`` = frames / wall time of the timed calls; the per-call
latency (median, p20, p80, min) is measured in a second pass that interleaves the paths and
synchronises after every call; ``fps_best`` = frames / fastest call (the least disturbed
figure on a shared machine).

Usage::

    python bench/bench_fps.py --backbone resnet50 --size 480 --batch 16           # GPU
    python bench/bench_fps.py --backbone resnet18 resnet50 --size 224 --iters 5   # CPU

Every row is appended as one JSON line to bench/results/fps_<device>.jsonl.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pdnet, installed or not: the imports below follow it (E402)

import pdnet  # noqa: E402
from pdnet._device import parse_device  # noqa: E402
from pdnet.inference import VideoSegmenter, VideoWriter, preprocess, segment_video  # noqa: E402
from pdnet.inference.segmenter import parse_dtype  # noqa: E402


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns, device, warmup: int, iters: int):
    """Time each callable of ``fns`` (dict name -> fn).

    Returns {name: (seconds for ``iters`` calls back to back, [per-call seconds])}. The
    per-call times come from a second pass that interleaves the callables (A B A B ...)
    and synchronises after every call, so that a slow phase of a shared machine hits all
    of them alike; their minimum is the least disturbed estimate.
    """
    out = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        out[name] = (time.perf_counter() - t0, [])
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            out[name][1].append(time.perf_counter() - t)
    return out


def quantiles(xs):
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return {"median": statistics.median(xs) * 1e3, "p20": q[1] * 1e3, "p80": q[7] * 1e3, "min": min(xs) * 1e3}


def reference_step(model, frames, ref_frame, size):
    """The release's way: the reference frame goes through the whole network with every target."""
    x = preprocess(frames, size)  # [B, 3, S, S]
    r = preprocess(ref_frame, size).expand_as(x)  # [B, 3, S, S]
    return torch.sigmoid(model(x, r))


def synthetic_clip(path: Path, frames: int, size) -> None:
    """A moving gradient with a moving disc: cheap to make, non-trivial to encode."""
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    writer = VideoWriter(path, 25, (H, W))
    for i in range(frames):
        disc = ((yy - H / 2) ** 2 + (xx - (W / 4 + i * W / (2 * frames))) ** 2) < (H / 4) ** 2
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, np.where(disc, 220, 40)], -1).astype(np.uint8)
        writer.write(img)
    writer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", nargs="+", default=["resnet50"], choices=list(pdnet.model.BACKBONE_CHANNELS))
    ap.add_argument("--size", type=int, default=480, help="model input size (square, multiple of 32)")
    ap.add_argument("--batch", type=int, default=16, help="batch of the batched mode")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="fast path precision (auto: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--modes", nargs="+", default=["streaming", "batched"], choices=["streaming", "batched"])
    ap.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=["reference", "fast"])
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--e2e", action="store_true", help="also time segment_video on a synthetic clip")
    ap.add_argument("--e2e-frames", type=int, default=120)
    ap.add_argument("--e2e-size", default="480x854", help="HxW of the synthetic clip's frames")
    ap.add_argument("--e2e-batch", type=int, default=None, help="batch of the e2e run (default: --batch)")
    ap.add_argument("--overlay", action="store_true", help="e2e: also encode the overlay video")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    size = (args.size, args.size)
    dev_name = device_name(device)
    common = {
        "bench": "fps",
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": dev_name,
        "torch": torch.__version__,
        "size": args.size,
        "ops_backends": pdnet.ops.available_backends(device.type),
    }
    print(f"device: {dev_name}; torch {torch.__version__}; input {args.size}x{args.size}")
    rows = []

    def record(row):
        row = {**common, **row}
        rows.append(row)
        lat = row.get("latency_ms")
        lat_s = (f"  latency median {lat['median']:.2f} ms (p20 {lat['p20']:.2f}, p80 {lat['p80']:.2f}, "
                 f"min {lat['min']:.2f})" if lat else "")
        print(f"  {row['backbone']:<9} {row['path']:<9} {row['mode']:<9} batch {row['batch']:<3} "
              f"{row['precision']:<8} io={str(row['includes_io']).lower():<5} {row['fps']:9.2f} FPS{lat_s}")

    g = torch.Generator().manual_seed(0)
    for backbone in args.backbone:
        torch.manual_seed(0)
        model = pdnet.PDNet(pdnet.PDNetConfig(backbone=backbone, input_size=size)).eval()
        seg = None
        if "fast" in args.paths or args.e2e:
            seg = VideoSegmenter(model, device=device, dtype=dtype, fast=True,
                                 channels_last=not args.no_channels_last,
                                 cuda_graphs=False if args.no_cuda_graphs else None)
        ref_model = model.to(device) if "reference" in args.paths else None
        for mode in args.modes:
            B = 1 if mode == "streaming" else args.batch
            frames = torch.randint(0, 256, (B, 3, *size), generator=g, dtype=torch.uint8).to(device)
            first = frames[:1].clone()
            fns, extras = {}, {}
            with torch.inference_mode():
                for path in args.paths:
                    if path == "reference":
                        fns[path] = functools.partial(reference_step, ref_model, frames, first, size)
                        extras[path] = {"precision": "float32", "channels_last": False, "cuda_graphs": False,
                                        "reference_cached": False}
                    else:
                        state = seg.encode_reference(first)
                        fns[path] = functools.partial(seg.predict, frames, state)
                        extras[path] = {"precision": str(seg.dtype).replace("torch.", ""),
                                        "channels_last": seg.channels_last, "cuda_graphs": seg.cuda_graphs,
                                        "reference_cached": True}
                timings = measure(fns, device, args.warmup, args.iters)
            for path, (total, lat) in timings.items():
                record({"backbone": backbone, "path": path, "mode": mode, "batch": B, "includes_io": False,
                        "iters": args.iters, "warmup": args.warmup, "fps": B * args.iters / total,
                        "fps_best": B / min(lat), "latency_ms": quantiles(lat), **extras[path]})
        if args.e2e:
            eh, ew = (int(s) for s in args.e2e_size.lower().split("x"))
            eb = args.e2e_batch or args.batch
            with tempfile.TemporaryDirectory() as tmp:
                clip = Path(tmp) / "clip.mp4"
                synthetic_clip(clip, args.e2e_frames, (eh, ew))
                segment_video(seg, clip, Path(tmp) / "warm", batch_size=eb, progress=False, overlay=args.overlay)
                res = segment_video(seg, clip, Path(tmp) / "out", batch_size=eb, progress=False, overlay=args.overlay)
            record({"backbone": backbone, "path": "fast", "mode": "e2e", "batch": eb, "includes_io": True,
                    "io": f"H.264 decode {eh}x{ew}, resize, mask PNG per frame"
                          + (", overlay H.264 encode" if args.overlay else ""),
                    "iters": res["frames"], "fps": res["fps"], "precision": str(seg.dtype).replace("torch.", ""),
                    "channels_last": seg.channels_last, "cuda_graphs": seg.cuda_graphs, "reference_cached": True})
        del model, seg, ref_model

    # fast / reference ratios
    for r in rows:
        if r["path"] == "fast" and not r["includes_io"]:
            base = [q for q in rows if q["path"] == "reference" and q["backbone"] == r["backbone"]
                    and q["mode"] == r["mode"]]
            if base:
                r["speedup_vs_reference"] = r["fps"] / base[0]["fps"]
                r["speedup_best_vs_reference"] = r["fps_best"] / base[0]["fps_best"]
                print(f"  {r['backbone']} {r['mode']}: fast/reference = {r['speedup_vs_reference']:.2f}x "
                      f"(throughput), {r['speedup_best_vs_reference']:.2f}x (best call of each)")
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", (dev_name if device.type == "cuda" else "cpu").lower()).strip("-")
        path = out / f"fps_{slug}.jsonl"
        with open(path, "a") as f:
            for r in rows:
                command = " ".join(["bench/bench_fps.py", *(argv if argv is not None else sys.argv[1:])])
                f.write(json.dumps({**r, "command": command}) + "\n")
        print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
