"""The C++ extension's CUDA kernels (backend "cpp" on CUDA tensors); skipped without a GPU.

float16 / bfloat16 follow the project's tolerance rule against a float64 reference:
max|out - ref| <= 2 * max|pytorch_same_precision - ref| (3x for gradients);
float32 (FMA path, no TF32) is held to fixed tolerances.
"""
from __future__ import annotations

import pytest
import torch

from pdnet import ops
from pdnet.ops import _cpp_backend as cpp
from pdnet.ops import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        cpp._C is None or not getattr(cpp._C, "with_cuda", 0),
        reason="pdnet._C not loaded or built without CUDA kernels",
    ),
]

INF = float("inf")
LOW = (torch.float16, torch.bfloat16)


def _check(out, pt, r, factor, name):
    """out, pt (PyTorch at the same precision) against r (float64)."""
    err = (out.double() - r).abs().max().item()
    if out.dtype in LOW:
        bound = factor * (pt.double() - r).abs().max().item() + 1e-6
    else:
        bound = 2e-4 * max(1.0, r.abs().max().item())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} ({out.dtype})"


def _attention_case(B, p, Nq, Nk, d, dtype, masked, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q64, k64, v64 = (torch.randn(B, p, n, d, generator=g, dtype=torch.float64) for n in (Nq, Nk, Nk))
    m64 = None
    if masked:
        m64 = torch.randn(B, p, Nk, generator=g, dtype=torch.float64)
        m64[..., : Nk // 4] = -INF
        m64[..., -1] = 0.0
    cot64 = torch.randn(B, p, Nq, d, generator=g, dtype=torch.float64)

    def run(fn, dt, device):
        ins = [t.to(device, dt).requires_grad_() for t in (q64, k64, v64)]
        mk = m64.to(device, torch.float32).requires_grad_() if masked else None
        out = fn(*ins, scale, mk)
        grads = torch.autograd.grad(out, ins + ([mk] if masked else []), cot64.to(device, dt))
        return [out] + list(grads)

    res = run(lambda *a: ops.part_attention(*a, backend="cpp"), dtype, "cuda")
    pt = run(ref.part_attention, dtype, "cuda")
    r = [t.double().cpu() for t in run(ref.part_attention, torch.float64, "cpu")]
    return res, pt, r


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [(2, 5, 900, 900, 32), (1, 1, 1, 1, 16), (2, 3, 37, 53, 20), (1, 2, 200, 7, 64), (2, 1, 70, 300, 128),
     (1, 2, 97, 130, 8), (1, 1, 33, 65, 40), (1, 2, 48, 80, 100)],
)
@pytest.mark.parametrize("masked", [False, True])
def test_part_attention_cuda_matches_reference(dtype, shape, masked):
    res, pt, r = _attention_case(*shape, dtype, masked)
    names = ["out", "dq", "dk", "dv", "dmask"]
    for i, (a, b, c) in enumerate(zip(res, pt, r)):
        _check(a.cpu(), b.cpu(), c, 2 if i == 0 else 3, names[i])


def test_part_attention_cuda_fully_masked_rows():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 32, generator=g).cuda().half().requires_grad_() for n in (11, 13, 13))
    mask = torch.zeros(2, 3, 13, device="cuda")
    mask[0, 1] = -INF
    mask.requires_grad_()
    out, lse = torch.ops.pdnet.part_attention(q, k, v, 1.0, mask)
    assert torch.all(out[0, 1] == 0) and torch.all(lse[0, 1] == -INF)
    grads = torch.autograd.grad(out, (q, k, v, mask), torch.randn_like(out))
    for t in (out,) + grads:
        assert torch.isfinite(t).all()
    assert torch.all(grads[0][0, 1] == 0)


def test_part_attention_cuda_matches_cpu_kernels_and_lse():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 5, n, 32, generator=g) for n in (100, 120, 120))
    mask = torch.randn(2, 5, 120, generator=g)
    o_cpu, l_cpu = torch.ops.pdnet.part_attention(q, k, v, 1.0, mask)
    o_gpu, l_gpu = torch.ops.pdnet.part_attention(q.cuda(), k.cuda(), v.cuda(), 1.0, mask.cuda())
    torch.testing.assert_close(o_gpu.cpu(), o_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, atol=1e-4, rtol=1e-4)


def test_part_attention_cuda_runs_on_the_current_stream_and_device():
    q = torch.randn(2, 5, 300, 32, device="cuda", dtype=torch.float16)
    expect = ops.part_attention(q, q, q, backend="cpp")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = ops.part_attention(q, q, q, backend="cpp")
    s.synchronize()
    torch.testing.assert_close(got, expect)
    if torch.cuda.device_count() > 1:
        q1 = q.to("cuda:1")
        torch.testing.assert_close(ops.part_attention(q1, q1, q1, backend="cpp").cpu(), expect.cpu())


def test_cuda_float64_is_a_clear_error():
    q = torch.randn(1, 1, 4, 8, device="cuda", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 and bfloat16"):
        torch.ops.pdnet.part_attention(q, q, q, 1.0, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_small_ops_cuda_match_reference(dtype):
    g = torch.Generator().manual_seed(3)
    cases = [
        (lambda x, s: cpp.part_masks(x, s, True), lambda x, s: ref.part_masks(x, s, True),
         [torch.randn(2, 5, 33, 47, generator=g, dtype=torch.float64), torch.randn(2, 1, 33, 47, generator=g, dtype=torch.float64)]),
        (lambda x, s: cpp.part_masks(x, s, False), lambda x, s: ref.part_masks(x, s, False),
         [torch.randn(2, 5, 33, 47, generator=g, dtype=torch.float64), torch.rand(2, 1, 33, 47, generator=g, dtype=torch.float64)]),
        (cpp.assemble_parts, ref.assemble_parts,
         [torch.randn(2, 5, 16, 30, 30, generator=g, dtype=torch.float64), torch.randn(2, 5, 16, 30, 30, generator=g, dtype=torch.float64),
          torch.rand(2, 5, 30, 30, generator=g, dtype=torch.float64)]),
        (cpp.area_variance, ref.area_variance, [torch.rand(3, 5, 61, 67, generator=g, dtype=torch.float64)]),
    ]
    for f_cpp, f_ref, ins64 in cases:
        def run(fn, dt, device):
            ins = [t.to(device, dt).requires_grad_() for t in ins64]
            out = fn(*ins)
            cot = torch.ones_like(out) if out.dim() == 0 else torch.linspace(-1, 1, out.numel(), device=device, dtype=dt).view_as(out)
            return [out] + list(torch.autograd.grad(out, ins, cot))

        res, pt = run(f_cpp, dtype, "cuda"), run(f_ref, dtype, "cuda")
        r = [t.double().cpu() for t in run(f_ref, torch.float64, "cpu")]
        for i, (a, b, c) in enumerate(zip(res, pt, r)):
            _check(a.cpu(), b.cpu(), c, 2 if i == 0 else 3, f"{f_ref.__name__}[{i}]")


def test_opcheck_cuda():
    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g).cuda().requires_grad_()  # noqa: E731
    samples = [
        (torch.ops.pdnet.part_attention.default, (r(2, 3, 7, 32), r(2, 3, 9, 32), r(2, 3, 9, 32), 0.5, torch.randn(2, 3, 9, device="cuda"))),
        (torch.ops.pdnet.part_masks.default, (r(2, 4, 5, 6), r(2, 1, 5, 6), True)),
        (torch.ops.pdnet.assemble_parts.default, (r(2, 3, 4, 5, 6), r(2, 3, 4, 5, 6), r(2, 3, 5, 6))),
        (torch.ops.pdnet.area_variance.default, (torch.rand(2, 3, 5, 6, device="cuda", requires_grad=True),)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_cuda_kernels_agree_with_triton_backend():
    if "triton" not in ops.available_backends("cuda"):
        pytest.skip("no triton backend")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 5, 900, 32, generator=g).cuda().bfloat16() for _ in range(3))
    torch.testing.assert_close(ops.part_attention(q, k, v, backend="cpp").float(),
                               ops.part_attention(q, k, v, backend="triton").float(), atol=2e-2, rtol=2e-2)
    x, s = torch.randn(2, 5, 120, 120, device="cuda"), torch.randn(2, 1, 120, 120, device="cuda")
    torch.testing.assert_close(ops.part_masks(x, s, backend="cpp"), ops.part_masks(x, s, backend="triton"), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ launch limits, devices, determinism
def _heads_match_reference(res, ins, mask, cot, heads):
    """res = [out, dq, dk, dv, dmask] of the whole batch; the listed heads (b, k) against
    the float64 reference run on those heads alone (heads are independent)."""
    for b, k in heads:
        sl = lambda t: t[b : b + 1, k : k + 1].detach().double().requires_grad_()  # noqa: E731
        q, kk, v, m = sl(ins[0]), sl(ins[1]), sl(ins[2]), sl(mask)
        out = ref.part_attention(q, kk, v, 0.5, m)
        r = [out] + list(torch.autograd.grad(out, (q, kk, v, m), cot[b : b + 1, k : k + 1].double()))
        for name, a, c in zip(["out", "dq", "dk", "dv", "dmask"], res, r):
            _check(a[b : b + 1, k : k + 1].cpu(), None, c.cpu(), 0, f"{name} head {(b, k)}")


@pytest.mark.parametrize("Nq, Nk", [(16400, 40), (40, 16400)])
def test_part_attention_cuda_more_than_65535_blocks(Nq, Nk):
    """B = 32, p = 8 and N = 16400 (above the model's 14400): more than 65535 query blocks
    (forward) or key blocks (backward) in the 1-D grid; first, middle and last heads."""
    B, p, d = 32, 8, 32
    g = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(B, p, Nq, d, device="cuda", generator=g).requires_grad_()
    k, v = (torch.randn(B, p, Nk, d, device="cuda", generator=g).requires_grad_() for _ in range(2))
    mask = torch.randn(B, p, Nk, device="cuda", generator=g)
    mask[..., :3] = -INF
    mask.requires_grad_()
    cot = torch.randn(B, p, Nq, d, device="cuda", generator=g)
    out = ops.part_attention(q, k, v, 0.5, mask, backend="cpp")
    res = [out] + list(torch.autograd.grad(out, (q, k, v, mask), cot))
    _heads_match_reference(res, (q, k, v), mask, cot, [(0, 0), (17, 3), (B - 1, p - 1)])


def test_assemble_parts_cuda_beyond_int32_indexing():
    """B = 32, p = 5, C = 64, 480 x 480: 2.36e9 feature elements, past int32 indexing; the
    last batch element (offsets above 2**31) against the reference, forward and backward."""
    B, p, C, h, w = 32, 5, 64, 480, 480
    need = 3 * B * p * C * h * w * 2 + 2 * B * C * h * w * 2  # p, y, grad_feats + out, grad_out (fp16)
    if torch.cuda.get_device_properties(0).total_memory < need * 1.3:
        pytest.skip(f"needs about {need * 1.3 / 2**30:.0f} GiB of GPU memory")
    g = torch.Generator(device="cuda").manual_seed(8)
    pf = torch.randn(B, p, C, h, w, device="cuda", dtype=torch.float16, generator=g)
    yf = torch.randn(B, p, C, h, w, device="cuda", dtype=torch.float16, generator=g)
    m = torch.rand(B, p, h, w, device="cuda", dtype=torch.float16, generator=g)
    out = torch.ops.pdnet.assemble_parts(pf, yf, m)
    go = torch.randn_like(out)
    gf, gm = torch.ops.pdnet.assemble_parts_backward(go, pf, yf, m, True, True)
    b = B - 1
    P, Y, M, G = (t[b : b + 1].double() for t in (pf, yf, m, go))
    r = ref.assemble_parts(P, Y, M)
    torch.testing.assert_close(out[b : b + 1].double(), r, atol=2e-2, rtol=2e-3)
    torch.testing.assert_close(gf[b : b + 1].double(), G.unsqueeze(1) * M.unsqueeze(2), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(gm[b : b + 1].double(), (G.unsqueeze(1) * (P + Y)).sum(2), atol=2e-2, rtol=2e-3)


def test_area_variance_cuda_more_rows_than_grid_y():
    """B * p = 65600 rows (> 65535, the gridDim.y limit) of 4160 pixels (two chunks): the
    rows past 65535 are the second iteration of a block's row loop."""
    g = torch.Generator(device="cuda").manual_seed(9)
    x = torch.rand(32800, 2, 65, 64, device="cuda", generator=g).requires_grad_()
    loss, areas = torch.ops.pdnet.area_variance(x)
    x64 = x.detach().double().requires_grad_()
    torch.testing.assert_close(areas.double(), x64.detach().sum((2, 3)), atol=0, rtol=1e-5)
    torch.testing.assert_close(loss.double(), ref.area_variance(x64.detach()), atol=0, rtol=5e-3)
    (gx,) = torch.autograd.grad(cpp.area_variance(x), x)
    (gr,) = torch.autograd.grad(ref.area_variance(x64), x64)
    torch.testing.assert_close(gx.double(), gr, atol=1e-6 * gr.abs().max().item(), rtol=5e-3)


def test_cuda_backward_ops_check_the_device_of_grad_out():
    """The dispatcher picks the CUDA kernel when any argument is on CUDA: a CPU grad_out must
    be a clear error, not a host pointer read on the device. A 0-dim CPU grad_loss is fine."""
    x = torch.randn(2, 3, 4, 5, device="cuda")
    s = torch.randn(2, 1, 4, 5, device="cuda")
    masks = torch.ops.pdnet.part_masks(x, s, True)
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.pdnet.part_masks_backward(torch.ones(2, 3, 4, 5), x, masks, s, True, True)
    pf = torch.randn(2, 3, 4, 5, 6, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.pdnet.assemble_parts_backward(torch.ones(2, 4, 5, 6), pf, pf, torch.rand(2, 3, 5, 6, device="cuda"), True, True)
    xa = torch.rand(2, 3, 5, 6, device="cuda")
    loss, areas = torch.ops.pdnet.area_variance(xa)
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.pdnet.area_variance_backward(torch.ones((), device="cuda"), xa, areas.cpu())
    on_cpu = torch.ops.pdnet.area_variance_backward(torch.tensor(2.0), xa, areas)
    on_gpu = torch.ops.pdnet.area_variance_backward(torch.tensor(2.0, device="cuda"), xa, areas)
    assert on_cpu.device == xa.device
    torch.testing.assert_close(on_cpu, on_gpu)


def test_part_attention_cuda_backward_is_flagged_nondeterministic():
    """dq is summed with float atomics: torch.use_deterministic_algorithms must hear of it."""
    q = torch.randn(1, 2, 40, 32, device="cuda", requires_grad=True)
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = ops.part_attention(q, q, q, backend="cpp")  # the forward is deterministic
        with pytest.raises(RuntimeError, match="part_attention_backward"):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
