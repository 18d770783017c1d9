"""Every launch configuration the Triton host functions of pdnet.kernels can select.

The host functions pick tiles and launch options through small configuration functions:
``part_attention._configs(Nq, Nk, heads, d, dtype, device)`` (its tiles also depend on the
device's SM count), ``part_masks._launch_shape(P, HW, B)``, ``assemble_parts._tiles(HW, C)``
and ``area_variance._chunking(HW)``. :func:`selections` calls them over a grid of inputs
(sizes at and around every power of two, SM counts of real GPUs and beyond) and keeps the
distinct answers; :func:`uncovered` draws random inputs and returns those whose answer is
not among them, so a configuration function that gains a branch the grid misses is caught
(tests/test_triton_compile.py). :func:`jobs` turns the selections into compile jobs with
every combination of the kernels' flags (bench/compile_kernels.py compiles them).

Bounds: head dims and heads up to part_attention's MAX_HEAD_DIM and MAX_HEADS, up to 64
parts (part_masks pads the part count to a power of two; the model uses 5); the key mask
has the inputs' dtype. Needs Triton without TRITON_INTERPRET (the interpreter has its own tiles).
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = ("bf16", "fp16", "fp32", "fp64")
FAMILIES = ("attention", "part_masks", "assemble_parts", "area_variance")
#: integer arguments whose names start with an uppercase letter (the rest of those are pointers)
SCALARS = {"P", "HW", "C", "Nq", "Nk", "d", "n_chunks"}
MAX_PARTS = 64
#: tile of the attention backward's preprocess kernel, fixed in part_attention_backward
PRE_BLOCK_M = 64

# the grid: sizes at and around powers of two, SM counts of real GPUs and beyond
_POW = [1 << i for i in range(25)]
SIZES = sorted({n + e for n in _POW for e in (-1, 0, 1) if n + e >= 1} | {900, 3600, 14400, 230400})
ATTN_SIZES = (1, 128, 129, 3600, 1 << 17)
ATTN_HEADS = (1, 40, 1000)  # and part_attention.MAX_HEADS
SM_COUNTS = (1, 82, 132, 1024)


@dataclass(frozen=True)
class Job:
    """One kernel compile: Triton function key, input dtype, constexprs, pointer dtypes
    other than the input dtype, and launch options (None: Triton's default)."""

    kernel: str
    dtype: str
    consts: tuple = ()
    ptrs: tuple = ()
    warps: int | None = None
    stages: int | None = None
    ptr_types: dict = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "ptr_types", dict(self.ptrs))

    def label(self) -> str:
        consts = " ".join(f"{k}={v}" for k, v in self.consts)
        options = " ".join(f"{k}={'default' if v is None else v}" for k, v in (("warps", self.warps),
                                                                                ("stages", self.stages)))
        return f"{self.kernel} {self.dtype} {consts} {options}"


def _modules():
    import pdnet.kernels as K
    from pdnet.kernels import area_variance, assemble_parts, part_attention, part_masks

    if K.INTERPRET:
        raise RuntimeError("pdnet.kernels was imported with TRITON_INTERPRET=1: its tiles are the interpreter's")
    return part_attention, part_masks, assemble_parts, area_variance


def kernel(name: str):
    """The Triton function of a job's kernel key."""
    PA, PM, AP, AV = _modules()
    return {
        "attn_fwd": PA._part_attention_fwd_kernel,
        "attn_bwd": PA._part_attention_bwd_kernel,
        "attn_pre": PA._part_attention_bwd_preprocess_kernel,
        "masks_fwd": PM._part_masks_fwd_kernel,
        "masks_bwd": PM._part_masks_bwd_kernel,
        "assemble_fwd": AP._assemble_parts_fwd_kernel,
        "assemble_bwd": AP._assemble_parts_bwd_kernel,
        "area_sums": AV._area_variance_fwd_kernel,
    }[name]


def _torch_dtype(dtype: str):
    import torch

    return getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}[dtype])


class _Device:
    """Context: part_attention sees ``sms`` SMs and torch's TF32 matmul flag set to ``tf32``."""

    def __init__(self, sms: int, tf32: bool):
        self.sms, self.tf32 = sms, tf32

    def __enter__(self):
        import torch

        PA = _modules()[0]
        self.saved = (PA.num_sms, torch.backends.cuda.matmul.allow_tf32)
        PA.num_sms = lambda device: self.sms
        torch.backends.cuda.matmul.allow_tf32 = self.tf32

    def __exit__(self, *exc):
        import torch

        _modules()[0].num_sms, torch.backends.cuda.matmul.allow_tf32 = self.saved


def _attention_answers(dtype: str, d: int, sizes, heads_, tf32: bool) -> set:
    """The selections of _configs over sizes x sizes x heads_ (inside a _Device context)."""
    import torch

    PA = _modules()[0]
    tdtype = _torch_dtype(dtype)
    head = (dtype, PA.block_pow2(d), PA.dot_precision(tdtype))
    cuda = torch.device("cuda")
    out = set()
    for heads in heads_:
        for Nq in sizes:
            for Nk in sizes:
                cfg = PA._configs(Nq, Nk, heads, d, tdtype, cuda)
                out.add((*head, cfg["fwd"], cfg["dkdv"], cfg["dq"]))
    return out


def attention_selection(dtype: str, d: int, Nq: int, Nk: int, heads: int, sms: int, tf32: bool) -> tuple:
    """(dtype, BLOCK_D, PRECISION, fwd, dkdv, dq) the attention host functions pick."""
    with _Device(sms, tf32):
        (sel,) = _attention_answers(dtype, d, (Nq,), (heads,), tf32)
    return sel


def masks_selection(P: int, HW: int, B: int) -> tuple:
    """(P_PAD, BLOCK) of part_masks."""
    p_pad, block, _ = _modules()[1]._launch_shape(P, HW, B)
    return p_pad, block


def assemble_selection(HW: int, C: int) -> tuple:
    """(BLOCK_HW, BLOCK_C) of assemble_parts."""
    return tuple(_modules()[2]._tiles(HW, C))


def area_selection(HW: int) -> tuple:
    """(CHUNK, BLOCK) of area_variance."""
    return tuple(_modules()[3]._chunking(HW))


def selections(dtypes=DTYPES, head_dims=None) -> dict[str, set]:
    """Family -> the distinct answers of its configuration function over the grid."""
    PA = _modules()[0]
    head_dims = head_dims or range(1, PA.MAX_HEAD_DIM + 1)
    heads = (*ATTN_HEADS, PA.MAX_HEADS)
    attn = set()
    for tf32 in (False, True):
        for sms in SM_COUNTS:
            with _Device(sms, tf32):
                for dtype in dtypes:
                    if dtype != "fp32" and not tf32:
                        continue  # the flag concerns fp32 only
                    for d in head_dims:
                        attn |= _attention_answers(dtype, d, ATTN_SIZES, heads, tf32)
    return {
        "attention": attn,
        "part_masks": {masks_selection(P, HW, 1) for P in range(1, MAX_PARTS + 1) for HW in SIZES},
        "assemble_parts": {assemble_selection(HW, C) for HW in SIZES for C in SIZES if C <= 1 << 16},
        "area_variance": {area_selection(HW) for HW in SIZES},
    }


def uncovered(samples: int, seed: int = 0) -> list[str]:
    """Random inputs (per family ``samples`` of them) whose selection the grid misses."""
    rng = random.Random(seed)
    found = selections()
    PA = _modules()[0]

    def size(top):
        return max(1, int(2 ** rng.uniform(0, top)))

    draws = {
        "attention": lambda: attention_selection(rng.choice(DTYPES), rng.randint(1, PA.MAX_HEAD_DIM), size(20),
                                                 size(20), min(size(16), PA.MAX_HEADS), rng.randint(1, 4096),
                                                 rng.random() < 0.5),
        "part_masks": lambda: masks_selection(rng.randint(1, MAX_PARTS), size(25), rng.randint(1, 64)),
        "assemble_parts": lambda: assemble_selection(size(25), size(16)),
        "area_variance": lambda: area_selection(size(30)),
    }
    missing = []
    for family, draw in draws.items():
        for _ in range(samples):
            sel = draw()
            if sel not in found[family]:
                missing.append(f"{family}: {sel}")
    return missing


def _attention_jobs(sel: tuple) -> list[Job]:
    dtype, bd, precision, fwd, dkdv, dq = sel
    acc = "fp64" if dtype == "fp64" else "fp32"
    base = (("BLOCK_D", bd), ("PRECISION", precision))
    out = []
    for mask in (False, True):
        bm, bn, w, s = fwd
        out.append(Job("attn_fwd", dtype, (("HAS_MASK", mask), ("BLOCK_M", bm), ("BLOCK_N", bn), *base),
                       (("LSE", acc),), w, s))
        lse = (("LSE", acc), ("DELTA", acc))
        for keys, (bm, bn, w, s) in ((True, dkdv), (False, dq)):
            for grad in (False, True) if keys and mask else (False,):
                consts = (("KEYS", keys), ("HAS_MASK", mask), ("MASK_GRAD", grad), ("BLOCK_M", bm), ("BLOCK_N", bn))
                out.append(Job("attn_bwd", dtype, (*consts, *base), lse, w, s))
    for dlse in (False, True):  # launched with Triton's default warps and stages
        out.append(Job("attn_pre", dtype, (("HAS_DLSE", dlse), ("BLOCK_M", PRE_BLOCK_M), ("BLOCK_D", bd)),
                       (("DLSE", acc), ("DELTA", acc))))
    return out


def jobs(dtypes=DTYPES, head_dims=None, families=FAMILIES) -> list[Job]:
    """Every distinct compile job of ``families`` at their selectable configurations."""
    sel = selections(dtypes, head_dims)
    PM, AP = _modules()[1:3]
    out = []
    if "attention" in families:
        for s in sorted(sel["attention"], key=str):
            out += _attention_jobs(s)
    for dtype in dtypes:
        acc = "fp64" if dtype == "fp64" else "fp32"
        if "part_masks" in families:
            for p_pad, block in sorted(sel["part_masks"]):
                tiles = (("P_PAD", p_pad), ("BLOCK", block))
                for logit in (True, False):
                    out.append(Job("masks_fwd", dtype, (("GATE_IS_LOGIT", logit), *tiles), (), 8))
                    for gate_grad in (True, False):
                        out.append(Job("masks_bwd", dtype, (("GATE_IS_LOGIT", logit), ("GATE_GRAD", gate_grad), *tiles),
                                       (), 8))
        if "assemble_parts" in families:
            for block_hw, block_c in sorted(sel["assemble_parts"]):
                tiles = (("BLOCK_C", block_c), ("BLOCK_HW", block_hw))
                out.append(Job("assemble_fwd", dtype, tiles, (), AP._WARPS))
                for feats, masks in ((True, True), (True, False), (False, True)):
                    out.append(Job("assemble_bwd", dtype, (("FEATS_GRAD", feats), ("MASKS_GRAD", masks), *tiles),
                                   (), AP._WARPS))
        if "area_variance" in families:
            for chunk, block in sorted(sel["area_variance"]):
                out.append(Job("area_sums", dtype, (("CHUNK", chunk), ("BLOCK", block)), (("PARTIAL", acc),), 8))
    return list(dict.fromkeys(out))  # distinct, in order


def flags_set(job: Job) -> bool:
    """Whether every boolean flag of ``job`` is set (the variant with the most code)."""
    return all(v for _, v in job.consts if isinstance(v, bool))


def _size(job: Job) -> tuple:
    """Order of a job within its kernel: tile elements, then flags set (more code)."""
    tiles, flags = 1, 0
    for _, v in job.consts:
        if isinstance(v, bool):
            flags += v
        elif isinstance(v, int):
            tiles *= v
    return tiles, flags


def representative(jobs_: list[Job]) -> list[Job]:
    """Per kernel (attention backward: per KEYS), dtype and precision, the job with the
    largest tiles and, among those, the most flags set: where shared memory and registers
    peak."""
    best: dict[tuple, Job] = {}
    for job in jobs_:
        c = dict(job.consts)
        key = (job.kernel, c.get("KEYS"), job.dtype, c.get("PRECISION"))
        if key not in best or _size(job) > _size(best[key]):
            best[key] = job
    return list(best.values())


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Check that the grid of bench/kernel_configs.py finds every "
                                 "configuration random inputs select; print the configurations per family.")
    ap.add_argument("--samples", type=int, default=500, help="random inputs per family")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for family, found in selections().items():
        print(f"{family}: {len(found)} configuration(s)")
        for sel in sorted(found, key=str):
            print(f"  {sel}")
    missing = uncovered(args.samples, args.seed)
    print(f"{len(missing)} random selection(s) outside the grid" + "".join(f"\n  {m}" for m in missing[:50]))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
