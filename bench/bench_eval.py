"""DAVIS J&F evaluation speed: pdnet's engines vs the per-frame NumPy/OpenCV toolkit path.

All compute, for every frame of a sequence, J and the boundary F of the DAVIS protocol,
then the per-sequence statistics; the per-frame results of every engine are compared
with the baseline's (``identical`` in the output: exact equality of every J and F).

* baseline ``cv2`` (default): :mod:`pdnet.evaluation.reference`, the per-frame
  transcription of the DAVIS toolkit that a user would write from it: per frame
  ``db_eval_iou``, then ``f_measure``: ``seg2bmap`` of each mask in NumPy and
  ``cv2.dilate`` with the uint8 disk of radius ceil(0.008 * diagonal), as the toolkit
  does; then ``db_statistics``. ``--baseline scipy`` uses ``scipy.ndimage``'s dilation
  instead (a NumPy/SciPy-only implementation, much slower).
* ``cpp``: :func:`pdnet.evaluation.evaluate.score_sequence` with the fused CPU kernel of
  the compiled extension (``torch.ops.pdnet.eval_frame_counts``), frames split among
  torch's threads;
* ``torch``: the same with the eager torch engine (bit-packed tensors, the CUDA path;
  one thread on the CPU). pdnet's engines also compute the flicker, the baseline not.

Data: a synthetic 480p portrait clip: the person mask of scikit-image's astronaut photo
(``pdnet/assets``) moving and changing scale, and a prediction that is the ground truth
shifted by a few pixels with blobs added and removed; a few frames have an empty
prediction. Inputs are boolean (T, H, W) arrays already in memory (PNG decoding is not
timed).

Timing: ``--repeats`` rounds; each round times the baseline and then every engine, one
after the other, so that a load from other processes on a shared machine hits them
alike. Reported per frame: the median (and best) wall time and process CPU time
(``time.process_time``: all threads of the process; with one thread it is robust to
other processes), and the speed-up as the ratio of the medians. ``--threads`` sets
OpenCV's and torch's thread counts (default 1: like against like).

Usage::

    python bench/bench_eval.py                        # 854x480, 60 frames, CPU, 1 thread
    python bench/bench_eval.py --threads 2
    python bench/bench_eval.py --device cuda          # on a GPU: the torch engine on CUDA

Every run appends one JSON line per device to bench/results/eval_<cpu|cuda>.jsonl (``--out``
names another folder): date,
device, torch version, git commit, threads, ms/frame of the baseline and of each
engine, the speed-ups and whether the results are identical.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pdnet, installed or not: the imports below follow it (E402)

from bench._meta import git_commit  # noqa: E402
from pdnet.evaluation import metrics  # noqa: E402
from pdnet.evaluation import reference as ref  # noqa: E402
from pdnet.evaluation.evaluate import score_sequence  # noqa: E402


@functools.cache
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


def timed(fn, cuda: bool = False):
    """(wall s, process CPU s, result) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


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


def summary(walls, cpus, frames: int) -> dict:
    """Per-frame milliseconds: median and best of wall and CPU times."""
    ms = 1e3 / frames
    return {"wall": statistics.median(walls) * ms, "cpu": statistics.median(cpus) * ms,
            "wall_best": min(walls) * ms, "cpu_best": min(cpus) * ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="854x480", help="WxH (default 854x480)")
    ap.add_argument("--baseline", choices=("cv2", "scipy"), default=None,
                    help="baseline dilation (default: cv2 when installed, else scipy)")
    ap.add_argument("--baseline-frames", type=int, default=None,
                    help="frames timed for the baseline (default: all for cv2, 12 for scipy); per frame figures")
    ap.add_argument("--engines", nargs="+", choices=("cpp", "torch"), default=None,
                    help="pdnet engines on the CPU (default: cpp when built, and torch)")
    ap.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda (cuda: the torch engine)")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=7, help="rounds (default 7); medians are reported")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of eval_<cpu|cuda>.jsonl")
    ap.add_argument("--no-save", action="store_true", help="do not append to --out")
    args = ap.parse_args(argv)

    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
        have_cv2 = True
    except ImportError:
        have_cv2 = False
    base_name = args.baseline or ("cv2" if have_cv2 else "scipy")
    if base_name == "cv2" and not have_cv2:
        print("OpenCV is not installed: pip install opencv-python-headless (or use --baseline scipy)")
        return 2
    cpp_reason = metrics.compiled_counts_reason()
    engines = args.engines or (["torch"] if cpp_reason else ["cpp", "torch"])
    if "cpp" in engines and cpp_reason:
        print(f"engine cpp: {cpp_reason}")
        return 2

    pred, gt = synthetic_clip(args.frames, h, w)
    nb = args.baseline_frames or (args.frames if base_name == "cv2" else min(12, args.frames))
    nb = min(nb, args.frames)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"clip: {args.frames} frames of {w}x{h}, threads {args.threads}, {cpu_name()}, torch {torch.__version__}, "
          f"load average {load0}")

    runs = []  # (device, engine label, backend)
    for dev in args.device:
        if dev.startswith("cuda") and not torch.cuda.is_available():
            print(f"{dev}: not available, skipped")
            continue
        if dev == "cpu":
            runs += [(dev, e, e) for e in engines]
        else:
            runs.append((dev, "torch", "torch"))
    inputs = {}
    for dev, _, backend in runs:
        p, g = torch.from_numpy(pred), torch.from_numpy(gt)
        if dev != "cpu":  # inputs already on the device, as from a model
            p, g = p.to(dev), g.to(dev)
        inputs[dev] = (p, g)
        score_sequence("warmup", p[:4], g[:4], dev, backend=backend)

    times = {("base", None): ([], [])}
    times.update({(dev, label): ([], []) for dev, label, _ in runs})
    results = {}
    for _ in range(args.repeats):  # interleaved rounds
        wall, cpu, base = timed(lambda: baseline(pred[:nb], gt[:nb], base_name))
        times[("base", None)][0].append(wall)
        times[("base", None)][1].append(cpu)
        for dev, label, backend in runs:
            p, g = inputs[dev]
            wall, cpu, res = timed(functools.partial(score_sequence, "clip", p, g, dev, backend=backend), dev != "cpu")
            times[(dev, label)][0].append(wall)
            times[(dev, label)][1].append(cpu)
            results[(dev, label)] = res
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    j_base, f_base = base[0], base[1]
    b = summary(*times[("base", None)], nb)
    print(f"baseline {base_name} per-frame NumPy: {b['wall']:8.3f} ms/frame wall, {b['cpu']:8.3f} ms/frame CPU "
          f"(medians of {args.repeats}, {nb} frames)")
    rows = {}
    all_identical = True
    for dev, label, _ in runs:
        res = results[(dev, label)]
        identical = bool(np.array_equal(res.j_frames[:nb], j_base) and np.array_equal(res.f_frames[:nb], f_base))
        all_identical &= identical
        e = summary(*times[(dev, label)], args.frames)
        speed = {"wall": b["wall"] / e["wall"], "cpu": b["cpu"] / e["cpu"] if dev == "cpu" else None}
        line = (f"{label:5s} {dev:5s}: {e['wall']:8.3f} ms/frame wall, {e['cpu']:8.3f} ms/frame CPU | "
                f"vs {base_name}: {speed['wall']:5.1f}x wall")
        if speed["cpu"] is not None:
            line += f", {speed['cpu']:5.1f}x CPU"
        print(line + ("" if identical else "  RESULTS DIFFER"))
        kind = dev.split(":")[0]
        row = rows.setdefault(kind, {
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "kind": kind,
            "device": torch.cuda.get_device_name() if kind == "cuda" else cpu_name(),
            "torch": torch.__version__, "commit": git_commit(default=None), "frames": args.frames, "size": f"{w}x{h}",
            "threads": args.threads, "repeats": args.repeats, "load_average": [load0, load1],
            "baseline": base_name, "baseline_frames": nb,
            "ms_per_frame": {f"baseline_{base_name}": b}, "speedup": {}, "identical": True,
            "J&F": (res.J.mean + res.F.mean) / 2,
        })
        row["ms_per_frame"][label] = e
        row["speedup"][label] = speed
        row["identical"] = row["identical"] and identical
    if all_identical:
        print("results identical to the per-frame baseline (J and F of every frame)")
    else:
        print("RESULTS DIFFER from the per-frame baseline")
    if rows and not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for kind, r in rows.items():
            with open(out / f"eval_{kind}.jsonl", "a") as fh:
                fh.write(json.dumps(r) + "\n")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
