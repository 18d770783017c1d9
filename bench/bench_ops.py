"""Benchmark of the hot-path ops: Triton kernels vs the reference and vs SDPA.

Ops and baselines:

* ``part_attention``: ``triton`` (pdnet.kernels), ``reference`` (pdnet.ops.reference),
  ``sdpa_per_part`` (torch's scaled_dot_product_attention called once per part, as a
  straightforward port would), ``sdpa_heads`` (one SDPA call with the parts as heads),
  ``cpp`` when the C++ extension is built.
* ``part_masks``, ``assemble_parts``, ``area_variance``: ``triton``, ``reference``, ``cpp``.
* ``ipda``: attention + part masks + assembly as the model runs them (with the 1x1
  output projection as an einsum, identical in every path): ``triton`` vs
  ``sdpa_per_part`` (SDPA per part + reference masks and assembly) vs ``reference``.

Modes: ``fwd`` (forward only, no autograd graph), ``bwd`` (backward of a retained graph),
``full`` (forward + backward). Each measurement is ``triton.testing.do_bench`` (median,
p20, p80 in ms, after ``--warmup`` ms of warm-up over ``--rep`` ms of repetitions), plus
the peak memory allocated during one call above what was allocated before it; TFLOP/s
(attention: forward 4*B*p*Nq*Nk*d, backward 2.5x that) and GB/s (the minimal bytes each
op must move, the same count for every backend) with their share of the device's peak
(table below, or ``--peak-tflops`` / ``--peak-gbps``).

Usage (needs a CUDA device)::

    python bench/bench_ops.py                         # every op, bf16, model + large shapes
    python bench/bench_ops.py --ops part_attention --dtype bf16 fp16 --modes fwd full
    python bench/bench_ops.py --ops part_attention --attn-config fwd=128,64,4,3

Every row is appended as one JSON line to ``bench/results/ops_<device>.jsonl`` with the
device name, torch / triton versions and the git commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPS = ("part_attention", "part_masks", "assemble_parts", "area_variance", "ipda")
MODES = ("fwd", "bwd", "full")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # torch dtype names

#: dense peaks: (bf16/fp16 tensor TFLOP/s, fp32 TFLOP/s without TF32, HBM GB/s), by name substring
DEVICE_PEAKS = {
    "H200": (989.0, 67.0, 4800.0),
    "H100 PCIe": (756.0, 51.0, 2000.0),
    "H100 NVL": (835.0, 60.0, 3900.0),
    "H100": (989.0, 67.0, 3350.0),
    "A100-SXM4-80GB": (312.0, 19.5, 2039.0),
    "A100": (312.0, 19.5, 1555.0),
    "L40S": (362.0, 91.6, 864.0),
    "RTX 4090": (165.0, 82.6, 1008.0),
}

# shapes: part_attention (B, p, Nq, Nk, d); part_masks / area_variance (B, p, H, W);
# assemble_parts (B, p, C, h, w); ipda (B, p, h, w, d, C)
SHAPES = {
    "part_attention": [
        (1, 5, 900, 900, 32), (8, 5, 900, 900, 32), (32, 5, 900, 900, 32),  # model, 480x480
        (8, 5, 3600, 3600, 64),  # the forward target shape
        (1, 5, 14400, 14400, 64),
    ],
    "part_masks": [(32, 5, 30, 30), (32, 5, 480, 480)],
    "assemble_parts": [(32, 5, 64, 30, 30), (32, 5, 64, 120, 120)],
    "area_variance": [(32, 5, 480, 480)],
    "ipda": [(1, 5, 30, 30, 32, 64), (8, 5, 30, 30, 32, 64), (32, 5, 30, 30, 32, 64)],
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark pdnet's hot-path ops (Triton kernels vs reference and SDPA); needs CUDA.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage (needs a CUDA device)::", 1)[1],
    )
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--backends", nargs="+", default=None,
                    help="subset of triton, reference, sdpa_per_part, sdpa_heads, cpp (default: all that apply)")
    ap.add_argument("--masked", action="store_true", help="part_attention with a random additive key mask")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device's dense peak TFLOP/s")
    ap.add_argument("--peak-gbps", type=float, default=None, help="override the device's memory bandwidth, GB/s")
    ap.add_argument("--attn-config", action="append", default=[], metavar="KIND=BM,BN,WARPS,STAGES",
                    help="override a part_attention launch config (KIND: fwd, dkdv, dq), for tuning")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of the JSONL results")
    ap.add_argument("--no-save", action="store_true", help="print rows without appending them")
    return ap.parse_args(argv)


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_peaks(name: str, dtype_name: str, args):
    """(peak TFLOP/s for this dtype, peak GB/s) or None where unknown."""
    tflops = gbps = None
    for key, (tc, fp32, bw) in DEVICE_PEAKS.items():
        if key in name:
            tflops, gbps = (fp32 if dtype_name == "fp32" else tc), bw
            break
    return args.peak_tflops or tflops, args.peak_gbps or gbps


# --------------------------------------------------------------------------- implementations
def attention_impls(ops, reference, F, scale):
    import torch
    def sdpa_per_part(q, k, v, key_mask):
        outs = []
        for j in range(q.shape[1]):
            m = None if key_mask is None else key_mask[:, j, None, None, :].to(q.dtype)  # [B, 1, 1, Nk]
            outs.append(F.scaled_dot_product_attention(q[:, j:j + 1], k[:, j:j + 1], v[:, j:j + 1],
                                                       attn_mask=m, scale=scale))
        return torch.cat(outs, dim=1)  # [B, p, Nq, d]

    def sdpa_heads(q, k, v, key_mask):
        m = None if key_mask is None else key_mask[:, :, None, :].to(q.dtype)  # [B, p, 1, Nk]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale)

    return {
        "triton": lambda q, k, v, m: ops.part_attention(q, k, v, scale, m, backend="triton"),
        "cpp": lambda q, k, v, m: ops.part_attention(q, k, v, scale, m, backend="cpp"),
        "reference": lambda q, k, v, m: reference.part_attention(q, k, v, scale, m),
        "sdpa_per_part": sdpa_per_part,
        "sdpa_heads": sdpa_heads,
    }


def make_case(op, shape, dtype, device, masked, ops, reference, F):
    """(inputs, {backend: fn}, flops of the forward, bytes of fwd / bwd) for one shape."""
    import torch
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(dtype)

    es = torch.tensor([], dtype=dtype).element_size()
    if op == "part_attention":
        B, p, Nq, Nk, d = shape
        scale = d ** -0.5
        q, k, v = rnd(B, p, Nq, d), rnd(B, p, Nk, d), rnd(B, p, Nk, d)
        m = None
        if masked:
            m = torch.where(torch.rand(B, p, Nk, generator=g, device=device) < 0.2, float("-inf"), 0.0).to(dtype)
        flops = 4.0 * B * p * Nq * Nk * d
        io = es * (2 * B * p * Nq * d + 2 * B * p * Nk * d) + 4 * B * p * Nq
        return [q, k, v, m], attention_impls(ops, reference, F, scale), flops, (io, 2 * io)
    if op == "part_masks":
        B, p, H, W = shape
        D, S = rnd(B, p, H, W), rnd(B, 1, H, W)
        impls = {
            "triton": lambda a, b: ops.part_masks(a, b, backend="triton"),
            "cpp": lambda a, b: ops.part_masks(a, b, backend="cpp"),
            "reference": lambda a, b: reference.part_masks(a, b, True),
        }
        n = B * H * W
        return [D, S], impls, 0.0, (es * n * (2 * p + 1), es * n * (3 * p + 2))
    if op == "assemble_parts":
        B, p, C, h, w = shape
        P, Y, R = rnd(B, p, C, h, w), rnd(B, p, C, h, w), rnd(B, p, h, w)
        impls = {
            "triton": lambda a, b, c: ops.assemble_parts(a, b, c, backend="triton"),
            "cpp": lambda a, b, c: ops.assemble_parts(a, b, c, backend="cpp"),
            "reference": reference.assemble_parts,
        }
        n = B * h * w
        fwd = es * n * (2 * p * C + p + C)
        bwd = es * n * (2 * p * C + p + C + p * C + p)  # read P, Y, R, dM; write dP (= dY), dR
        return [P, Y, R], impls, 0.0, (fwd, bwd)
    if op == "area_variance":
        B, p, H, W = shape
        x = torch.rand(B, p, H, W, generator=g, device=device).to(dtype)
        impls = {
            "triton": lambda a: ops.area_variance(a, backend="triton"),
            "cpp": lambda a: ops.area_variance(a, backend="cpp"),
            "reference": reference.area_variance,
        }
        return [x], impls, 0.0, (es * x.numel(), 0)
    if op == "ipda":
        B, p, h, w, d, C = shape
        N = h * w
        q, k, v = rnd(B, p, N, d), rnd(B, p, N, d), rnd(B, p, N, d)
        D, S, P = rnd(B, p, h, w), rnd(B, 1, h, w), rnd(B, p, C, h, w)
        Wp = rnd(p, C, d, scale=d ** -0.5)  # output projection d -> C per part
        attn = attention_impls(ops, reference, F, 1.0)

        def step(attend, masks_fn, assemble_fn):
            def f(q, k, v, D, S, P, Wp):
                y = attend(q, k, v, None)  # [B, p, N, d]
                y = torch.einsum("pcd,bpnd->bpcn", Wp, y).reshape(B, p, C, h, w)  # [B, p, C, h, w]
                return assemble_fn(P, y, masks_fn(D, S))  # [B, C, h, w]
            return f

        impls = {
            "triton": step(attn["triton"], lambda a, b: ops.part_masks(a, b, backend="triton"),
                           lambda a, b, c: ops.assemble_parts(a, b, c, backend="triton")),
            "sdpa_per_part": step(attn["sdpa_per_part"], lambda a, b: reference.part_masks(a, b, True),
                                  reference.assemble_parts),
            "reference": step(attn["reference"], lambda a, b: reference.part_masks(a, b, True),
                              reference.assemble_parts),
        }
        flops = 4.0 * B * p * N * N * d + 2.0 * B * p * N * d * C
        return [q, k, v, D, S, P, Wp], impls, flops, (0, 0)
    raise ValueError(op)


# --------------------------------------------------------------------------- measurement
def measure(fn, inputs, mode, args, do_bench):
    """(median, p20, p80) ms and peak MiB of one mode."""
    import torch
    leaves = [x.detach().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x for x in inputs]
    grads = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
    if mode == "fwd":
        plain = [x.detach() if isinstance(x, torch.Tensor) else x for x in inputs]

        def run():
            with torch.no_grad():
                return fn(*plain)
    else:
        out = fn(*leaves)
        g_out = torch.randn_like(out)
        if mode == "bwd":
            def run():
                torch.autograd.grad(out, grads, g_out, retain_graph=True)
        else:
            def run():
                torch.autograd.grad(fn(*leaves), grads, g_out)
    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    med, p20, p80 = do_bench(run, warmup=args.warmup, rep=args.rep, quantiles=[0.5, 0.2, 0.8])
    return med, p20, p80, peak


def apply_attn_configs(specs, module):
    """--attn-config KIND=BM,BN,WARPS,STAGES: wrap the launch-config function."""
    if not specs:
        return
    override = {}
    for spec in specs:
        m = re.fullmatch(r"(fwd|dkdv|dq)=(\d+),(\d+),(\d+),(\d+)", spec.strip())
        if not m:
            raise SystemExit(f"bench_ops.py: bad --attn-config {spec!r}; expected KIND=BM,BN,WARPS,STAGES")
        override[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    base = module._configs
    module._configs = lambda *a, **k: {**base(*a, **k), **override}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_ops.py needs a CUDA device: torch.cuda.is_available() is False on this machine, "
              "so the Triton kernels' GPU figures cannot be measured here.", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench_ops.py: TRITON_INTERPRET is set; unset it to time compiled kernels.", file=sys.stderr)
        return 2
    import torch.nn.functional as F
    import triton
    from triton.testing import do_bench

    from pdnet import ops
    from pdnet.kernels import part_attention as attn_module
    from pdnet.ops import reference

    apply_attn_configs(args.attn_config, attn_module)
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    available = set(ops.available_backends("cuda")) | {"sdpa_per_part", "sdpa_heads"}
    meta = {
        "device": name, "torch": torch.__version__, "triton": triton.__version__, "git_commit": git_commit(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "attn_config_override": args.attn_config or None,
    }
    out_path = Path(args.out) / f"ops_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.jsonl"
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, DTYPES[dtype_name])
        peak_tflops, peak_gbps = device_peaks(name, dtype_name, args)
        for op in args.ops:
            for shape in SHAPES[op]:
                inputs, impls, flops, (bytes_fwd, bytes_bwd) = make_case(
                    op, shape, dtype, device, args.masked, ops, reference, F)
                for backend, fn in impls.items():
                    if backend not in available or (args.backends and backend not in args.backends):
                        continue
                    for mode in args.modes:
                        if op == "area_variance" and mode == "bwd":
                            continue  # its backward is a broadcast view
                        try:
                            med, p20, p80, peak = measure(fn, inputs, mode, args, do_bench)
                        except torch.OutOfMemoryError:
                            print(f"{op} {shape} {backend} {mode}: out of memory", flush=True)
                            torch.cuda.empty_cache()
                            continue
                        f = {"fwd": flops, "bwd": 2.5 * flops, "full": 3.5 * flops}[mode]
                        nbytes = {"fwd": bytes_fwd, "bwd": bytes_bwd, "full": bytes_fwd + bytes_bwd}[mode]
                        tflops = f / (med * 1e-3) / 1e12 if f else None
                        gbps = nbytes / (med * 1e-3) / 1e9 if nbytes else None
                        row = dict(meta, op=op, shape=list(shape), dtype=dtype_name, backend=backend, mode=mode,
                                   masked=args.masked if op == "part_attention" else None,
                                   ms_median=med, ms_p20=p20, ms_p80=p80, peak_mem_mib=peak,
                                   tflops=tflops, tflops_frac_peak=(tflops / peak_tflops if tflops and peak_tflops else None),
                                   gbps=gbps, gbps_frac_peak=(gbps / peak_gbps if gbps and peak_gbps else None))
                        rows.append(row)
                        extra = f"{tflops:7.1f} TFLOP/s" if tflops else (f"{gbps:7.0f} GB/s" if gbps else "")
                        if row["tflops_frac_peak"] or row["gbps_frac_peak"]:
                            extra += f" ({100 * (row['tflops_frac_peak'] or row['gbps_frac_peak']):.0f}% of peak)"
                        print(f"{op:15s} {str(shape):28s} {dtype_name} {backend:14s} {mode:4s} "
                              f"{med:9.3f} ms [{p20:.3f}, {p80:.3f}] {peak:9.1f} MiB {extra}", flush=True)
                del inputs
                torch.cuda.empty_cache()
    if rows and not args.no_save:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        print(f"appended {len(rows)} rows to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
