"""Compile every Triton kernel of pdnet.kernels for GPU targets, without a GPU.

Runs Triton's front end, its NVIDIA back end and the ptxas bundled with Triton on each
kernel at every launch configuration the host functions can select: the configuration
functions (part_attention._configs, part_masks._launch_shape, assemble_parts._tiles,
area_variance._chunking) are called over a grid of problem sizes and SM counts and their
distinct answers kept (:mod:`kernel_configs`, which also checks that the grid misses
none), for every dtype (fp32 with TF32 and with IEEE dot products) and head dim up to
128, with every combination of the kernels' flags. Each configuration is compiled in two
specialisations, the two ends of what Triton's launcher compiles at run time: "generic"
(no integer argument specialised) and "contiguous" (unit last-dim strides, every other
integer a multiple of 16).

Prints per compiled kernel: shared memory, registers per thread, local memory (non-zero =
register spills) and whether the matmuls lowered to wgmma (Hopper tensor cores) or
mma.sync. A kernel needing more shared memory per block than the target allows is a
failure (it would build but not launch), and so is a spill in an attention kernel unless
``--spills report``. It proves the kernels build for the target; it says nothing about
speed (see bench/bench_ops.py on a GPU).

Usage::

    python bench/compile_kernels.py --subset          # sm_86 and sm_90, largest tiles per kernel
    python bench/compile_kernels.py                   # the full sweep (every configuration)
    python bench/compile_kernels.py --arch 80 --dtype bf16 --head-dim 32 64 --list

Must run without TRITON_INTERPRET (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cuda_resources as CR  # noqa: E402 - bench/ on the path first
import kernel_configs as KC  # noqa: E402

SPECIALISATIONS = ("generic", "contiguous")


def signature(fn, job: KC.Job, spec: str) -> tuple[dict, dict]:
    """Triton signature and attributes of ``fn``'s arguments for ``job``: uppercase names are
    pointers (16-byte aligned), *_hi/*_lo fp32 scalars, the rest i32; "contiguous": the
    last-dim strides (s*_d) are the constant 1 and the other integers multiples of 16."""
    sig, consts = {}, dict(job.consts)
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name[0].isupper() and name not in KC.SCALARS:
            sig[name] = "*" + job.ptr_types.get(name, job.dtype)
        elif name.endswith("_hi") or name.endswith("_lo"):
            sig[name] = "fp32"
        elif spec == "contiguous" and re.fullmatch(r"s\w*_d", name):
            sig[name] = "constexpr"
            consts[name] = 1
        else:
            sig[name] = "i32"
    divisible = [n for n in fn.arg_names if sig[n].startswith("*") or (spec == "contiguous" and sig[n] == "i32")]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    return sig, {"consts": consts, "attrs": attrs}


def compile_one(job: KC.Job, arch: int, spec: str) -> dict:
    """Compile ``job`` for sm_``arch``; its resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = KC.kernel(job.kernel)
    sig, extra = signature(fn, job, spec)
    src = ASTSource(fn, sig, constexprs=extra["consts"], attrs=extra["attrs"])
    options = {"num_warps": job.warps, "num_stages": job.stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    tool = CR.find_cuobjdump()
    fields = {}
    if tool is not None:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(kernel.asm["cubin"])
            fh.flush()
            usage = subprocess.run([str(tool), "-res-usage", fh.name], capture_output=True, text=True).stdout
        rows = CR.parse_res_usage(usage, arch)
        fields = rows[0][2] if rows else {}
    ptx = kernel.asm["ptx"]
    return {
        "shared": kernel.metadata.shared,
        **{k.lower(): fields.get(k, -1) for k in ("REG", "STACK", "LOCAL")},
        "mma": "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "-"),
    }


def run_one(task) -> tuple:
    """Worker: (arch, spec, job, resources or the exception's text, seconds)."""
    arch, spec, job = task
    start = time.perf_counter()
    try:
        return arch, spec, job, compile_one(job, arch, spec), time.perf_counter() - start
    except Exception as exc:  # reported by the parent with the job, then counted as a failure
        return arch, spec, job, f"{type(exc).__name__}: {exc}", time.perf_counter() - start


def verdict(res: dict, job: KC.Job, arch: int, spills: str) -> str:
    """'' if the compiled kernel is usable, else why not."""
    limit = CR.SMEM_PER_BLOCK.get(arch)
    if limit is not None and res["shared"] > limit:
        return f"needs {res['shared']} B of shared memory, sm_{arch} allows {limit} B per block"
    if res["local"] < 0:
        return "no resource usage from cuobjdump"
    spilled = res["local"] > 0 or res["stack"] > 0
    if spilled and spills == "fail" and job.kernel.startswith("attn"):
        return f"register spill: {res['local']} B local, {res['stack']} B stack per thread"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", type=int, default=[86, 90], help="compute capabilities x10 (86: RTX 3090)")
    ap.add_argument("--dtype", nargs="+", choices=KC.DTYPES, default=list(KC.DTYPES))
    ap.add_argument("--head-dim", nargs="+", type=int, default=None, help="only these head dims d (default 1..128)")
    ap.add_argument("--kernel", nargs="+", choices=KC.FAMILIES, default=list(KC.FAMILIES), help="kernel families")
    ap.add_argument("--spec", nargs="+", choices=SPECIALISATIONS, default=list(SPECIALISATIONS))
    ap.add_argument("--subset", action="store_true",
                    help="per kernel, dtype and precision only the largest tiles with every flag set")
    ap.add_argument("--flags", choices=("every", "attention"), default="every",
                    help="every flag combination of every kernel, or of the attention kernels only (the others "
                    "with all their flags set)")
    ap.add_argument("--spills", choices=("fail", "report"), default="fail",
                    help="a register spill in an attention kernel: a failure (default) or only reported")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    ap.add_argument("--list", action="store_true", help="print the configurations, compile nothing")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_kernels.py: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2
    jobs = KC.jobs(args.dtype, args.head_dim, args.kernel)
    if args.flags == "attention":
        jobs = [j for j in jobs if j.kernel.startswith("attn") or KC.flags_set(j)]
    if args.subset:
        jobs = KC.representative(jobs)
    tasks = [(arch, spec, job) for arch in args.arch for spec in args.spec for job in jobs]
    print(f"{len(jobs)} configuration(s) x {len(args.arch)} arch(s) x {len(args.spec)} specialisation(s) "
          f"= {len(tasks)} compile(s)", flush=True)
    if args.list:
        for job in jobs:
            print(job.label())
        return 0
    failures, spills = 0, 0
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for arch, spec, job, res, secs in pool.map(run_one, tasks, chunksize=4):
            head = f"sm_{arch} {spec:10s} {job.label():64s}"
            if isinstance(res, str):
                failures += 1
                print(f"{head} FAILED: {res}", flush=True)
                continue
            spills += res["local"] > 0 or res["stack"] > 0
            why = verdict(res, job, arch, args.spills)
            failures += bool(why)
            print(f"{head} shared={res['shared']:6d} B regs={res['reg']:3d} local={res['local']:3d} "
                  f"stack={res['stack']:3d} mma={res['mma']} {secs:5.1f}s" + (f" FAILED: {why}" if why else ""),
                  flush=True)
    print(f"{len(tasks)} compile(s) in {time.perf_counter() - start:.0f} s, {spills} with spills")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
