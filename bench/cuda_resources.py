"""Resource usage of the CUDA kernels compiled into pdnet._C, without a GPU.

Reads ``cuobjdump -res-usage`` of the extension (one report per cubin: sm_80, sm_86,
sm_90 by default) and, from the extension itself, the launch configuration of each
attention kernel instantiation (``pdnet._C.cuda_kernel_smem()``: kernel name with its
template arguments, threads per block, dynamic shared memory in bytes), then checks
every attention kernel (name starting with ``attn_``) on every architecture:

* no register spill: STACK and LOCAL are 0;
* shared memory, static (cuobjdump) plus dynamic (the launcher's), fits what one block
  may use on sm_86 (RTX 3090: 101376 bytes with the opt-in) in the sm_86 cubin, and in
  every cubin when the build has none for sm_86 (the launchers pick the same tiles on
  every GPU; the 1 KB that sm_90 cubins reserve then counts too); every cubin also
  within its own architecture's limit;
* registers: threads x registers per thread, allocated per warp in units of 256, fit
  the 65536 registers a block may use, and threads fit 1024.

Usage::

    python bench/cuda_resources.py          # table of the attention kernels, then the check
    python bench/cuda_resources.py --all    # every kernel of the extension
    python bench/cuda_resources.py --binary part_attention_kernel.o   # one file built with nvcc -c

It exits 1 when a check fails. tests/test_cuda_resources.py runs the same checks.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: shared memory one block may use on sm_86 (and sm_89), bytes, with the opt-in
SM86_SMEM_PER_BLOCK = 101376
#: the same per compute capability x10 (other architectures: the sm_86 figure)
SMEM_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
#: registers one block may use (every architecture from sm_80 to sm_90)
REGS_PER_BLOCK = 65536
#: registers are allocated per warp, in units of this many
REG_ALLOC_UNIT = 256
MAX_THREADS_PER_BLOCK = 1024
#: the kernels the checks apply to: the attention kernels of csrc/ops/cuda/part_attention*
ATTENTION_PREFIX = "attn_"


@dataclass(frozen=True)
class KernelUsage:
    """One kernel of one cubin, as cuobjdump reports it."""

    arch: int  # compute capability x10
    mangled: str
    name: str  # base<template args> (demangled) or base (mangled only), no namespace
    regs: int
    stack: int
    shared: int  # static shared memory, bytes
    local: int


@dataclass(frozen=True)
class Launch:
    """One kernel instantiation as a launcher uses it (pdnet._C.cuda_kernel_smem())."""

    name: str
    threads: int
    dynamic_smem: int


# ----------------------------------------------------------------------------- cuobjdump
def find_cuobjdump() -> Path | None:
    """The cuobjdump shipped in Triton's package, else one on PATH or in $CUDA_HOME/bin."""
    spec = importlib.util.find_spec("triton")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc, "backends", "nvidia", "bin", "cuobjdump"))
    on_path = shutil.which("cuobjdump")
    if on_path:
        candidates.append(Path(on_path))
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


_FIELD = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")


def parse_res_usage(text: str, arch: int = 0) -> list[tuple[int, str, dict[str, int]]]:
    """(arch, mangled name, {"REG": .., "STACK": .., "SHARED": .., "LOCAL": .., ...}) per
    kernel of every ELF (cubin) section of ``cuobjdump -res-usage`` output; PTX sections
    carry no resource usage and are skipped. The output for a bare cubin has no section
    header: its kernels get ``arch``."""
    out = []
    in_elf = True
    function = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Fatbin "):
            in_elf = stripped.startswith("Fatbin elf code")
            arch, function = 0, None
        elif stripped.startswith("arch = sm_"):
            arch = int(re.match(r"arch = sm_(\d+)", stripped).group(1))
        elif stripped.startswith("Function ") and stripped.endswith(":"):
            function = stripped[len("Function ") : -1]
        elif function is not None and "REG:" in stripped:
            if in_elf:
                out.append((arch, function, {k: int(v) for k, v in _FIELD.findall(stripped)}))
            function = None
    return out


def mangled_base(mangled: str) -> str:
    """The unqualified function name of an Itanium-mangled name (``_ZN5pdnet3ops..15attn_fwd_kernelI..``
    -> ``attn_fwd_kernel``): the last length-prefixed identifier of its (nested) name."""
    m = re.match(r"_Z(N[rVK]*)?", mangled)
    if m is None:
        return mangled  # extern "C" kernel: not mangled
    pos, name = m.end(), mangled
    nested = m.group(1) is not None
    while pos < len(mangled):
        num = re.match(r"\d+", mangled[pos:])
        if num is None:
            break
        length = int(num.group())
        start = pos + len(num.group())
        name = mangled[start : start + length]
        pos = start + length
        if not nested:
            break
    return name


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside <>, () and []."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "<([":
            depth += 1
        elif c in ">)]":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(text[start:])
    return parts


def unqualified(demangled: str) -> str:
    """``void ns::(anonymous namespace)::attn_fwd_kernel<__half, 64>(__half const*, ...)``
    -> ``attn_fwd_kernel<__half, 64>``: no return type, namespaces or parameters."""
    s = demangled.strip()
    if s.endswith(")"):  # drop the parameter list: the last top-level (...)
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    last = _split_top(s, "::")[-1]
    return _split_top(last.strip(), " ")[-1]


def demangle(mangled: list[str]) -> dict[str, str]:
    """mangled -> unqualified name with template arguments, through c++filt; without
    c++filt (or where it leaves a name as it was) the mangled name's base name."""
    names = {m: mangled_base(m) for m in mangled}
    tool = shutil.which("c++filt")
    if tool and mangled:
        res = subprocess.run([tool], input="\n".join(mangled) + "\n", capture_output=True, text=True, check=False)
        lines = res.stdout.splitlines()
        if res.returncode == 0 and len(lines) == len(mangled):
            for m, d in zip(mangled, lines, strict=True):
                if d != m:
                    names[m] = unqualified(d)
    return names


def read_usage(so: Path, tool: Path) -> list[KernelUsage]:
    """Every kernel of every cubin in ``so``."""
    res = subprocess.run([str(tool), "-res-usage", str(so)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{tool} -res-usage {so} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    rows = parse_res_usage(res.stdout)
    names = demangle(sorted({m for _, m, _ in rows}))
    return [
        KernelUsage(arch, m, names[m], f.get("REG", 0), f.get("STACK", 0), f.get("SHARED", 0), f.get("LOCAL", 0))
        for arch, m, f in rows
    ]


# ----------------------------------------------------------------------------- launches
def base_of(name: str) -> str:
    """``attn_fwd_kernel<__half, 64>`` -> ``attn_fwd_kernel``."""
    return name.split("<", 1)[0].strip()


_SPELLINGS = {"half": "__half", "nv_bfloat16": "__nv_bfloat16", "__nv_half": "__half"}


def normalise(name: str) -> str:
    """A kernel name with template arguments in one spelling: no spaces, no integer
    suffixes or casts (``64u``, ``(int)64`` -> ``64``), ``half`` -> ``__half``..."""
    s = re.sub(r"\((?:unsigned |signed )?(?:int|long|short|char|long long)\)(?=-?\d)", "", name)
    s = re.sub(r"(?<![\w.])(-?\d+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU])(?!\w)", r"\1", s)
    s = re.sub(r"\s+", "", s).replace("(anonymousnamespace)::", "")
    s = re.sub(r"\b(?:\w+::)+(?=\w)", "", s)  # c10::Half -> Half, ::__half -> __half
    return re.sub(r"\b\w+\b", lambda m: _SPELLINGS.get(m.group(), m.group()), s)


def read_launches(module) -> list[Launch]:
    """The launch list of the extension, or RuntimeError saying what is missing or malformed."""
    fn = getattr(module, "cuda_kernel_smem", None)
    if fn is None:
        raise RuntimeError(
            "the extension does not report its kernels' launch configurations: pdnet._C.cuda_kernel_smem() "
            "(-> [(kernel name with template arguments, threads, dynamic shared memory bytes)]) is missing, "
            "so the dynamic shared memory and the threads per block cannot be checked"
        )
    launches = []
    for entry in fn():
        if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)
                and all(isinstance(x, int) for x in entry[1:])):
            raise RuntimeError(f"pdnet._C.cuda_kernel_smem(): {entry!r} is not (name: str, threads: int, bytes: int)")
        launches.append(Launch(*entry))
    return launches


# ----------------------------------------------------------------------------- checks
def block_registers(regs: int, threads: int) -> int:
    """Registers a block of ``threads`` takes: per warp, regs x 32 rounded up to the unit."""
    per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    return per_warp * -(-threads // 32)


def match(kernel: KernelUsage, launches: list[Launch]) -> tuple[list[Launch], bool]:
    """The launches of ``kernel`` and whether they name it exactly; when none does, every
    launch of its base name (whose largest shared memory and threads then bound it)."""
    same_base = [x for x in launches if base_of(x.name) == base_of(kernel.name)]
    exact = [x for x in same_base if normalise(x.name) == normalise(kernel.name)]
    return (exact, True) if exact else (same_base, False)


def smem_limit(arch: int, archs: set[int]) -> int:
    """Shared memory a block may use in the cubin for ``arch`` of a build holding ``archs``:
    sm_86's limit where the build cannot check it on an sm_86 cubin, else the arch's own."""
    if arch == 86 or 86 not in archs:
        return SM86_SMEM_PER_BLOCK
    return SMEM_PER_BLOCK.get(arch, SM86_SMEM_PER_BLOCK)


def attention(usage: list[KernelUsage]) -> list[KernelUsage]:
    """The attention kernels of ``usage``."""
    return [k for k in usage if base_of(k.name).startswith(ATTENTION_PREFIX)]


def static_problems(usage: list[KernelUsage]) -> list[str]:
    """What cuobjdump alone shows wrong in the attention kernels: spills, static shared memory."""
    attn = attention(usage)
    if not attn:
        return [f"no kernel named {ATTENTION_PREFIX}* in the extension's cubins: renamed, or not built"]
    problems = []
    archs = {k.arch for k in usage}
    for k in attn:
        limit = smem_limit(k.arch, archs)
        if k.stack or k.local:
            problems.append(f"sm_{k.arch} {k.name}: register spill (STACK {k.stack} B, LOCAL {k.local} B per thread)")
        if k.shared > limit:
            problems.append(f"sm_{k.arch} {k.name}: {k.shared} B of static shared memory, a block may use {limit} B")
    return problems


def launch_problems(usage: list[KernelUsage], launches: list[Launch]) -> list[str]:
    """What the launches make wrong: static + dynamic shared memory, threads x registers,
    an attention kernel without a launch or a launch of a kernel the cubins do not hold."""
    problems = []
    archs = {k.arch for k in usage}
    for k in attention(usage):
        where = f"sm_{k.arch} {k.name}"
        mine, _ = match(k, launches)
        if not mine:
            problems.append(f"{where}: pdnet._C.cuda_kernel_smem() does not report this kernel's launch")
            continue
        limit = smem_limit(k.arch, archs)
        dynamic = max(x.dynamic_smem for x in mine)
        threads = max(x.threads for x in mine)
        if k.shared + dynamic > limit:
            problems.append(f"{where}: {k.shared} B static + {dynamic} B dynamic shared memory per block, "
                            f"a block may use {limit} B")
        if not 0 < threads <= MAX_THREADS_PER_BLOCK:
            problems.append(f"{where}: {threads} threads per block (1..{MAX_THREADS_PER_BLOCK})")
        elif block_registers(k.regs, threads) > REGS_PER_BLOCK:
            problems.append(f"{where}: {threads} threads x {k.regs} registers = {block_registers(k.regs, threads)} "
                            f"allocated registers per block, a block may use {REGS_PER_BLOCK}")
    for x in launches:
        if not any(base_of(k.name) == base_of(x.name) for k in usage):
            problems.append(f"pdnet._C.cuda_kernel_smem() reports {x.name!r}, which no cubin of the extension holds")
        if x.dynamic_smem < 0:
            problems.append(f"pdnet._C.cuda_kernel_smem() reports {x.dynamic_smem} B for {x.name!r}")
    return problems


# ----------------------------------------------------------------------------- report
def table(usage: list[KernelUsage], launches: list[Launch] | None, everything: bool = False) -> str:
    """One line per kernel and architecture; dynamic smem and threads from the launches
    ('~': matched by base name only, the largest of them; '-': not reported)."""
    head = ("arch", "kernel", "regs", "stack", "local", "static smem", "dynamic smem", "threads", "block regs")
    rows = []
    for k in sorted(usage, key=lambda k: (k.arch, k.name)):
        if not everything and not base_of(k.name).startswith(ATTENTION_PREFIX):
            continue
        mine, exact = match(k, launches or [])
        if mine:
            mark = "" if exact else "~"
            dyn, threads = max(x.dynamic_smem for x in mine), max(x.threads for x in mine)
            extra = (f"{mark}{dyn}", f"{mark}{threads}", str(block_registers(k.regs, threads)))
        else:
            extra = ("-", "-", "-")
        rows.append((f"sm_{k.arch}", k.name, str(k.regs), str(k.stack), str(k.local), str(k.shared), *extra))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    return "\n".join(lines)


def load_extension():
    """pdnet._C (imported after torch, whose libraries it links)."""
    import torch  # noqa: F401

    return importlib.import_module("pdnet._C")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="list every kernel, not only the attention kernels")
    ap.add_argument("--binary", type=Path, default=None,
                    help="read this object, cubin or library (e.g. one .cu compiled with nvcc -c) instead of the "
                    "installed extension: the static checks only, its launches are unknown")
    args = ap.parse_args(argv)
    tool = find_cuobjdump()
    if tool is None:
        print("cuobjdump not found (Triton's package, PATH, $CUDA_HOME/bin)", file=sys.stderr)
        return 2
    module = None
    if args.binary is None:
        module = load_extension()
        if not getattr(module, "with_cuda", 0):
            print(f"{module.__file__}: built without CUDA kernels, nothing to check")
            return 0
    usage = read_usage(args.binary or Path(module.__file__), tool)
    problems = static_problems(usage)
    launches = None
    if module is not None:
        try:
            launches = read_launches(module)
            problems += launch_problems(usage, launches)
        except RuntimeError as exc:
            problems.insert(0, str(exc))
    print(table(usage, launches, everything=args.all))
    print(f"\n{len(problems)} problem(s)" + "".join(f"\n  {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
