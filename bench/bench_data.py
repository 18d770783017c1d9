"""Data pipeline throughput: augmented (target, reference) pairs per second.

Builds (or reuses) a synthetic 480p dataset with ``pdnet synth`` (480 x 854 frames, the
DAVIS-2016 480p size), then measures

1. decoding one 480p frame: Pillow vs torchvision.io (JPEG), and one mask (PNG);
2. one sample (decode + crop/flip/resize to 480 x 480 + normalise, target and reference)
   in this process, one thread;
3. the DataLoader the trainer uses (``pdnet.data.make_loader``): batch 4, ``--workers``
   worker processes, after a warm-up, in pairs per second.

Usage::

    python bench/bench_data.py [--data DIR] [--workers 2] [--batches 150] [--size 480]

The issue's target: at least 150 pairs/s with 2 workers on a 2-core CPU machine.
Results are appended as one JSON line to bench/results/data_<host>.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdnet.data import build_dataset, make_loader, read_image, read_mask  # noqa: E402
from pdnet.data.synth import synthesize  # noqa: E402


def _best(fn, n: int = 30, repeats: int = 5) -> float:
    """Best-of-``repeats`` mean time of ``fn`` in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def decode_times(jpg: Path, png: Path) -> dict:
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    def pil_jpeg():
        with Image.open(jpg) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)

    def tv_jpeg():
        return decode_jpeg(torch.frombuffer(bytearray(jpg.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def pil_png():
        with Image.open(png) as im:
            return np.array(im)

    def tv_png():
        return decode_png(torch.frombuffer(bytearray(png.read_bytes()), dtype=torch.uint8))

    return {
        "jpeg_pillow_ms": _best(pil_jpeg),
        "jpeg_torchvision_ms": _best(tv_jpeg),
        "png_pillow_ms": _best(pil_png),
        "png_torchvision_ms": _best(tv_png),
        "read_image_ms": _best(lambda: read_image(jpg)),
        "read_mask_ms": _best(lambda: read_mask(png)),
    }


def worker_cpu_ms(ds, batch: int, batches: int = 20) -> float:
    """CPU time (this thread) a worker spends per pair: loading, augmenting and collating
    ``batches`` batches of distinct samples. Unlike wall time, it is not inflated by other
    processes, so ``workers * 1000 / this`` is the rate the loader reaches with a free core
    per worker (the main process only receives batches)."""
    from torch.utils.data import default_collate

    n = min(len(ds) // batch, batches)
    best = float("inf")
    for rep in range(3):
        ds.set_epoch(100 + rep)
        t0 = time.thread_time()
        for b in range(n):
            default_collate([ds[(b * batch + j * 7) % len(ds)] for j in range(batch)])
        best = min(best, (time.thread_time() - t0) / (n * batch))
    return best * 1e3


def loader_rate(ds, workers: int, batch: int, batches: int, warmup: int) -> dict:
    loader = make_loader(ds, batch_size=batch, workers=workers, shuffle=True, seed=0, drop_last=True)
    times = []
    n = 0
    epoch = 0
    while n < warmup + batches:
        ds.set_epoch(epoch)
        it = iter(loader)
        t_prev = time.perf_counter()
        for b in it:
            now = time.perf_counter()
            if n >= warmup:
                times.append(now - t_prev)
            t_prev = now
            n += 1
            if n >= warmup + batches:
                break
        epoch += 1
    total = sum(times)
    return {
        "workers": workers,
        "batch": batch,
        "batches": len(times),
        "pairs_per_s": batch * len(times) / total,
        "median_batch_ms": statistics.median(times) * 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a DAVIS-layout dataset (default: synthesise one in a temporary folder)")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=150, help="timed batches")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--uint8", action="store_true", help='also measure output="uint8" (compact samples)')
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    tmp = None
    if args.data:
        data = Path(args.data)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pdnet-bench-data-")
        data = Path(tmp.name)
        t0 = time.perf_counter()
        synthesize(data, clips=args.clips, frames=args.frames, size=(480, 854), seed=0, val_fraction=0.0, workers=2)
        print(f"synthesised {args.clips} clips x {args.frames} frames at 480x854 in {time.perf_counter() - t0:.1f} s")

    torch.set_num_threads(1)
    ds = build_dataset("davis", data, "train", size=args.size, augment=True)
    clip = ds.clips[0]
    result = {
        "bench": "data",
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "frame_size": list(read_image(clip.frames[0]).shape[1:]),
        "out_size": [args.size, args.size],
        "samples": len(ds),
    }
    result.update(decode_times(clip.frames[1], clip.masks[1]))
    result["sample_ms_1thread"] = _best(lambda: ds[1], n=20)
    result["worker_cpu_ms_per_pair"] = worker_cpu_ms(ds, args.batch)
    result["cpu_bound_pairs_per_s"] = args.workers * 1e3 / result["worker_cpu_ms_per_pair"]
    print(json.dumps(result, indent=1))

    rates = [loader_rate(ds, args.workers, args.batch, args.batches, args.warmup)]
    print(
        f"normalised float32 output: {rates[0]['pairs_per_s']:.1f} pairs/s ({args.workers} workers, batch {args.batch}); "
        f"worker CPU {result['worker_cpu_ms_per_pair']:.1f} ms/pair -> {result['cpu_bound_pairs_per_s']:.0f} pairs/s "
        "with a free core per worker"
    )
    if args.uint8:
        ds8 = build_dataset("davis", data, "train", size=args.size, augment=True, output="uint8")
        r = loader_rate(ds8, args.workers, args.batch, args.batches, args.warmup)
        r["output"] = "uint8"
        r["worker_cpu_ms_per_pair"] = worker_cpu_ms(ds8, args.batch)
        r["cpu_bound_pairs_per_s"] = args.workers * 1e3 / r["worker_cpu_ms_per_pair"]
        rates.append(r)
        print(
            f"uint8 output: {r['pairs_per_s']:.1f} pairs/s; worker CPU {r['worker_cpu_ms_per_pair']:.1f} ms/pair "
            f"-> {r['cpu_bound_pairs_per_s']:.0f} pairs/s with a free core per worker"
        )
    result["loader"] = rates
    result["load_average"] = os.getloadavg()
    if not args.no_save:
        out = ROOT / "bench" / "results" / f"data_{platform.node() or 'host'}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"appended to {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
