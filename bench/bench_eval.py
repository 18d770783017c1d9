"""DAVIS J&F evaluation speed: the vectorised torch engine vs the per-frame NumPy baseline.

Both compute, for every frame of a sequence, J and the boundary F of the DAVIS protocol,
then the per-sequence statistics; the results are checked to be identical before any
timing is reported.

* ``baseline``: :mod:`pdnet.evaluation.reference`, a per-frame NumPy transcription of the
  DAVIS toolkit (``db_eval_iou`` + ``f_measure`` + ``db_statistics``): boundary dilation
  by OpenCV's ``cv2.dilate`` as in the toolkit (``--baseline cv2``), or by
  ``scipy.ndimage.binary_dilation`` (``--baseline scipy``, a NumPy/SciPy-only
  implementation);
* ``torch``: :func:`pdnet.evaluation.evaluate.score_sequence` (bit-packed masks, all
  frames of a chunk at once; flicker included, which the baseline does not compute).

Data: a synthetic 480p portrait clip: the person mask of scikit-image's astronaut photo
(``pdnet/assets``) moving and changing scale, and a prediction that is the ground truth
shifted by a few pixels with blobs added and removed; a few frames have an empty
prediction. Inputs are boolean (T, H, W) arrays already in memory (PNG decoding is not
timed).

Timing: ``--repeats`` runs each; reported are the best wall time and the best process
CPU time (the CPU time is robust to other processes on a shared machine).
``--threads`` sets OpenCV's thread count (default 1: like against like; the torch engine
runs its CPU work on one thread whatever torch's setting, see ``frame_counts``).

Usage::

    python bench/bench_eval.py                        # 854x480, 60 frames, CPU, 1 thread
    python bench/bench_eval.py --threads 2 --device cpu cuda

Every row is appended as one JSON line to bench/results/eval_<device>.jsonl.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdnet.evaluation import reference as ref  # noqa: E402
from pdnet.evaluation.evaluate import score_sequence  # noqa: E402


@functools.lru_cache(maxsize=None)
def person_mask(height: int) -> np.ndarray:
    from importlib import resources

    from PIL import Image

    with resources.files("pdnet.assets").joinpath("astronaut_mask.png").open("rb") as f:
        m = Image.open(f).convert("L")
        return np.asarray(m.resize((height, height), Image.NEAREST)) >= 128


def synthetic_clip(frames: int, height: int, width: int, seed: int = 0):
    """(pred, gt): bool (T, H, W) each, a moving portrait and a perturbed prediction."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((frames, height, width), bool)
    yy, xx = np.mgrid[:height, :width]
    for t in range(frames):
        s = int(height * (0.8 + 0.2 * np.sin(t / 9)))
        person = person_mask(s)
        x0 = int((width - s) * (0.5 + 0.4 * np.sin(t / 13)))
        gt[t, height - s :, x0 : x0 + s] = person[:, : width - x0]
    pred = np.zeros_like(gt)
    for t in range(frames):
        dy, dx = rng.integers(-3, 4, size=2)
        pred[t] = np.roll(gt[t], (dy, dx), axis=(0, 1))
        for _ in range(rng.integers(0, 4)):
            cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, 25)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            pred[t] = pred[t] | blob if rng.random() < 0.5 else pred[t] & ~blob
    pred[rng.choice(frames, size=max(1, frames // 30), replace=False)] = False
    return pred, gt


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_of(fn, repeats: int):
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), out


def baseline(pred, gt, dilation: str):
    """Per-frame toolkit transcription; ``dilation`` forces cv2 or scipy."""
    if dilation == "scipy":
        saved = sys.modules.get("cv2")
        sys.modules["cv2"] = None  # makes ``import cv2`` fail inside reference.dilate
        try:
            j, f = ref.evaluate_sequence(pred, gt)
        finally:
            if saved is None:
                del sys.modules["cv2"]
            else:
                sys.modules["cv2"] = saved
    else:
        j, f = ref.evaluate_sequence(pred, gt)
    return j, f, ref.db_statistics(j), ref.db_statistics(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="854x480", help="WxH (default 854x480)")
    ap.add_argument("--baseline", choices=("cv2", "scipy"), nargs="+", default=None,
                    help="baselines (default: cv2 when installed, and scipy)")
    ap.add_argument("--baseline-frames", type=int, default=None,
                    help="frames timed for the baseline (default: all for cv2, 12 for scipy); per frame figures")
    ap.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV (and torch) threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results/")
    args = ap.parse_args(argv)

    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
        have_cv2 = True
    except ImportError:
        have_cv2 = False
    baselines = args.baseline or (["cv2", "scipy"] if have_cv2 else ["scipy"])
    if "cv2" in baselines and not have_cv2:
        print("OpenCV is not installed: pip install opencv-python-headless (or use --baseline scipy)")
        return 2

    pred, gt = synthetic_clip(args.frames, h, w)
    print(f"clip: {args.frames} frames of {w}x{h}, threads {args.threads}, "
          f"{cpu_name()}, torch {torch.__version__}")

    rows = []
    base_ms = {}
    for name in baselines:
        n = args.baseline_frames or (args.frames if name == "cv2" else min(12, args.frames))
        reps = args.repeats if name == "cv2" else max(1, min(args.repeats, 2))
        wall, cpu, (j, f, js, fs) = best_of(lambda: baseline(pred[:n], gt[:n], name), reps)
        base_ms[name] = (wall * 1e3 / n, cpu * 1e3 / n, j, f)
        print(f"baseline {name:5s} per-frame NumPy: {wall * 1e3 / n:8.3f} ms/frame wall, {cpu * 1e3 / n:8.3f} ms/frame CPU  ({n} frames)")

    for dev in args.device:
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"{dev}: not available, skipped")
            continue
        p, g = torch.from_numpy(pred), torch.from_numpy(gt)
        if dev != "cpu":  # inputs already on the device, as from a model
            p, g = p.to(dev), g.to(dev)
        score_sequence("warmup", p[:4], g[:4], dev)
        wall, cpu, res = best_of(lambda: score_sequence("clip", p, g, dev), args.repeats)
        ms_wall, ms_cpu = wall * 1e3 / args.frames, cpu * 1e3 / args.frames
        for name, (bw, bc, j, f) in base_ms.items():
            n = len(j)
            assert np.array_equal(res.j_frames[:n], j) and np.array_equal(res.f_frames[:n], f), "results differ"
        line = f"torch {dev:5s} vectorised:        {ms_wall:8.3f} ms/frame wall, {ms_cpu:8.3f} ms/frame CPU"
        speed = {}
        for name, (bw, bc, _, _) in base_ms.items():
            speed[name] = {"wall": bw / ms_wall, "cpu": bc / ms_cpu if dev == "cpu" else None}
            line += f" | vs {name}: {bw / ms_wall:5.1f}x wall" + (f", {bc / ms_cpu:5.1f}x CPU" if dev == "cpu" else "")
        print(line)
        rows.append({
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "kind": dev.split(":")[0],
            "device": torch.cuda.get_device_name() if dev != "cpu" else cpu_name(), "torch": torch.__version__,
            "frames": args.frames, "size": f"{w}x{h}", "threads": args.threads,
            "torch_ms_per_frame": {"wall": ms_wall, "cpu": ms_cpu},
            "baseline_ms_per_frame": {k: {"wall": v[0], "cpu": v[1]} for k, v in base_ms.items()},
            "speedup": speed, "identical": True, "J&F": (res.J.mean + res.F.mean) / 2,
        })
    print("results identical to the per-frame baseline (J and F of every frame)")
    if rows and not args.no_save:
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        for r in rows:
            with open(out / f"eval_{r['kind']}.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
