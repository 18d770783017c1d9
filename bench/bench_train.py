"""Training throughput and peak memory: the fused path against the reference path.

Both paths train the same model on the same synthetic batches on the same device, side
by side in one run:

* reference: ops backend "reference", the release's dense semantic loss, fp32,
  contiguous (NCHW) tensors;
* fused: ops backend "auto" (Triton / C++ kernels where built), the factored semantic
  loss (no [B, 512, H, W] tensors), bf16 autocast on GPUs (fp32 on CPUs), channels_last.

Each path runs ``--warmup`` then ``--steps`` video steps (the expensive kind; image steps
are a subset of their work) through :class:`pdnet.train.Trainer.train_step`; pairs/s is
steps * batch / time (synchronised). Peak memory: ``torch.cuda.max_memory_allocated``
during the timed steps on GPUs; on CPUs each path runs in its own process and the
process's peak resident set (``ru_maxrss``: model, optimiser and activations) is
reported, so the two figures compare like with like. ``--keep-freed-memory`` runs both
paths with ``train.keep_freed_memory=true`` (glibc keeps freed memory instead of
page-faulting large tensors afresh each step; off by default, as in the trainer); rows
and file name record it. Results: a JSON file under bench/results/.

    python bench/bench_train.py --device cuda --size 480 --batch 4 --backbone resnet50
    python bench/bench_train.py --device cpu --size 128 --batch 2 --backbone resnet18 [--keep-freed-memory]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._meta import git_commit  # noqa: E402


def make_data(root: Path, size: int) -> None:
    from pdnet.cli import main

    if not (root / "ImageSets").exists():
        main(["synth", str(root), "--clips", "4", "--frames", "6", "--size", f"{size}x{size}", "--seed", "0"])


def run_path(name: str, data: Path, out: Path, args, sets) -> dict:
    from pdnet.train import Trainer, load_config

    cfg = load_config(None, [
        f"model.backbone={args.backbone}", "model.imagenet=null", f"data.size={args.size}", "data.workers=0",
        f"train.batch_size={args.batch}", "train.semantic_features=null", "log.progress=false",
        "log.tensorboard=false", "log.val_every=null",
        f"train.keep_freed_memory={'true' if args.keep_freed_memory else 'false'}",
    ] + sets)
    cfg["data"]["video"] = [{"kind": "davis", "root": str(data)}]
    trainer = Trainer(cfg, out / name, device=args.device)
    trainer.module.train()
    batch = trainer.video.next()
    dev = trainer.device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(args.warmup):
        trainer.train_step(batch, image=False)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step(batch, image=False)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    row = {
        "path": name,
        "settings": sets,
        "median_step_s": med,
        "p20_step_s": times[int(0.2 * (len(times) - 1))],
        "p80_step_s": times[int(0.8 * (len(times) - 1))],
        "pairs_per_s": args.batch / med,
        "keeps_freed_memory": trainer.keeps_freed_memory,  # train.keep_freed_memory took effect
    }
    if dev.type == "cuda":
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(dev) - base
    else:
        row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # this process only
    del trainer
    return row


def run_path_in_subprocess(name: str, work: Path, args) -> dict:
    """One path in a fresh process (CPU: its own peak RSS); returns its row."""
    cmd = [sys.executable, __file__, "--one-path", name, "--work", str(work), "--device", args.device,
           "--backbone", args.backbone, "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.keep_freed_memory:
        cmd.append("--keep-freed-memory")
    out = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="train.keep_freed_memory=true for both paths (glibc keeps freed memory; default: off)")
    ap.add_argument("--one-path", choices=["fused", "reference"], help=argparse.SUPPRESS)  # internal
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import tempfile

    from pdnet import ops

    gpu = args.device.startswith("cuda")
    paths = {
        "reference": ["model.ops_backend=reference", "train.semantic_impl=dense", "train.amp=off",
                      "train.channels_last=false"],
        "fused": ["model.ops_backend=auto", "train.semantic_impl=factored", f"train.amp={'auto' if gpu else 'off'}",
                  f"train.channels_last={'true' if gpu else 'false'}"],
    }
    if args.one_path:
        work = Path(args.work)
        print(json.dumps(run_path(args.one_path, work / "data", work, args, paths[args.one_path])))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    make_data(work / "data", args.size)
    rows = []
    for name in ("fused", "reference"):
        if gpu:
            row = run_path(name, work / "data", work, args, paths[name])
        else:
            row = run_path_in_subprocess(name, work, args)
        rows.append(row)
        print(json.dumps(row))
    ref, fused = {r["path"]: r for r in rows}["reference"], {r["path"]: r for r in rows}["fused"]
    summary = {"speedup": fused["pairs_per_s"] / ref["pairs_per_s"]}
    key = "peak_mem_bytes" if gpu else "peak_rss_bytes"
    summary["memory_ratio"] = fused[key] / max(ref[key], 1)  # fused / reference: the target is <= 0.5 on GPUs
    result = {
        "bench": "train",
        "device": torch.cuda.get_device_name(args.device) if gpu else platform.processor() or platform.machine(),
        "device_type": "cuda" if gpu else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "backends_available": ops.available_backends(),
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "keep_freed_memory": args.keep_freed_memory,
        "rows": rows,
        "summary": summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if gpu else "cpu"
    kept = "_kept" if args.keep_freed_memory else ""
    path = out / f"train_{tag}_{args.backbone}_{args.size}_b{args.batch}{kept}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary), "->", path)
    return 0


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
