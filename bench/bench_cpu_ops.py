"""The C++/CUDA extension's kernels (backend "cpp") against the reference ops, side by side.

Each case runs the public op (``pdnet.ops.<op>(..., backend=...)``) in three modes:

* ``fwd``: the forward alone, under ``torch.no_grad()``;
* ``grad``: forward + ``torch.autograd.grad`` of a fixed random cotangent with respect to
  every input that needs a gradient: what the op costs inside a model, where its inputs
  are activations and their gradients go on to the ops that made them;
* ``full``: forward + ``.backward()`` into leaf tensors' ``.grad``, so autograd's leaf
  accumulation is counted as well (it copies a broadcast gradient, and one of two
  gradients that are the same tensor, for both backends alike).

Backends are measured in alternation within one run,
repetition by repetition, so that both see the same machine load; the table gives the
median and p20/p80 wall time in ms and the ratio reference / cpp (the speed-up).

Shapes are the model's at 480 x 480 input:

* ``part_attention``: B=2, p=5, Nq=Nk=900 (30 x 30 tokens), d=32, scale 1.0;
* ``part_masks`` / ``part_masks_gt`` and ``area_variance``: (2, 5, 480, 480), as the part
  losses run them at the input size;
* ``assemble_parts``: C=64 at the IPDA grid (30 x 30) as the model runs it, and at the
  decoder grid (120 x 120) for a memory-bound size (C=64 at 480 x 480 would need 0.6 GB
  per tensor).

Usage::

    python bench/bench_cpu_ops.py                     # CPU, 2 threads (CI's machine)
    python bench/bench_cpu_ops.py --threads 1 --reps 30
    python bench/bench_cpu_ops.py --allocator steady  # freed memory kept: no page faults
    python bench/bench_cpu_ops.py --device cuda       # CUDA: reference vs cpp vs triton

Targets (issue 6): on 2 CPU cores, every ratio reference / cpp at least 2 (the README's
C++ section gives the memory bound of the ops that stay below). On CUDA,
timings use CUDA events after a synchronised warm-up and include ``triton`` when that
backend is available. Every row is appended as one JSON line to
``bench/results/cpp_ops_<device>.jsonl``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdnet import ops  # noqa: E402


def _cases(device: torch.device, dtype: torch.dtype):
    """(name, make) pairs; make() returns (inputs requiring grad, fn(backend) -> output)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, grad=True):
        t = torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    def rand(*shape, grad=True):
        t = torch.rand(*shape, generator=g).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    def attention():
        q, k, v = randn(2, 5, 900, 32), randn(2, 5, 900, 32), randn(2, 5, 900, 32)
        return (q, k, v), lambda b: ops.part_attention(q, k, v, 1.0, backend=b)

    def attention_masked():
        q, k, v = randn(2, 5, 900, 32), randn(2, 5, 900, 32), randn(2, 5, 900, 32)
        m = randn(2, 5, 900)
        return (q, k, v, m), lambda b: ops.part_attention(q, k, v, 1.0, m, backend=b)

    def masks():
        d, s = randn(2, 5, 480, 480), randn(2, 1, 480, 480)
        return (d, s), lambda b: ops.part_masks(d, s, backend=b)

    def masks_gt():
        d, gt = randn(2, 5, 480, 480), rand(2, 1, 480, 480, grad=False)
        return (d,), lambda b: ops.part_masks_gt(d, gt, backend=b)

    def assemble(hw):
        def make():
            p, y, r = randn(2, 5, 64, hw, hw), randn(2, 5, 64, hw, hw), rand(2, 5, hw, hw)
            return (p, y, r), lambda b: ops.assemble_parts(p, y, r, backend=b)

        return make

    def area():
        x = rand(2, 5, 480, 480)
        return (x,), lambda b: ops.area_variance(x, backend=b)

    return [
        ("part_attention B2 p5 N900 d32", attention),
        ("part_attention +key_mask", attention_masked),
        ("part_masks 2x5x480x480", masks),
        ("part_masks_gt 2x5x480x480", masks_gt),
        ("assemble_parts C64 30x30", assemble(30)),
        ("assemble_parts C64 120x120", assemble(120)),
        ("area_variance 2x5x480x480", area),
    ]


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def _measure(backends, make, mode: str, reps: int, warmup: int, timer: _Timer):
    inputs, fn = make()
    cot = None
    runs = {}
    for b in backends:
        if mode == "fwd":
            def run(b=b):
                with torch.no_grad():
                    fn(b)
        elif mode == "grad":
            def run(b=b):
                nonlocal cot
                out = fn(b)
                if cot is None:
                    cot = torch.randn_like(out)
                torch.autograd.grad(out, [t for t in inputs if t.requires_grad], cot)
        else:
            def run(b=b):
                nonlocal cot
                out = fn(b)
                if cot is None:
                    cot = torch.randn_like(out)
                out.backward(cot)
                for t in inputs:
                    t.grad = None
        runs[b] = run
    for _ in range(warmup):
        for b in backends:
            runs[b]()
    if timer.cuda:
        torch.cuda.synchronize()
    times = {b: [] for b in backends}
    for _ in range(reps):
        for b in backends:  # alternate, so that every backend sees the same load
            times[b].append(timer(runs[b]))
    return times


def _stats(ts):
    ts = sorted(ts)
    q = statistics.quantiles(ts, n=5) if len(ts) >= 5 else [ts[0]] * 4
    return statistics.median(ts), q[0], q[3]


def _loadavg():
    """1-minute load average (other work on the machine skews both columns), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of case names to run")
    ap.add_argument("--no-save", action="store_true", help="do not append to bench/results")
    ap.add_argument(
        "--allocator", default="glibc", choices=["glibc", "steady"],
        help="glibc: the C allocator as every process gets it (large blocks are mmapped and "
        "page-faulted afresh on each allocation); steady: freed blocks are kept for reuse "
        "(pdnet._malloc.keep_freed_memory without mmap), which takes the page faults out "
        "of both columns and leaves the kernels' own work",
    )
    args = ap.parse_args(argv)
    if args.allocator == "steady":
        from pdnet._malloc import keep_freed_memory

        if not keep_freed_memory(trim_threshold=(1 << 31) - 1, use_mmap=False):
            print("--allocator steady needs glibc", file=sys.stderr)
            return 2

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    available = ops.available_backends(device.type)
    if "cpp" not in available:
        print(f"the cpp backend is not available on {device.type} (available: {available})", file=sys.stderr)
        return 2
    backends = ["reference", "cpp"] + (["triton"] if device.type == "cuda" and "triton" in available else [])
    from pdnet.ops import _cpp_backend

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()} x{args.threads} threads, "
        f"cpp ISA {_cpp_backend.cpu_isa()}"
    )
    load_before = _loadavg()
    print(
        f"# device: {dev_name}; dtype {args.dtype}; torch {torch.__version__}; reps {args.reps}; "
        f"allocator {args.allocator}; load average {load_before}"
    )
    header = f"{'case':32s} {'mode':4s} " + " ".join(f"{b + ' ms (p20-p80)':>26s}" for b in backends)
    header += "  ref/cpp" + ("  triton/cpp" if "triton" in backends else "")
    print(header)
    timer = _Timer(device)
    rows = []
    for name, make in _cases(device, dtype):
        if args.only and not any(s in name for s in args.only):
            continue
        modes = ["fwd", "grad", "full"]
        for mode in modes:
            times = _measure(backends, make, mode, args.reps, args.warmup, timer)
            st = {b: _stats(times[b]) for b in backends}
            ratio = st["reference"][0] / st["cpp"][0]
            line = f"{name:32s} {mode:4s} " + " ".join(
                f"{st[b][0]:10.2f} ({st[b][1]:6.2f}-{st[b][2]:6.2f})" for b in backends
            )
            line += f"  {ratio:6.2f}x"
            if "triton" in backends:
                line += f"  {st['triton'][0] / st['cpp'][0]:9.2f}x"
            print(line, flush=True)
            rows.append(
                {
                    "case": name,
                    "mode": {"fwd": "fwd", "grad": "fwd+grad", "full": "fwd+bwd"}[mode],
                    "dtype": args.dtype,
                    "ms": {b: {"median": st[b][0], "p20": st[b][1], "p80": st[b][2]} for b in backends},
                    "ratio_reference_over_cpp": ratio,
                }
            )
    if not args.no_save:
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_")
        meta = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "loadavg_before_after": [load_before, _loadavg()],
            "device": dev_name,
            "host": platform.node(),
            "threads": args.threads,
            "allocator": args.allocator,
            "torch": torch.__version__,
            "commit": _git_commit(),
        }
        with open(out_dir / f"cpp_ops_{tag}.jsonl", "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({**meta, **r}) + "\n")
    print(f"# load average after: {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
