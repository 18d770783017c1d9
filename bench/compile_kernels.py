"""Compile every Triton kernel of pdnet.kernels for a GPU target, without a GPU.

Runs Triton's front end, its NVIDIA back end and the ptxas bundled with Triton on each
kernel at the launch configurations the host functions pick (pdnet.kernels.*._configs and
friends), for each dtype and head dim, and prints per kernel: shared memory, registers
per thread, local memory (non-zero = register spills) and whether the matmuls lowered to
wgmma (Hopper tensor cores) or mma.sync; a kernel needing more shared memory per block than
the target allows counts as a failure (it would build but not launch). It proves the kernels build for the target; it
says nothing about speed (see bench/bench_ops.py on a GPU).

Usage::

    python bench/compile_kernels.py                 # sm_90 (H100/H200)
    python bench/compile_kernels.py --arch 80 --dtype bf16 --head-dim 32 64

Must run without TRITON_INTERPRET (the interpreter replaces the kernels).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TL_TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "fp64": "fp64"}
#: most shared memory one block may use (bytes, with the opt-in Triton requests) per compute
#: capability: a kernel above it builds but fails to launch on that GPU
SHARED_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
SCALARS = {"P", "HW", "C", "Nq", "Nk", "d", "n_chunks"}


def signature(fn, dtype: str, consts: dict, ptr_types: dict) -> dict:
    """Triton signature: uppercase names are pointers, *_hi/*_lo fp32 scalars, the rest i32."""
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name[0].isupper() and name not in SCALARS:
            sig[name] = "*" + ptr_types.get(name, dtype)
        elif name.endswith("_hi") or name.endswith("_lo"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, dtype, consts, ptr_types, warps, stages, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = signature(fn, dtype, consts, ptr_types)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*")}
    src = ASTSource(fn, sig, constexprs=dict(consts), attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = ""
    if tool.exists():
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(kernel.asm["cubin"])
            fh.flush()
            usage = subprocess.run([str(tool), "-res-usage", fh.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    ptx = kernel.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "-")
    return kernel.metadata.shared, regs.group(1) if regs else "?", local.group(1) if local else "?", mma


def jobs(dtype: str, head_dims, torch):
    """(name, kernel, constexprs, pointer dtypes, warps, stages) at the host's launch configs."""
    import pdnet.kernels._common as common
    from pdnet.kernels import area_variance as AV
    from pdnet.kernels import assemble_parts as AP
    from pdnet.kernels import part_attention as PA
    from pdnet.kernels import part_masks as PM

    tdtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}[dtype])
    acc = "fp64" if dtype == "fp64" else "fp32"
    prec = common.dot_precision(tdtype)
    PA.num_sms = lambda device: 132  # a full-size grid: the configs of large problems
    for d in head_dims:
        cfg = PA._configs(3600, 3600, 40, d, tdtype, torch.device("cuda"))
        for mask in (False, True):
            base = dict(HAS_MASK=mask, BLOCK_D=d, PRECISION=prec)
            (bm, bn, w, s) = cfg["fwd"]
            yield (f"attn_fwd d={d} mask={mask}", PA._part_attention_fwd_kernel, dict(base, BLOCK_M=bm, BLOCK_N=bn),
                   {"LSE": acc}, w, s)
            (bm, bn, w, s) = cfg["dkdv"]
            yield (f"attn_dkdv d={d} mask={mask}", PA._part_attention_bwd_kernel,
                   dict(base, MASK_GRAD=mask, KEYS=True, BLOCK_M=bm, BLOCK_N=bn), {"LSE": acc, "DELTA": acc}, w, s)
            (bm, bn, w, s) = cfg["dq"]
            yield (f"attn_dq d={d} mask={mask}", PA._part_attention_bwd_kernel,
                   dict(base, MASK_GRAD=False, KEYS=False, BLOCK_M=bm, BLOCK_N=bn), {"LSE": acc, "DELTA": acc}, w, s)
        yield (f"attn_pre d={d}", PA._part_attention_bwd_preprocess_kernel,
               dict(HAS_DLSE=True, BLOCK_M=64, BLOCK_D=d), {"DLSE": acc, "DELTA": acc}, 4, 1)
    p_pad, block, _ = PM._launch_shape(5, 480 * 480, 32)
    for logit in (True, False):
        yield (f"part_masks_fwd logit={logit}", PM._part_masks_fwd_kernel,
               dict(GATE_IS_LOGIT=logit, P_PAD=p_pad, BLOCK=block), {}, 8, 1)
        yield (f"part_masks_bwd logit={logit}", PM._part_masks_bwd_kernel,
               dict(GATE_IS_LOGIT=logit, GATE_GRAD=True, P_PAD=p_pad, BLOCK=block), {}, 8, 1)
    for C, HW in ((64, 30 * 30), (64, 120 * 120)):
        block_hw, block_c = AP._tiles(HW, C)
        tiles = dict(BLOCK_C=block_c, BLOCK_HW=block_hw)
        yield (f"assemble_fwd HW={HW}", AP._assemble_parts_fwd_kernel, tiles, {}, AP._WARPS, 1)
        yield (f"assemble_bwd HW={HW}", AP._assemble_parts_bwd_kernel,
               dict(tiles, FEATS_GRAD=True, MASKS_GRAD=True), {}, AP._WARPS, 1)
    chunk, blk = AV._chunking(480 * 480)
    yield ("area_sums", AV._area_variance_fwd_kernel, dict(CHUNK=chunk, BLOCK=blk), {"PARTIAL": acc}, 8, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: H100/H200, 80: A100)")
    ap.add_argument("--dtype", nargs="+", choices=sorted(TL_TYPES), default=["bf16", "fp16", "fp32", "fp64"])
    ap.add_argument("--head-dim", nargs="+", type=int, default=[16, 32, 64, 128])
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_kernels.py: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2
    import torch

    failures = 0
    for dtype in args.dtype:
        for name, fn, consts, ptr_types, warps, stages in jobs(dtype, args.head_dim, torch):
            try:
                shared, regs, local, mma = compile_one(fn, dtype, consts, ptr_types, warps, stages, args.arch)
                limit = SHARED_LIMIT.get(args.arch)
                if limit is not None and shared > limit:
                    raise RuntimeError(f"needs {shared} B of shared memory, sm_{args.arch} allows {limit} B per block")
                print(f"sm_{args.arch} {dtype:4s} {name:28s} warps={warps} stages={stages} shared={shared:6d} B "
                      f"regs={regs:>3s} local={local:>4s} mma={mma}", flush=True)
            except Exception as exc:  # report every failure, then fail
                failures += 1
                print(f"sm_{args.arch} {dtype:4s} {name:28s} FAILED: {type(exc).__name__}: {exc}", flush=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
