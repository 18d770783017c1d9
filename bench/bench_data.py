"""Data pipeline throughput: augmented (target, reference) pairs per second.

Builds (or reuses) a synthetic 480p dataset with ``pdnet synth`` (480 x 854 frames, the
DAVIS-2016 480p size), then measures

1. decoding one 480p frame: Pillow vs torchvision.io (JPEG), and one mask (PNG); and a
   frame + mask as the RGBA buffer the datasets read (``read_rgba``: Pillow decodes the
   JPEG straight into it) against torchvision's decode plus an interleaving copy;
2. one sample (decode + crop/flip/resize to 480 x 480 + normalise, target and reference;
   mean over distinct samples)
   in this process, one thread;
3. the DataLoader the trainer uses (``pdnet.data.make_loader``, its workers' ``malloc``
   keeping freed memory: ``keep_freed_memory=True``): batch 4, ``--workers``
   worker processes, after a warm-up, in pairs per second (wall clock), and the CPU time
   of all loader processes per pair, which other load on the machine barely changes:
   ``cores / that`` estimates the rate on idle cores. For each sample format
   (``--outputs``): "float" (augmented in the workers), "uint8" (the same, compact),
   "raw" (workers decode and draw the crop/flip; ``prepare_batch`` does the pixels on the
   training device, timed separately on the CPU and on CUDA when present).

Part of the gap between in-process sample cost and loader cost is the page faults of
the fresh shared memory each batch travels in (one segment per batch, ``PairBatch``);
the loader rows give the page faults and the CPU time of the workers and of the main
process per pair.

Usage::

    python bench/bench_data.py [--data DIR] [--workers 2] [--batches 150] [--size 480] [--outputs float,uint8,raw]

The target: at least 150 pairs/s with 2 workers on a 2-core CPU machine.
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

from pdnet.data import build_dataset, collate_pairs, make_loader, prepare_batch, read_image, read_mask  # noqa: E402
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


def _over_frames(fn, items, repeats: int = 3) -> float:
    """Best-of-``repeats`` mean CPU time (this thread, ms) of ``fn(item)`` over distinct
    ``items``: repeating one file would measure an allocator pattern (the same large
    buffers freed and allocated again) rather than decoding."""
    for it in items[:3]:
        fn(it)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for it in items:
            fn(it)
        best = min(best, (time.thread_time() - t0) / len(items))
    return best * 1e3


def decode_times(frames, masks) -> dict:
    """Decoding times (ms, mean over the given distinct 480p frames / masks)."""
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    from pdnet.data.augment import pack_rgba
    from pdnet.data.io import read_rgba

    def pil_jpeg(jpg):
        with Image.open(jpg) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)

    def tv_jpeg(jpg):
        return decode_jpeg(torch.frombuffer(bytearray(jpg.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def pil_png(png):
        with Image.open(png) as im:
            return np.array(im)

    def tv_png(png):
        return decode_png(torch.frombuffer(bytearray(png.read_bytes()), dtype=torch.uint8))

    pairs = list(zip(frames, masks, strict=True))
    return {
        # a frame + its mask as the RGBA buffer the datasets augment
        "rgba_read_rgba_ms": _over_frames(lambda fm: read_rgba(*fm), pairs),
        "rgba_torchvision_plus_pack_ms": _over_frames(lambda fm: pack_rgba(tv_jpeg(fm[0]), read_mask(fm[1])), pairs),
        "jpeg_pillow_ms": _over_frames(pil_jpeg, frames),
        "jpeg_torchvision_ms": _over_frames(tv_jpeg, frames),
        "png_pillow_ms": _over_frames(pil_png, masks),
        "png_torchvision_ms": _over_frames(tv_png, masks),
        "read_image_ms": _over_frames(read_image, frames),
        "read_mask_ms": _over_frames(read_mask, masks),
    }


def worker_cpu_ms(ds, batch: int, batches: int = 20) -> float:
    """CPU time (this thread) per pair of loading, augmenting and collating ``batches``
    batches of distinct samples in this process (no inter-process transfer)."""

    n = min(len(ds) // batch, batches)
    best = float("inf")
    for rep in range(3):
        ds.set_epoch(100 + rep)
        t0 = time.thread_time()
        for b in range(n):
            collate_pairs([ds[(b * batch + j * 7) % len(ds)] for j in range(batch)])
        best = min(best, (time.thread_time() - t0) / (n * batch))
    return best * 1e3


def _proc_stat(pid: int):
    """(utime + stime in seconds, minor page faults) of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def _proc_cpu_s(pid: int) -> float:
    return _proc_stat(pid)[0]


def loader_rate(ds, workers: int, batch: int, batches: int, warmup: int) -> dict:
    """Wall-clock pairs/s of the DataLoader, and the CPU time all its processes (main +
    workers) spend per pair. The latter is little affected by other load on the machine,
    so ``cores * 1000 / cpu_ms_per_pair`` estimates the rate on an idle machine."""
    loader = make_loader(ds, batch_size=batch, workers=workers, shuffle=True, seed=0, drop_last=True,
                         keep_freed_memory=True)
    times = []
    n = 0
    epoch = 0
    cpu0 = None
    pids = []
    while n < warmup + batches:
        ds.set_epoch(epoch)
        it = iter(loader)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        t_prev = time.perf_counter()
        for _ in it:
            now = time.perf_counter()
            if n >= warmup:
                times.append(now - t_prev)
            elif n == warmup - 1 and os.path.exists("/proc/self/stat"):
                cpu0 = time.process_time() + sum(_proc_cpu_s(p) for p in pids)
                main0 = _proc_stat(os.getpid())
                workers0 = [_proc_stat(p) for p in pids]
            t_prev = now
            n += 1
            if n >= warmup + batches:
                break
        epoch += 1
    total = sum(times)
    out = {
        "workers": workers,
        "batch": batch,
        "batches": len(times),
        "pairs_per_s": batch * len(times) / total,
        "median_batch_ms": statistics.median(times) * 1e3,
    }
    if cpu0 is not None:
        cpu = time.process_time() + sum(_proc_cpu_s(p) for p in pids) - cpu0
        pairs = batch * len(times)
        main1 = _proc_stat(os.getpid())
        workers1 = [_proc_stat(p) for p in pids]
        out["cpu_ms_per_pair_main"] = (main1[0] - main0[0]) * 1e3 / pairs
        out["cpu_ms_per_pair_workers"] = sum(b[0] - a[0] for a, b in zip(workers0, workers1, strict=True)) * 1e3 / pairs
        out["page_faults_per_pair_main"] = (main1[1] - main0[1]) / pairs
        out["page_faults_per_pair_workers"] = sum(b[1] - a[1] for a, b in zip(workers0, workers1, strict=True)) / pairs
        out["cpu_ms_per_pair_all_processes"] = cpu * 1e3 / pairs
        cores = min(workers, os.cpu_count() or 1)
        out["idle_estimate_pairs_per_s"] = cores * 1e3 / out["cpu_ms_per_pair_all_processes"]
    return out


def _git_head() -> str:
    import subprocess

    try:
        cmd = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


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
    ap.add_argument("--outputs", default="float,uint8,raw", help="sample formats to measure (default: all three)")
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
    # the in-process timings below run with the allocator settings that the loader's
    # workers get with make_loader(keep_freed_memory=True)
    from pdnet.data.datasets import tune_sample_malloc

    tune_sample_malloc()
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
        "load_average_before": os.getloadavg(),
        "command": " ".join(["python"] + sys.argv),
        "git": _git_head(),
    }
    sample_frames = [f for c in ds.clips for f in c.frames[1:6]]
    result.update(decode_times(sample_frames, [m for c in ds.clips for m in c.masks[1:6]]))
    result["sample_ms_1thread"] = _over_frames(lambda i: ds[i], list(range(1, len(ds), 3)))  # distinct samples
    print(json.dumps(result, indent=1))

    rates = []
    for output in args.outputs.split(","):
        d = build_dataset("davis", data, "train", size=args.size, augment=True, output=output)
        r = {"output": output}
        r.update(loader_rate(d, args.workers, args.batch, args.batches, args.warmup))
        r["worker_cpu_ms_per_pair_in_process"] = worker_cpu_ms(d, args.batch)
        line = (
            f"output={output}: {r['pairs_per_s']:.1f} pairs/s ({args.workers} workers, batch {args.batch}); "
            f"CPU of all loader processes {r.get('cpu_ms_per_pair_all_processes', float('nan')):.1f} ms/pair -> "
            f"{r.get('idle_estimate_pairs_per_s', float('nan')):.0f} pairs/s on idle cores "
            f"(workers {r.get('cpu_ms_per_pair_workers', float('nan')):.1f}, "
            f"main {r.get('cpu_ms_per_pair_main', float('nan')):.1f} ms/pair; "
            f"{r.get('page_faults_per_pair_workers', float('nan')):.0f} page faults/pair in workers)"
        )
        if output != "float":
            # the rest of the work, done by prepare_batch in the training process
            batch = collate_pairs([d[i] for i in range(args.batch)])
            r["prepare_batch_cpu_ms_per_pair"] = _best(lambda b=batch: prepare_batch(b, "cpu"), n=5) / args.batch
            line += f"; prepare_batch on the CPU {r['prepare_batch_cpu_ms_per_pair']:.1f} ms/pair"
            if torch.cuda.is_available():
                dev = torch.device("cuda")

                def on_gpu(batch=batch, dev=dev):
                    prepare_batch(batch, dev)
                    torch.cuda.synchronize()

                r["prepare_batch_cuda_ms_per_pair"] = _best(on_gpu, n=5) / args.batch
                line += f", on {torch.cuda.get_device_name()} {r['prepare_batch_cuda_ms_per_pair']:.2f} ms/pair"
        rates.append(r)
        print(line, flush=True)
    result["loader"] = rates
    result["load_average_after"] = os.getloadavg()
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
