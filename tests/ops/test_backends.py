"""The ops' backends as a whole: which are built, what `auto` picks, the errors naming
what is missing, the C++ extension's instruction-set builds, and a whole PDNet on each
kernel backend against the reference."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pdnet
import pdnet.ops

from . import cases as C
from . import checks

TESTS = Path(__file__).resolve().parents[1]


def _run_python(script: str, **env) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter (OMP_NUM_THREADS=1, plus ``env``; None removes a variable)."""
    full = dict(os.environ, OMP_NUM_THREADS="1")
    for key, value in env.items():
        full.pop(key, None) if value is None else full.__setitem__(key, value)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full, capture_output=True,
                          text=True, timeout=300)


def test_extension_is_built_where_a_compiler_is_present():
    """With a C++ compiler here the extension must be built: this fails (never skips) when
    pdnet._C does not load, so that a broken build cannot pass as "no extension"."""
    compiler = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)
    if compiler is None:
        pytest.skip("no C++ compiler on PATH: the extension cannot be built here")
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        with pytest.raises(RuntimeError) as why:
            pdnet.ops.area_variance(torch.rand(1, 2, 3, 3), backend="cpp")
        pytest.fail(f"{compiler} is on PATH but the cpp backend is not available: {why.value}")
    importlib.import_module("pdnet._C")  # the module the backend loads


def test_reference_everywhere_and_triton_on_cpu_only_interpreted():
    for device in checks.DEVICES:
        assert "reference" in pdnet.ops.available_backends(device)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if "triton" in pdnet.ops.available_backends():
        assert ("triton" in pdnet.ops.available_backends("cpu")) == interpreted


def test_auto_on_cpu_takes_the_compiled_kernels_never_the_interpreter():
    """backend="auto" on CPU runs the C++ kernels when built, else the reference; never
    Triton's interpreter."""
    for op in C.OPS:
        calls = checks.raw_op_calls(op, "auto", "cpu", torch.float32)
        namespaces = {func.namespace for func, _, _ in calls}
        assert "pdnet_triton" not in namespaces, op
        assert ("pdnet" in namespaces) == ("cpp" in pdnet.ops.available_backends("cpu")), (op, namespaces)


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'fastest'.*'reference'"):
        pdnet.ops.area_variance(torch.rand(1, 2, 3, 3), backend="fastest")


@pytest.mark.slow
def test_without_the_extension_one_warning_and_the_reference():
    """pdnet._C missing: one warning, backend "cpp" gone (its error names why and what is
    available), "auto" runs the reference."""
    res = _run_python(
        """
        import sys, warnings
        sys.modules["pdnet._C"] = None  # as if the extension were not built
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import torch, pdnet.ops as ops
        msgs = [str(x.message) for x in w if "pdnet._C" in str(x.message)]
        assert len(msgs) == 1, msgs
        assert "cpp" not in ops.available_backends(), ops.available_backends()
        q = torch.randn(1, 1, 3, 4)
        assert ops.part_attention(q, q, q).shape == (1, 1, 3, 4)
        try:
            ops.part_attention(q, q, q, backend="cpp")
        except RuntimeError as e:
            assert "not available" in str(e) and "not built" in str(e) and "reference" in str(e), e
        else:
            raise AssertionError("backend='cpp' should fail")
        print("ok")
        """
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_triton_without_a_gpu_or_the_interpreter_names_the_fix():
    res = _run_python(
        """
        import torch, pdnet.ops as ops
        try:
            ops.part_masks(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), backend="triton")
        except RuntimeError as e:
            assert "TRITON_INTERPRET=1" in str(e), e
        else:
            raise AssertionError("backend='triton' should fail")
        print("ok")
        """,
        TRITON_INTERPRET=None,
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


ISAS = ("default", "avx2", "avx512")


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_each_cpu_instruction_set_build(isa):
    """The C++ CPU kernels of each instruction set (ATen's capability, the best one in
    this process) against the reference: every op on awkward cases, output and gradients."""
    if "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built (test_extension_is_built... fails then)")
    from pdnet.ops import _cpp_backend

    best = _cpp_backend.cpu_isa().lower()
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this processor or build has no {isa} table (best: {best})")
    res = _run_python(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import torch
        from pdnet.ops import _cpp_backend
        from ops import cases as C, checks
        print(_cpp_backend.cpu_isa())
        for op in C.OPS:
            for case in C.cases(op, "awkward"):
                if not case.empty and C.size(case) < 30_000:
                    for dtype in (torch.float32, torch.float64):
                        checks.against_reference(case, "cpp", "cpu", dtype)
        print("ok")
        """,
        ATEN_CPU_CAPABILITY=isa,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-2:] == [isa.upper(), "ok"], res.stdout


# --------------------------------------------------------------------------- a whole model
def _pdnet_step(backend: str, device: str):
    """resnet18 PDNet at 64 x 64: training outputs, loss, parameter gradients and eval predictions."""
    from pdnet import losses

    torch.manual_seed(0)
    cfg = pdnet.PDNetConfig(backbone="resnet18", parts=5, input_size=(64, 64), ops_backend=backend)
    model = pdnet.PDNet(cfg).to(device).train()
    basis = losses.PartBasis(5, 512).to(device)
    gen = torch.Generator().manual_seed(1)
    t, r = (torch.randn(2, 3, 64, 64, generator=gen).to(device) for _ in range(2))
    mt = torch.zeros(2, 1, 64, 64, device=device)
    mt[:, :, 16:48, 20:44] = 1
    mr = torch.roll(mt, 3, dims=-1)
    ft, fr = (torch.randn(2, 512, 2, 2, generator=gen).to(device) for _ in range(2))
    out = model.train_outputs(t, r)
    loss = losses.video_step_loss(out, mt, mr, ft, fr, basis(), model.config.loss_variant, backend=backend)
    loss["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        pred = model.eval()(t, r)
    return out["pred"].detach(), pred, loss["total"].detach(), grads


COMPILED_OR_GPU = [(b, d) for b, d in checks.KERNEL_BACKEND_DEVICES if (b, d) != ("triton", "cpu")]


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", checks.backend_params(COMPILED_OR_GPU))
def test_pdnet_matches_the_reference(backend, device):
    """A training step and an eval forward of PDNet with the kernel backend and with the
    reference: outputs, loss and every parameter gradient."""
    o_k, p_k, l_k, g_k = _pdnet_step(backend, device)
    o_r, p_r, l_r, g_r = _pdnet_step("reference", device)
    torch.testing.assert_close(o_k, o_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p_k, p_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l_k, l_r, atol=1e-5, rtol=1e-5)
    assert g_k.keys() == g_r.keys()
    for name in g_r:
        scale = g_r[name].abs().max().clamp_min(1e-6)
        assert (g_k[name] - g_r[name]).abs().max() <= 1e-3 * scale + 1e-6, name


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("op", ["part_masks", "assemble_parts", "area_variance"])
def test_cuda_cpp_backward_ops_check_the_device_of_the_upstream_gradient(op):
    """The dispatcher picks the CUDA kernel when any argument is on CUDA: an upstream
    gradient on the CPU must be a clear error, not a host pointer read on the device (a
    0-dim one, area_variance's loss gradient, is fine)."""
    if "cpp" not in pdnet.ops.available_backends("cuda"):
        pytest.skip("the cpp backend has no CUDA kernels here")
    (func, args, kwargs), = [c for c in checks.raw_op_calls(op, "cpp", "cuda", torch.float32)
                             if c[0].name().endswith("_backward")]
    grad = args[0]
    moved = (grad.cpu(), *args[1:])
    if grad.dim() == 0:
        torch.testing.assert_close(func(*moved, **kwargs), func(*args, **kwargs))
    else:
        with pytest.raises(RuntimeError, match="same device"):
            func(*moved, **kwargs)
