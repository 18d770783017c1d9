"""The CUDA attention kernels on a CPU emulator of their device code (tests/cuda_emu).

No GPU is needed: the kernels (tensor-core ones with mma.sync, ldmatrix, cp.async and warp
shuffles; the float32 ones; the backward's delta kernel) compile as host C++ with g++ against the
emulator, whose PTX instructions follow the PTX ISA, and run through the extension's own
launchers (head-dim dispatch, tiles, grid, launch-shape record), with their host functions' ATen
parts compiled out. Outputs and gradients are compared with the float64 reference by
tests/ops/cases.py's tolerance rule. The emulator stops on a deadlock, a divergent warp
collective, a mismatched __syncthreads, a misaligned or out-of-range shared-memory address, a
cp.async read outside the inputs and a cp.async / ldmatrix race between warps; unwritten outputs
stay NaN. Slow variants build it with AddressSanitizer and UBSan, and with a race check of every
shared-memory load and store. The self-test checks the emulator's mma against the fragment layout
documented in mma_sm80.cuh, the loaders against plain matrix products, and that each class of bug
is caught.

The drivers are built once per state of their sources (build/cuda_emu/<hash>); the tests skip
with the reason when g++ or the CUDA headers are missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ops import cases as C  # tests/ops/cases.py

from pdnet.ops import reference

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "tests" / "cuda_emu"
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
FLAGS = [
    "-std=c++20",
    "-O1",
    "-DPDNET_CUDA_EMULATION",
    "-Wall",
    "-Wno-unknown-pragmas",
    # the extension's flags: kernels must not rely on the half-precision operators
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]
TYPE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _sources() -> list[Path]:
    return sorted(
        [
            *EMU.glob("*.h"),
            *EMU.glob("*.cpp"),
            *(ROOT / "csrc" / "ops" / "cuda").glob("*.cu*"),  # the drivers include the attention .cu files
            ROOT / "csrc" / "ops" / "kernel_smem.h",
        ]
    )


def _build(name: str, extra: tuple[str, ...] = (), link: tuple[str, ...] = ()) -> Path:
    """tests/cuda_emu/<name>.cpp compiled with g++ (FLAGS and `extra`), linked with `link`; cached
    by a hash of the flags and every source."""
    flags = [*FLAGS, *extra]
    digest = hashlib.sha256(" ".join([*flags, "/", *link]).encode())
    for path in _sources():
        digest.update(path.name.encode() + path.read_bytes())
    out = ROOT / "build" / "cuda_emu" / digest.hexdigest()[:16] / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    obj, tmp = out.with_suffix(f".{os.getpid()}.o"), out.with_suffix(f".{os.getpid()}.tmp")
    for cmd in (
        ["g++", *flags, f"-I{CUDA_INCLUDE}", f"-I{EMU}", "-c", str(EMU / f"{name}.cpp"), "-o", str(obj)],
        ["g++", *link, str(obj), "-o", str(tmp)],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"building the emulator's {name}: {' '.join(cmd)}\n{res.stderr[-6000:]}"
    obj.unlink()
    os.replace(tmp, out)
    return out


#: every load and store of shared memory checked for races (cuda_emu_races.h)
RACES = ("-DPDNET_EMU_RACES", "-fsanitize=thread")
#: AddressSanitizer and UBSan
SANITIZERS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")


def _require_toolchain() -> None:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed: the CUDA emulator is built with it")
    if not (CUDA_INCLUDE / "cuda_fp16.h").exists():
        pytest.skip(f"no CUDA headers at {CUDA_INCLUDE} (cuda_fp16.h; set CUDA_HOME)")


@pytest.fixture(scope="session")
def selftest() -> Path:
    _require_toolchain()
    return _build("selftest")


@pytest.fixture(scope="session")
def attention() -> Path:
    _require_toolchain()
    return _build("attention")


def _run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


# --------------------------------------------------------------------------- the emulator itself
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("case", ["fragments", "gemm"])
def test_selftest(selftest, case, dtype):
    res = _run([selftest, dtype, case])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("no_wait", 3, "cp.async into them is in flight"),
        ("no_sync", 3, "since the last __syncthreads"),  # warp 0 reads rows before warp 1 copies them
        ("divergent", 3, "divergent warp collective"),
        ("deadlock", 3, "deadlock: no thread can proceed"),
        ("mismatched", 3, "__syncthreads at"),
        ("misaligned", 3, "not 16-byte aligned"),
    ],
)
def test_emulator_catches(selftest, case, status, message):
    res = _run([selftest, "bf16", case])
    assert res.returncode == status, res.stdout + res.stderr
    assert message in res.stderr


def test_race_detection(selftest):
    """Built with race detection, a plain store read by another warp with no barrier, and an output
    byte written by two blocks, are caught."""
    raced = _build("selftest", RACES)
    assert _run([raced, "bf16", "gemm"]).returncode == 0
    res = _run([raced, "bf16", "plain_race"])
    assert res.returncode == 3 and "shared-memory race" in res.stderr, res.stdout + res.stderr
    res = _run([raced, "bf16", "two_owners"])
    assert res.returncode == 3 and "written by block 0 and by this block" in res.stderr, res.stdout + res.stderr
    assert _run([selftest, "bf16", "two_owners"]).returncode == 0  # not checked without race detection


# --------------------------------------------------------------------------- the attention kernels
def _write(t: torch.Tensor, path: Path) -> None:
    path.write_bytes(
        t.detach().contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32).numpy().tobytes()
    )


def _read(path: Path, shape, dtype: torch.dtype) -> torch.Tensor:
    raw = np.fromfile(path, dtype=np.int16 if dtype in C.LOW_PRECISION else np.int32)  # bit patterns
    return torch.from_numpy(raw).view(dtype).reshape(shape)


class Emulated:
    """part_attention's CUDA forward and backward as the extension's host functions launch the
    kernels, on the emulator (tests/cuda_emu/attention.cpp)."""

    def __init__(self, driver: Path, workdir: Path, misalign: bool = False, env: dict | None = None):
        self.driver, self.dir, self.misalign, self.env = driver, workdir, misalign, env
        self.launches: list[str] = []  # the driver's line per kernel launch

    def _call(self, op: str, q, k, scale, key_mask, grad_lse=None) -> None:
        for name, t in (("q", q), ("k", k), ("mask", key_mask), ("dlse", grad_lse)):
            if t is not None:
                _write(t.float() if name in ("mask", "dlse") else t, self.dir / name)
        flags = "m" * (key_mask is not None) + "l" * (grad_lse is not None) + "a" * self.misalign
        B, p, Nq, d = q.shape
        cmd = [self.driver, op, TYPE[q.dtype], B * p, Nq, k.shape[2], d, repr(float(scale)), flags or "-", self.dir]
        res = _run(cmd, self.env)
        assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout}{res.stderr}"
        self.launches += res.stdout.splitlines()

    def forward(self, q, k, v, scale, key_mask):
        _write(v, self.dir / "v")
        self._call("fwd", q, k, scale, key_mask)
        return _read(self.dir / "out", q.shape, q.dtype), _read(self.dir / "lse", q.shape[:3], torch.float32)

    def backward(self, grad_out, grad_lse, q, k, v, out, lse, scale, key_mask):
        """dq, dk, dv and dmask (in the mask's dtype; None without a mask)."""
        for name, t in (("v", v), ("dout", grad_out), ("out", out), ("lse", lse)):
            _write(t, self.dir / name)
        self._call("bwd", q, k, scale, key_mask, grad_lse)
        grads = [_read(self.dir / n, t.shape, q.dtype) for n, t in (("dq", q), ("dk", k), ("dv", v))]
        if key_mask is None:
            return (*grads, None)
        return (*grads, _read(self.dir / "dmask", key_mask.shape, torch.float32).to(key_mask.dtype))


def against_reference(emu: Emulated, case: C.Case, dtype: torch.dtype, seed: int = 0, with_lse: bool = False) -> None:
    """out, lse and every gradient of the emulated kernels against the float64 reference on the same
    inputs, with cases.assert_matches (PyTorch's own error at dtype as the yardstick); with_lse: the
    upstream gradient also flows through lse."""
    args, kwargs = C.make_inputs(case, "cpu", dtype, requires_grad=True, seed=seed)
    q, k, v = args
    scale, key_mask = kwargs["scale"], kwargs["key_mask"]
    out, lse = emu.forward(q, k, v, scale, key_mask)
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    cot_lse = torch.randn(lse.shape, generator=gen, dtype=torch.float64).float() if with_lse else None
    grads = emu.backward(cot, cot_lse, q, k, v, out, lse, scale, key_mask)
    got = [out, *(g for g in grads if g is not None)]

    def results(at: torch.dtype) -> list[torch.Tensor]:
        a, kw = C.cast(args, kwargs, at)
        o, s = reference.part_attention(*a, **kw, return_lse=True)
        loss = (o * cot.to(at)).sum()
        if with_lse:
            loss = loss + (s * cot_lse.to(s.dtype)).sum()
        wrt = C.grad_inputs(a, kw)
        return [o.detach(), s.detach(), *torch.autograd.grad(loss, wrt)]

    ref, low = results(torch.float64), results(dtype)
    names = ["out", "dq", "dk", "dv", "dmask"]
    C.assert_matches(lse, ref[1], None, name=f"{case.name}/lse")
    for i, (a, r, pt) in enumerate(zip(got, [ref[0], *ref[2:]], [low[0], *low[2:]], strict=True)):
        C.assert_matches(a, r, pt.to(dtype), grad=i > 0, name=f"{case.name}/{TYPE[dtype]} {names[i]}")


def _case(name, B, p, Nq, Nk, d, key_mask="random", scale=0.5):
    return C.Case(
        "part_attention", name, "awkward", dict(B=B, p=p, Nq=Nq, Nk=Nk, d=d), dict(key_mask=key_mask, scale=scale)
    )


#: the tiles' edges: 64 queries (forward, dQ) and 64 keys (dK / dV) per block, key / query tiles of
#: 64 (32 at d = 128), and every head-dim instantiation (d rounded up to 32, 64, 128)
BOUNDARY = [
    _case("tiles_64", 1, 2, 64, 64, 32),
    _case("tiles_65_63_d33", 1, 2, 65, 63, 33),
    _case("tiles_128_129_d16", 1, 2, 128, 129, 16, scale=1.0),
    _case("tiles_129_128_d64", 1, 2, 129, 128, 64, scale=0.125),
    _case("tiles_1_65_d128", 1, 2, 1, 65, 128, scale=0.088),
    _case("tiles_127_3_d100", 1, 2, 127, 3, 100, key_mask=None, scale=0.1),
    _case("tiles_33_97_d128_fully_masked", 2, 3, 33, 97, 128, key_mask="rows_fully_masked", scale=0.088),
]
#: the awkward cases of tests/ops/cases.py with inputs (the empty ones never reach the kernels)
AWKWARD = [c for c in C.cases("part_attention", "awkward") if not c.empty]
SLOW = {"leading_keys_masked", "head_dim_128"}  # about 3 s each on the emulator


def _params(cases, dtypes, slow=()):
    """(case, dtype) params; slow for the cases in SLOW and for the dtypes in `slow`."""
    return [
        pytest.param(c, dt, id=f"{c.name}-{TYPE[dt]}", marks=[pytest.mark.slow] if c.name in SLOW or dt in slow else [])
        for c in cases
        for dt in dtypes
    ]


@pytest.fixture
def emulated(attention, tmp_path):
    return Emulated(attention, tmp_path)


@pytest.mark.parametrize(
    "case, dtype",
    _params(AWKWARD, (torch.bfloat16, torch.float16, torch.float32), slow=(torch.float16, torch.float32))
    + _params(BOUNDARY, (torch.bfloat16, torch.float16, torch.float32), slow=(torch.float16,)),
)
def test_attention(emulated, case, dtype):
    against_reference(emulated, case, dtype)


@pytest.mark.slow
def test_attention_model_shape(emulated):
    """The model's shapes (B = 2, p = 5, 900 queries and keys, d = 32, a key mask): about a minute."""
    against_reference(emulated, C.cases("part_attention", "model")[-1], torch.bfloat16)


@pytest.mark.parametrize(
    "case, dtype", _params(C.cases("part_attention", "nonfinite"), (torch.bfloat16, torch.float32))
)
def test_attention_nonfinite(emulated, case, dtype):
    """NaN and inf where the reference has them, fully masked heads 0 with lse -inf."""
    against_reference(emulated, case, dtype)


def test_attention_grad_lse(emulated):
    """The upstream gradient of lse reaches the kernels through delta."""
    against_reference(emulated, _case("grad_lse", 1, 2, 70, 90, 64), torch.float16, with_lse=True)


def test_ldmatrix_conflict_free(emulated):
    """The tensor-core kernels' padded tiles (row stride D + 8) put the 8 rows of every ldmatrix
    matrix in distinct banks, at every head dim."""
    for case in (BOUNDARY[0], BOUNDARY[3], BOUNDARY[4]):  # D = 32, 64, 128
        against_reference(emulated, case, torch.bfloat16)
    mma = [line for line in emulated.launches if "_mma_kernel" in line]
    assert len(mma) == 9 and all(line.endswith(" 0 bank conflicts") for line in mma), "\n".join(mma)
    assert all(" 0 matrices" not in line for line in mma)


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow), torch.float32])
def test_attention_misaligned(attention, tmp_path, dtype):
    """Inputs off 16-byte boundaries: the launchers' element-wise path instead of cp.async."""
    emu = Emulated(attention, tmp_path, misalign=True)
    for case in (BOUNDARY[1], BOUNDARY[3]):
        against_reference(emu, case, dtype)


SCHEDULES = [("reverse", "early"), ("random:1", "late"), ("random:2", "early")] + [
    pytest.param(f"random:{seed}", copies, marks=pytest.mark.slow)
    for seed in range(3, 11)
    for copies in ("late", "early")
]


@pytest.mark.parametrize("schedule, copies", SCHEDULES)
def test_attention_schedules(attention, tmp_path, schedule, copies):
    """Other orders of the threads and of the cp.async copies: a missing barrier or wait shows
    under one of them (inputs drawn from the seed too)."""
    emu = Emulated(attention, tmp_path, env={"PDNET_EMU_SCHEDULE": schedule, "PDNET_EMU_CP_ASYNC": copies})
    seed = int(schedule.split(":")[1]) if ":" in schedule else 0
    for case in (BOUNDARY[1], BOUNDARY[4], BOUNDARY[6]):
        against_reference(emu, case, torch.bfloat16, seed=seed)


@pytest.mark.slow
def test_attention_sanitized(tmp_path):
    """The kernels built with AddressSanitizer and UBSan (about 90 s to build): no global array is
    read or written out of bounds, no shared memory past the launch's size is touched, no
    undefined behaviour, aligned or not."""
    _require_toolchain()
    sanitized = _build("attention", SANITIZERS, SANITIZERS)
    for misalign in (False, True):
        emu = Emulated(sanitized, tmp_path, misalign=misalign, env={"ASAN_OPTIONS": "detect_leaks=0"})
        for dtype in (torch.bfloat16, torch.float32):
            for case in (BOUNDARY[1], BOUNDARY[4], BOUNDARY[6]):
                against_reference(emu, case, dtype)


@pytest.mark.slow
def test_attention_races(tmp_path):
    """Every load and store of shared memory checked for races between warps (cuda_emu_races.h)."""
    _require_toolchain()
    raced = _build("attention", RACES)
    for env in ({}, {"PDNET_EMU_SCHEDULE": "reverse", "PDNET_EMU_CP_ASYNC": "early"}):
        emu = Emulated(raced, tmp_path, env=env)
        for dtype in (torch.bfloat16, torch.float32):
            for case in (BOUNDARY[1], BOUNDARY[4], BOUNDARY[6]):
                against_reference(emu, case, dtype)
    against_reference(Emulated(raced, tmp_path, misalign=True), BOUNDARY[3], torch.float16)
