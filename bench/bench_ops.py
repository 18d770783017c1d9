"""Benchmark of the public ops: every backend beside the reference, on the CPU or a CUDA device.

Cases, inputs and reference are the op tests' (``tests/ops/cases.py``; ``--kinds``: model
shapes at 480 x 480 input, large, awkward). Backends: ``reference``, ``cpp``, ``triton``
(on the CPU only when named, in Triton's interpreter) and, for part_attention on CUDA,
torch's scaled_dot_product_attention as ``sdpa_heads`` (one call, the parts as heads) and
``sdpa_per_part`` (one call per part, as a direct port of a per-part loop). Each model and
large attention case on a square map is also timed as ``attention_assembly``: the
attention followed by assemble_parts, a baseline's attention followed by the reference
assembly (bench/ops_baselines.py; ``--no-assembly`` leaves it out).

Modes: ``fwd``, the forward under ``torch.no_grad()``; ``grad``, forward +
``torch.autograd.grad`` of a fixed cotangent for every input that needs a gradient (the
op as a model runs it); ``full``, forward + ``.backward()`` into the leaves' ``.grad``
(leaf accumulation counted too); ``bwd``, the backward of a retained graph alone.

Timing. CPU: wall time per call, the backends alternating call by call so that all see
the same load. CUDA: ``triton.testing.do_bench``; with ``--cuda-graph`` the call is
captured in a CUDA graph after warm-up and its replays are timed, so that small shapes
measure the kernels, not Python and launches (a backend that cannot be captured is timed
without a graph, with a message saying why).

Rows (appended to ``bench/results/ops_<device>.jsonl``, ``ops_cpu.jsonl`` on the CPU, with
commit, device, versions, threads, allocator and load average): median, p20, p80 ms; peak
memory allocated during one call above what was allocated before it (CUDA: the caching
allocator's peak; CPU: the profiler's allocation events); TFLOP/s (attention: forward
4*B*p*Nq*Nk*d, backward 2.5x that) and GB/s (the bytes the op must move at least, the
same for every backend) with their share of the device's peak where known
(:data:`DEVICE_PEAKS`); the ratios reference / backend and sdpa_per_part / backend,
measured in the same run. Rows are appended case by case, so a run stopped midway keeps
what it measured. Last, the attention target's figures (bf16, d=64, N=3600, B*p=40),
where the run measured them (bench/results_summary.py).

Usage::

    python bench/bench_ops.py --allocator steady --reps 25          # CPU, 2 threads, model shapes
    python bench/bench_ops.py --ops part_attention --modes fwd grad --backends reference cpp
    python bench/bench_ops.py --device cuda                        # bf16, model + large shapes
    python bench/bench_ops.py --device cuda --cuda-graph --kinds model --dtype bf16 fp16
    python bench/bench_ops.py --device cuda --ops part_attention --attn-config fwd=128,64,4,3
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ops_baselines as baselines  # bench/ops_baselines.py
import results_summary  # bench/results_summary.py
from _meta import git_commit  # bench/_meta.py
from ops import cases as C  # tests/ops/cases.py
from ops_baselines import ATTENTION_ASSEMBLY, BASELINES, attention_assembly
from ops_cost import FLOP_FACTOR, case_cost  # bench/ops_cost.py

from pdnet import ops

ROOT = Path(__file__).resolve().parents[1]
MODES = ("fwd", "grad", "full", "bwd")
KINDS = ("model", "large", "awkward")
DTYPES = {name: getattr(torch, name) for name in ("float32", "float16", "bfloat16", "float64")}
DTYPES |= {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}

#: vendor peaks without sparsity, by device name (the longest key contained in torch's device name wins):
#: (bf16/fp16 tensor-core TFLOP/s with fp32 accumulation, as the kernels accumulate; fp32 TFLOP/s without
#: tensor cores; memory GB/s)
DEVICE_PEAKS = {
    # NVIDIA H200 datasheet (SXM; NVL)
    "H200": (989.0, 67.0, 4800.0),
    "H200 NVL": (835.0, 60.0, 4800.0),
    # NVIDIA H100 datasheet (SXM; PCIe; NVL)
    "H100": (989.0, 67.0, 3350.0),
    "H100 PCIe": (756.0, 51.0, 2000.0),
    "H100 NVL": (835.0, 60.0, 3900.0),
    # NVIDIA A100 datasheet (40GB: 1555 GB/s; 80GB SXM4: 2039; 80GB PCIe: 1935)
    "A100": (312.0, 19.5, 1555.0),
    "A100-SXM4-80GB": (312.0, 19.5, 2039.0),
    "A100 80GB PCIe": (312.0, 19.5, 1935.0),
    # NVIDIA Ampere GA102 architecture whitepaper, GeForce RTX 3090: 142 TFLOP/s fp16 tensor with fp16
    # accumulation, 71 with fp32 accumulation (bf16 too); 35.6 fp32; 936 GB/s
    "RTX 3090": (71.0, 35.6, 936.0),
    # NVIDIA L40S datasheet; Ada AD102 architecture whitepaper (RTX 4090, fp32 accumulation)
    "L40S": (362.0, 91.6, 864.0),
    "RTX 4090": (165.0, 82.6, 1008.0),
}


def device_peaks(name: str, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """(peak TFLOP/s for ``dtype``, peak GB/s) of the device, None where unknown."""
    keys = [key for key in DEVICE_PEAKS if key in name]
    if not keys:
        return None, None
    tensor_core, fp32, bandwidth = DEVICE_PEAKS[max(keys, key=len)]
    return (tensor_core if dtype in C.LOW_PRECISION else fp32), bandwidth


def op_function(op: str, backend: str):
    """``fn(*args, **kwargs)`` computing ``op`` with ``backend`` (or a baseline)."""
    if op == ATTENTION_ASSEMBLY:
        return attention_assembly(backend)
    if backend in BASELINES:
        return BASELINES[backend]
    return lambda *args, **kwargs: C.call(op, args, kwargs, backend)


def make_inputs(case: C.Case, device, dtype, requires_grad: bool) -> tuple[tuple, dict]:
    """The op tests' inputs of ``case`` (of both ops of an attention + assembly case)."""
    if case.op == ATTENTION_ASSEMBLY:
        return baselines.make_inputs(case, device, dtype, requires_grad)
    return C.make_inputs(case, device, dtype, requires_grad=requires_grad)


# --------------------------------------------------------------------------- measurement
def prepare(fn, args: tuple, kwargs: dict, mode: str):
    """A no-argument callable running ``mode`` of ``fn(*args, **kwargs)``; calls it once (warm-up)."""
    wrt = C.grad_inputs(args, kwargs)
    if mode == "fwd" or not wrt:
        run = torch.no_grad()(lambda: fn(*args, **kwargs))
        run()
        return run
    out = fn(*args, **kwargs)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(out)
    if mode == "bwd":
        return lambda: torch.autograd.grad(out, wrt, cot, retain_graph=True)
    if mode == "grad":
        return lambda: torch.autograd.grad(fn(*args, **kwargs), wrt, cot)

    def run_full():
        fn(*args, **kwargs).backward(cot)
        for t in wrt:
            t.grad = None

    return run_full


def time_cpu(runs: dict, reps: int, warmup: int) -> dict:
    """{backend: (median, p20, p80) ms}, the backends alternating call by call."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {b: [] for b in runs}
    for _ in range(reps):
        for b, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[b].append((time.perf_counter() - t0) * 1e3)
    q = {b: statistics.quantiles(ts, n=5, method="inclusive") if len(ts) > 1 else ts * 4 for b, ts in times.items()}
    return {b: (statistics.median(ts), q[b][0], q[b][3]) for b, ts in times.items()}


def cuda_graph_replay(run):
    """``run`` captured in a CUDA graph after a warm-up on a side stream; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def time_cuda(run, args, label: str) -> tuple[tuple[float, float, float], bool]:
    """((median, p20, p80) ms from do_bench, whether a CUDA graph's replays were timed)."""
    from triton.testing import do_bench

    graphed = False
    if args.cuda_graph:
        try:
            run, graphed = cuda_graph_replay(run), True
        except RuntimeError as exc:
            torch.cuda.synchronize()
            print(f"# {label}: cannot be captured in a CUDA graph ({exc}); timed without a graph", flush=True)
    return tuple(do_bench(run, warmup=args.warmup_ms, rep=args.rep_ms, quantiles=[0.5, 0.2, 0.8])), graphed


def peak_memory_mib(run, device: torch.device) -> float:
    """Peak memory allocated during one ``run()`` above what was allocated before it, MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keeps the profiler's start / stop lines out of the output
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        level += e.nbytes()  # negative for a free
        peak = max(peak, level)
    return peak / 2**20


# --------------------------------------------------------------------------- run metadata
def load_average() -> float | None:
    """1-minute load average (other work on the machine slows every column), or None."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def run_metadata(device: torch.device, args) -> dict:
    from pdnet.ops import _cpp_backend

    triton = importlib.util.find_spec("triton")
    return {
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "host": platform.node(),
        "cpu_isa": _cpp_backend.cpu_isa() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "triton": importlib.metadata.version("triton") if triton else None,
        "threads": torch.get_num_threads(),
        "allocator": args.allocator,
        "attn_config_override": args.attn_config or None,
    }


# --------------------------------------------------------------------------- command line
def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage::", 1)[1],
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--ops", nargs="+", choices=C.OPS, default=list(C.OPS))
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=None,
                    help="case kinds of tests/ops/cases.py (default: model on the CPU, model and large on CUDA)")
    ap.add_argument("--only", nargs="+", default=None, help="substrings of case ids (op-name) to run")
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None,
                    help="default: float32 on the CPU, bfloat16 on CUDA")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=["fwd", "grad", "full"])
    ap.add_argument("--backends", nargs="+", default=None,
                    help="subset of reference, cpp, triton, sdpa_heads, sdpa_per_part (default: reference and "
                    "the kernel backends built for the device; on CUDA the SDPA baselines too)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--allocator", default="glibc", choices=["glibc", "steady"],
                    help="glibc: malloc as every process gets it (large blocks mmapped and page-faulted afresh "
                    "on each allocation); steady: freed memory kept for reuse without mmap "
                    "(pdnet._malloc.keep_freed_memory), which takes the page faults out of every column")
    ap.add_argument("--reps", type=int, default=15, help="CPU: timed calls of each backend")
    ap.add_argument("--warmup", type=int, default=3, help="CPU: untimed calls of each backend first")
    ap.add_argument("--warmup-ms", type=int, default=25, help="CUDA: do_bench warm-up, ms")
    ap.add_argument("--rep-ms", type=int, default=100, help="CUDA: do_bench repetitions, ms")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="CUDA: time replays of a CUDA graph of the call instead of the call itself")
    ap.add_argument("--attn-config", action="append", default=[], metavar="KIND=BM,BN,WARPS,STAGES",
                    help="override a Triton part_attention launch config (KIND: fwd, dkdv, dq), for tuning")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of the JSONL results")
    ap.add_argument("--no-save", action="store_true", help="print rows without appending them")
    ap.add_argument("--no-assembly", action="store_true",
                    help=f"leave out the {ATTENTION_ASSEMBLY} rows (part_attention's model and large cases "
                    "followed by assemble_parts, against SDPA per part plus the reference assembly)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.kinds = args.kinds or (["model", "large"] if cuda else ["model"])
    args.dtype = args.dtype or (["bfloat16"] if cuda else ["float32"])
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--reps and --threads must be at least 1, --warmup at least 0")
    return args


class BenchError(Exception):
    """A setting this run cannot honour; main prints it and returns 2."""


def setup(args) -> tuple[torch.device, list[str], list[C.Case]]:
    """Applies the run's settings; returns the device, the backends and the cases to run."""
    if args.cuda_graph and args.device != "cuda":
        raise BenchError("--cuda-graph needs --device cuda (a CUDA graph records GPU work)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but torch.cuda.is_available() is False on this machine")
    if args.device == "cuda" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise BenchError("TRITON_INTERPRET is set; unset it to time compiled kernels on CUDA")
    available = [*ops.available_backends(args.device), *BASELINES]
    default = ("reference", "cpp") if args.device == "cpu" else ("reference", "cpp", "triton", *BASELINES)
    backends = args.backends or [b for b in default if b in available]
    for b in backends:
        if b not in available:
            hint = "; Triton runs on the CPU only with TRITON_INTERPRET=1 set" if b == "triton" else ""
            raise BenchError(f"backend {b!r} is not available on {args.device}, only {', '.join(available)}{hint}")
    only = args.only or [""]
    cases = [c for op in args.ops for c in C.cases(op, *args.kinds)]
    cases += baselines.assembly_cases(cases) if not args.no_assembly else []
    cases = [c for c in cases if any(s in c.id for s in only)]
    if not cases:
        raise BenchError(f"no {' / '.join(args.kinds)} case of {' '.join(args.ops)} matches --only {' '.join(only)}")
    apply_attn_configs(args.attn_config)
    if args.allocator == "steady":
        from pdnet._malloc import keep_freed_memory

        if not keep_freed_memory(trim_threshold=(1 << 31) - 1, use_mmap=False):
            raise BenchError("--allocator steady needs glibc's malloc")
    torch.set_num_threads(args.threads)
    return torch.device(args.device), backends, cases


def apply_attn_configs(specs: list[str]) -> None:
    """--attn-config KIND=BM,BN,WARPS,STAGES: replaces the Triton attention's launch configs of KIND."""
    if not specs:
        return
    override = {}
    for spec in specs:
        m = re.fullmatch(r"(fwd|dkdv|dq)=(\d+),(\d+),(\d+),(\d+)", spec.strip())
        if not m:
            raise BenchError(f"bad --attn-config {spec!r}; expected KIND=BM,BN,WARPS,STAGES")
        override[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    from pdnet.kernels import part_attention as module

    base = module._configs
    module._configs = lambda *a, **k: {**base(*a, **k), **override}


# --------------------------------------------------------------------------- main
def measure_case(case, mode, dtype, device, backends, args) -> dict:
    """{backend: ((median, p20, p80) ms, peak MiB, CUDA graph used)} of one case and mode.

    A backend that cannot run the case (dtype, device, memory) is reported and left out.
    """
    inputs, kwargs = make_inputs(case, device, dtype, requires_grad=mode != "fwd")
    runs = {}
    for b in backends:
        try:
            runs[b] = prepare(op_function(case.op, b), inputs, kwargs, mode)
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            print(f"# {case.id} {mode} {b}: skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
    if device.type == "cpu":
        stats = time_cpu(runs, args.reps, args.warmup)
        return {b: (stats[b], peak_memory_mib(run, device), False) for b, run in runs.items()}
    results = {}
    for b, run in runs.items():
        try:
            peak = peak_memory_mib(run, device)
            stats, graphed = time_cuda(run, args, f"{case.id} {mode} {b}")
        except torch.OutOfMemoryError:
            print(f"# {case.id} {mode} {b}: skipped: out of memory", flush=True)
            continue
        finally:
            torch.cuda.empty_cache()
        results[b] = (stats, peak, graphed)
    return results


def report(case, mode, dtype, results, meta, args) -> list[dict]:
    """One row per backend of one case and mode, each printed as a line of the table."""
    ref, sdpa = results.get("reference"), results.get("sdpa_per_part")
    flops, fwd_bytes, bwd_bytes = case_cost(case, torch.finfo(dtype).bits // 8)
    nbytes = {"fwd": fwd_bytes, "bwd": bwd_bytes}.get(mode, fwd_bytes + bwd_bytes)
    flops *= FLOP_FACTOR[mode]
    peak_tflops, peak_gbps = device_peaks(meta["device"], dtype)
    rows = []
    for b, ((med, p20, p80), peak, graphed) in results.items():
        tflops = flops / (med * 1e-3) / 1e12 if flops and med else None
        gbps = nbytes / (med * 1e-3) / 1e9 if nbytes and med else None
        ratio = ref[0][0] / med if ref and med else None
        tflops_frac = tflops / peak_tflops if tflops and peak_tflops else None
        gbps_frac = gbps / peak_gbps if gbps and peak_gbps else None
        rows.append(dict(
            meta, case=case.id, op=case.op, kind=case.kind, dims=case.dims, options=case.options,
            dtype=str(dtype).removeprefix("torch."), mode=mode, backend=b, cuda_graph=graphed,
            reps=args.reps if args.device == "cpu" else None, loadavg=load_average(),
            ms_median=med, ms_p20=p20, ms_p80=p80, peak_mem_mib=peak, ratio_to_reference=ratio,
            ratio_to_sdpa_per_part=sdpa[0][0] / med if sdpa and med else None,
            tflops=tflops, gbps=gbps, tflops_frac_peak=tflops_frac, gbps_frac_peak=gbps_frac,
        ))
        rate = " | ".join(f"{x:.3g}" + (f" ({frac:.0%})" if frac else "") if x else "-"
                          for x, frac in ((tflops, tflops_frac), (gbps, gbps_frac)))
        print(f"{case.id:40s} {rows[-1]['dtype']:8s} {mode:4s} {b:13s} {med:10.3f} {f'[{p20:.3f}, {p80:.3f}]':>20s} "
              f"{peak:9.1f} {f'{ratio:.2f}x' if ratio else '-':>8s} {rate}", flush=True)
    return rows


def save(rows: list[dict], device: torch.device, meta: dict, out: str) -> Path:
    """Appends ``rows`` to ``<out>/ops_<device>.jsonl``; returns that path."""
    tag = "cpu" if device.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "_", meta["device"]).strip("_")
    path = Path(out) / f"ops_{tag}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device, backends, cases = setup(args)
    except BenchError as exc:
        print(f"bench_ops.py: {exc}", file=sys.stderr)
        return 2
    meta = run_metadata(device, args)
    print(f"# {meta['device']}; torch {meta['torch']}; commit {meta['commit']}; {meta['threads']} threads; "
          f"allocator {args.allocator}; load average {load_average()}; backends {', '.join(backends)}")
    print(f"{'case':40s} {'dtype':8s} {'mode':4s} {'backend':13s} {'median ms':>10s} {'[p20, p80]':>20s} "
          f"{'peak MiB':>9s} {'ref/this':>8s} TFLOP/s | GB/s (share of peak)")
    rows, path = [], None
    for dtype in (DTYPES[name] for name in args.dtype):
        for case in cases:
            usable = [b for b in backends if b not in BASELINES or case.op in ("part_attention", ATTENTION_ASSEMBLY)]
            case_rows = [row for mode in args.modes for row in report(
                case, mode, dtype, measure_case(case, mode, dtype, device, usable, args), meta, args)]
            if case_rows and not args.no_save:  # case by case: a run stopped midway keeps what it measured
                path = save(case_rows, device, meta, args.out)
            rows += case_rows
    print(f"# load average after: {load_average()}")
    if path:
        print(f"# appended {len(rows)} rows to {path}")
    for line in results_summary.attention_target_lines(rows):
        print(f"# {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
