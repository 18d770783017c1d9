"""The C++ extension's CPU kernels (backend "cpp") against the reference ops.

Forward and every gradient, awkward shapes, masked rows, float64 gradcheck,
torch.library.opcheck (schema, fake kernels, autograd registration, AOT dispatch),
torch.compile tracing, both CPU instruction-set builds, and an end-to-end PDNet.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pdnet
from pdnet import ops
from pdnet.ops import _cpp_backend as cpp
from pdnet.ops import reference as ref

pytestmark = pytest.mark.skipif(cpp._C is None, reason=f"pdnet._C not loaded: {cpp._LOAD_ERROR}")

INF = float("inf")


def test_extension_is_built_and_registered():
    """Must fail (not skip) when the extension is missing: CI builds it."""
    if cpp._C is None:
        pytest.fail(f"the C++ extension did not load: {cpp._LOAD_ERROR}")
    assert "cpp" in ops.available_backends("cpu")
    assert cpp.cpu_isa() in ("DEFAULT", "AVX2", "AVX512")
    # backend="auto" on CPU picks the compiled kernels
    assert ops._dispatch.resolve("part_attention", "auto", torch.device("cpu")) is cpp.part_attention


def _grads(out, inputs, cot):
    return torch.autograd.grad(out, [t for t in inputs if t.requires_grad], cot, allow_unused=False)


def _compare(fn_cpp, fn_ref, inputs, atol, rtol, ref_dtype=None):
    """Forward and all input gradients of fn_cpp(inputs) vs fn_ref at ref_dtype (or same)."""
    out = fn_cpp(*inputs)
    cot = torch.randn_like(out)
    ref_inputs = [
        (t.detach().to(ref_dtype).requires_grad_(t.requires_grad) if ref_dtype else t) if isinstance(t, torch.Tensor) else t
        for t in inputs
    ]
    out_r = fn_ref(*ref_inputs)
    torch.testing.assert_close(out.to(out_r.dtype), out_r, atol=atol, rtol=rtol)
    g = _grads(out, [t for t in inputs if isinstance(t, torch.Tensor)], cot)
    g_r = _grads(out_r, [t for t in ref_inputs if isinstance(t, torch.Tensor)], cot.to(out_r.dtype))
    assert len(g) == len(g_r)
    for a, b in zip(g, g_r):
        torch.testing.assert_close(a.to(b.dtype), b, atol=atol, rtol=rtol)


def _rand(*shape, dtype=torch.float32, grad=True, gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)


# ------------------------------------------------------------------ part_attention
ATTN_SHAPES = [
    (2, 5, 64, 64, 32),  # model-like
    (1, 1, 1, 1, 1),  # N = 1, d = 1
    (2, 3, 37, 53, 20),  # odd sizes, Nq != Nk
    (1, 2, 200, 7, 16),  # many queries, few keys
    (2, 1, 5, 300, 64),  # p = 1, keys over several tiles, few queries
    (1, 2, 97, 401, 8),  # tails everywhere
    (1, 1, 7, 2100, 8),  # several forward key tiles: the online rescaling
]


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_part_attention_matches_reference(shape, masked):
    B, p, Nq, Nk, d = shape
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = _rand(B, p, Nq, d, gen=g), _rand(B, p, Nk, d, gen=g), _rand(B, p, Nk, d, gen=g)
    inputs = [q, k, v, 0.37]
    if masked:
        mask = torch.randn(B, p, Nk, generator=g, dtype=torch.float64)
        mask[..., : Nk // 3] = -INF  # some dropped keys (never all of them here)
        mask[..., -1] = 0.0
        inputs.append(mask.float().requires_grad_())
    else:
        inputs.append(None)
    f_cpp = lambda *a: ops.part_attention(*a, backend="cpp")  # noqa: E731
    f_ref = lambda *a: ref.part_attention(*a)  # noqa: E731
    # float32 kernels against the float64 reference: accuracy, not only agreement
    _compare(f_cpp, f_ref, inputs, atol=2e-5, rtol=1e-4, ref_dtype=torch.float64)
    # float64 kernels: agreement to rounding
    inputs64 = [t.detach().double().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
    _compare(f_cpp, f_ref, inputs64, atol=1e-11, rtol=1e-9)


def test_part_attention_fully_masked_rows_give_zero_and_no_nan():
    g = torch.Generator().manual_seed(1)
    q, k, v = _rand(2, 3, 11, 8, gen=g), _rand(2, 3, 13, 8, gen=g), _rand(2, 3, 13, 8, gen=g)
    mask = torch.zeros(2, 3, 13)
    mask[0, 1] = -INF  # head (0, 1): every key dropped
    mask[1, 2, :12] = -INF  # head (1, 2): one key left
    mask.requires_grad_()
    out, lse = torch.ops.pdnet.part_attention(q, k, v, 1.0, mask)
    assert torch.all(out[0, 1] == 0) and torch.all(lse[0, 1] == -INF)
    cot = torch.randn_like(out)
    dq, dk, dv, dm = torch.autograd.grad(out, (q, k, v, mask), cot)
    for t in (out, dq, dk, dv, dm):
        assert torch.isfinite(t).all()
    assert torch.all(dq[0, 1] == 0) and torch.all(dk[0, 1] == 0) and torch.all(dv[0, 1] == 0)
    # every other head matches the reference
    r = ref.part_attention(q, k, v, 1.0, mask)
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[0, 1] = False
    torch.testing.assert_close(out[keep], r[keep], atol=2e-6, rtol=1e-5)
    # the single live key of head (1, 2) gets all the weight
    torch.testing.assert_close(out[1, 2], v[1, 2, 12].expand(11, 8).detach(), atol=1e-6, rtol=1e-6)


def test_part_attention_first_key_tiles_fully_masked():
    """Rows whose first key tiles are all -inf and whose live keys come later."""
    g = torch.Generator().manual_seed(11)
    q, k, v = _rand(1, 2, 5, 4, dtype=torch.float64, gen=g), _rand(1, 2, 2500, 4, dtype=torch.float64, gen=g), _rand(1, 2, 2500, 4, dtype=torch.float64, gen=g)
    mask = torch.zeros(1, 2, 2500, dtype=torch.float64)
    mask[0, 0, :2200] = -INF
    mask[0, 1, 1000:] = -INF
    mask.requires_grad_()
    _compare(lambda *a: ops.part_attention(*a, backend="cpp"), ref.part_attention, [q, k, v, 1.0, mask], atol=1e-10, rtol=1e-8)


def test_part_attention_lse_and_its_gradient():
    g = torch.Generator().manual_seed(2)
    q, k, v = _rand(1, 2, 9, 4, dtype=torch.float64, gen=g), _rand(1, 2, 15, 4, dtype=torch.float64, gen=g), _rand(1, 2, 15, 4, dtype=torch.float64, gen=g)
    out, lse = torch.ops.pdnet.part_attention(q, k, v, 0.5, None)
    assert lse.dtype == torch.float64
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 0.5, -1))
    # lse is differentiable too (its gradient enters delta)
    assert torch.autograd.gradcheck(lambda q, k, v: torch.ops.pdnet.part_attention(q, k, v, 0.5, None)[1], (q, k, v))


def test_part_attention_low_precision_inputs_on_cpu():
    """float16 / bfloat16 run in float32 and round: error within 2x PyTorch's own."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 50, 16, generator=g) for _ in range(3))
    r32 = ref.part_attention(q, k, v, 1.0)
    for dt in (torch.float16, torch.bfloat16):
        out = ops.part_attention(q.to(dt), k.to(dt), v.to(dt), 1.0, backend="cpp")
        assert out.dtype == dt
        pt = ref.part_attention(q.to(dt), k.to(dt), v.to(dt), 1.0).float()
        assert (out.float() - r32).abs().max() <= 2 * (pt - r32).abs().max()


def test_part_attention_empty_inputs():
    q = torch.randn(2, 3, 0, 8, requires_grad=True)
    k = torch.randn(2, 3, 5, 8, requires_grad=True)
    v = torch.randn(2, 3, 5, 8, requires_grad=True)
    out = ops.part_attention(q, k, v, backend="cpp")
    assert out.shape == (2, 3, 0, 8)
    out.sum().backward()
    assert torch.all(k.grad == 0) and torch.all(v.grad == 0)
    out = ops.part_attention(torch.randn(0, 3, 4, 8), torch.randn(0, 3, 5, 8), torch.randn(0, 3, 5, 8), backend="cpp")
    assert out.shape == (0, 3, 4, 8)


def test_part_attention_noncontiguous_and_mixed_mask_dtype():
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 40, 3, 16, generator=g)
    q = base.transpose(1, 2)  # [2, 3, 40, 16], not contiguous
    k = torch.randn(2, 3, 16, 33, generator=g).transpose(-1, -2)
    v = torch.randn(2, 3, 33, 16, generator=g)
    mask = torch.randn(2, 3, 33, generator=g, dtype=torch.float64).requires_grad_()
    out = ops.part_attention(q, k, v, 1.0, mask, backend="cpp")
    torch.testing.assert_close(out, ref.part_attention(q, k, v, 1.0, mask), atol=2e-6, rtol=1e-5)
    (dm,) = torch.autograd.grad(out.sum(), mask)
    assert dm.dtype == torch.float64
    (dm_r,) = torch.autograd.grad(ref.part_attention(q, k, v, 1.0, mask).sum(), mask)
    torch.testing.assert_close(dm, dm_r, atol=1e-5, rtol=1e-4)


def test_part_attention_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    q, k, v = (_rand(1, 2, n, 3, dtype=torch.float64, gen=g) for n in (4, 6, 6))
    mask = torch.randn(1, 2, 6, generator=g, dtype=torch.float64)
    mask[0, 0, 0] = -INF
    mask.requires_grad_()
    f = lambda q, k, v, m: ops.part_attention(q, k, v, 0.8, m, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v, mask), eps=1e-6, atol=1e-6)
    f_nomask = lambda q, k, v: ops.part_attention(q, k, v, 1.3, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(f_nomask, (q, k, v))


def test_cpp_errors_name_shapes_and_dtypes():
    q = torch.randn(2, 3, 4, 8)
    with pytest.raises(RuntimeError, match=r"k must be \(B, p, Nk, d\).*\[2, 3, 5, 7\]"):
        torch.ops.pdnet.part_attention(q, torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7), 1.0, None)
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.pdnet.part_attention(q, q.double(), q, 1.0, None)
    with pytest.raises(RuntimeError, match=r"key_mask must be \(B, p, Nk\)"):
        torch.ops.pdnet.part_attention(q, q, q, 1.0, torch.zeros(2, 3, 5))
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.ops.pdnet.area_variance(torch.ones(1, 2, 3, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=r"gate must be \(B, 1, h, w\)"):
        torch.ops.pdnet.part_masks(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4), True)
    with pytest.raises(RuntimeError, match=r"masks must be \(B, p, h, w\)"):
        torch.ops.pdnet.assemble_parts(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 4, 5))


# ------------------------------------------------------------------ the other ops
# p <= 8 runs the cores with a compile-time part count, p = 11 the runtime loop
@pytest.mark.parametrize("shape", [(2, 5, 17, 19), (1, 1, 3, 3), (3, 2, 1, 1), (1, 8, 40, 33), (2, 11, 6, 21)])
@pytest.mark.parametrize("gate_is_logit", [True, False])
def test_part_masks_matches_reference(shape, gate_is_logit):
    B, p, h, w = shape
    g = torch.Generator().manual_seed(B * 100 + p)
    x = _rand(B, p, h, w, gen=g)
    s = _rand(B, 1, h, w, gen=g) if gate_is_logit else torch.rand(B, 1, h, w, generator=g).requires_grad_()
    f_cpp = lambda x, s: cpp.part_masks(x, s, gate_is_logit)  # noqa: E731
    f_ref = lambda x, s: ref.part_masks(x, s, gate_is_logit)  # noqa: E731
    _compare(f_cpp, f_ref, [x, s], atol=1e-6, rtol=1e-5, ref_dtype=torch.float64)
    _compare(f_cpp, f_ref, [x.detach().double().requires_grad_(), s.detach().double().requires_grad_()], atol=1e-14, rtol=1e-12)


def test_part_masks_public_api_and_extreme_logits():
    x = torch.tensor([[[[80.0, -80.0]], [[-80.0, 80.0]], [[0.0, 0.0]]]]).requires_grad_()  # [1, 3, 1, 2]
    s = torch.tensor([[[[-200.0, 200.0]]]])
    out = ops.part_masks(x, s, backend="cpp")
    torch.testing.assert_close(out, ref.part_masks(x, s, True))
    gt = torch.rand(1, 1, 1, 2)
    torch.testing.assert_close(ops.part_masks_gt(x, gt, backend="cpp"), ref.part_masks(x, gt, False))


@pytest.mark.parametrize("shape", [(2, 5, 17, 19), (1, 1, 3, 3), (3, 2, 1, 1), (1, 3, 1, 37), (2, 9, 5, 7)])
def test_part_masks_gt_without_gate_gradient(shape):
    """The backward from the forward's output (no exps): a ground-truth mask that needs no
    gradient, with exact zeros, ones, tiny and negative values, and large logits."""
    B, p, h, w = shape
    g = torch.Generator().manual_seed(B * 10 + p + w)
    x = (_rand(B, p, h, w, gen=g).detach() * 8).requires_grad_()
    gt = torch.rand(B, 1, h, w, generator=g)
    flat = gt.view(-1)
    flat[::3] = 0.0
    flat[1::5] = 1.0
    flat[2::7] = 1e-30
    flat[4::11] = -0.5
    f_cpp = lambda x, s: ops.part_masks_gt(x, s, backend="cpp")  # noqa: E731
    f_ref = lambda x, s: ref.part_masks(x, s, False)  # noqa: E731
    _compare(f_cpp, f_ref, [x, gt], atol=1e-6, rtol=1e-5, ref_dtype=torch.float64)
    _compare(f_cpp, f_ref, [x.detach().double().requires_grad_(), gt.double()], atol=1e-14, rtol=1e-12)


def test_part_masks_gradients_at_saturated_gates():
    """sigmoid(S) = 0 or 1 exactly, and gates of a ground-truth mask that are 0 (its
    gradient then needs the softmax itself, not the output)."""
    x = torch.tensor([[[[80.0, -80.0, 3.0, 0.5]], [[-80.0, 80.0, 3.0, -0.5]], [[0.0, 0.0, -1.0, 2.0]]]])
    s = torch.tensor([[[[-200.0, 200.0, -104.0, 40.0]]]])
    for dtype, tol in ((torch.float32, dict(atol=1e-6, rtol=1e-5)), (torch.float64, dict(atol=1e-14, rtol=1e-12))):
        xi, si = x.to(dtype).requires_grad_(), s.to(dtype).requires_grad_()
        _compare(lambda a, b: ops.part_masks(a, b, backend="cpp"), lambda a, b: ref.part_masks(a, b, True), [xi, si], **tol)
        gt = torch.tensor([[[[0.0, 1.0, 0.0, 0.25]]]], dtype=dtype).requires_grad_()
        _compare(lambda a, b: ops.part_masks_gt(a, b, backend="cpp"), lambda a, b: ref.part_masks(a, b, False), [xi, gt], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_part_masks_one_part_gives_exactly_zero_logit_gradient(dtype):
    """softmax over a single part is constant: its gradient is exactly 0 (the model relies
    on it: with p = 1 the part head must not move), for every backward core."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 1, 7, 9, generator=g, dtype=dtype).requires_grad_()
    cot = torch.randn(2, 1, 7, 9, generator=g, dtype=dtype)
    for gate, fn in (
        (torch.randn(2, 1, 7, 9, generator=g, dtype=dtype), ops.part_masks),
        (torch.rand(2, 1, 7, 9, generator=g, dtype=dtype), ops.part_masks_gt),
        (torch.rand(2, 1, 7, 9, generator=g, dtype=dtype).requires_grad_(), ops.part_masks_gt),
    ):
        (gx,) = torch.autograd.grad(fn(x, gate, backend="cpp"), x, cot)
        assert torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (0, 3, 4, 4), (2, 0, 4, 4)])
def test_part_masks_empty_inputs(shape):
    B, p, h, w = shape
    x = torch.randn(*shape, requires_grad=True)
    for gate in (torch.randn(B, 1, h, w, requires_grad=True), torch.rand(B, 1, h, w)):
        for fn in (ops.part_masks, ops.part_masks_gt):
            out = fn(x, gate, backend="cpp")
            assert out.shape == shape
            wrt = (x, gate) if gate.requires_grad else (x,)
            grads = torch.autograd.grad(out.sum(), wrt)
            assert grads[0].shape == shape
            if gate.requires_grad:
                assert grads[1].shape == gate.shape and torch.all(grads[1] == 0)


def test_part_masks_low_precision_inputs_on_cpu():
    """float16 / bfloat16: computed in float32 (the backward from the logits, not from the
    rounded output); error within 2x PyTorch's own at that precision."""
    g = torch.Generator().manual_seed(12)
    x, s = torch.randn(2, 5, 9, 13, generator=g), torch.randn(2, 1, 9, 13, generator=g)
    cot = torch.randn(2, 5, 9, 13, generator=g)

    def run(fn, dt):
        xi, si = x.to(dt).requires_grad_(), s.to(dt).requires_grad_()
        out = fn(xi, si)
        return [out.float()] + [t.float() for t in torch.autograd.grad(out, (xi, si), cot.to(dt))]

    r32 = run(lambda a, b: ref.part_masks(a, b, True), torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        mine = run(lambda a, b: ops.part_masks(a, b, backend="cpp"), dt)
        pt = run(lambda a, b: ref.part_masks(a, b, True), dt)
        for m, p_, r in zip(mine, pt, r32):
            assert (m - r).abs().max() <= 2 * (p_ - r).abs().max() + 1e-6


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 11), (1, 1, 1, 1, 1), (2, 3, 4, 50, 51), (1, 2, 0, 3, 3)])
def test_assemble_parts_matches_reference(shape):
    B, p, C, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    P, Y, M = _rand(B, p, C, h, w, gen=g), _rand(B, p, C, h, w, gen=g), _rand(B, p, h, w, gen=g)
    if C == 0:
        out = cpp.assemble_parts(P, Y, M)
        assert out.shape == (B, 0, h, w)
        return
    _compare(cpp.assemble_parts, ref.assemble_parts, [P, Y, M], atol=1e-5, rtol=1e-5, ref_dtype=torch.float64)
    # only some inputs requiring grad
    Yc = Y.detach()
    _compare(cpp.assemble_parts, ref.assemble_parts, [P, Yc, M.detach()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 13, 17), (1, 1, 4, 4), (2, 2, 1, 1), (2, 8, 100, 70)])
def test_area_variance_matches_reference(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=g).requires_grad_()
    _compare(cpp.area_variance, ref.area_variance, [x], atol=1e-7, rtol=1e-5, ref_dtype=torch.float64)
    x64 = x.detach().double().requires_grad_()
    _compare(cpp.area_variance, ref.area_variance, [x64], atol=1e-15, rtol=1e-10)


def test_area_variance_zero_input_and_single_part():
    z = torch.zeros(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    out = cpp.area_variance(z)
    r = ref.area_variance(z)
    torch.testing.assert_close(out, r)
    (gz,) = torch.autograd.grad(out, z)
    (gr,) = torch.autograd.grad(ref.area_variance(z), z)
    torch.testing.assert_close(gz, gr)
    one = torch.rand(3, 1, 5, 5, requires_grad=True)
    out = ops.area_variance(one, backend="cpp")
    assert out.item() == 0.0
    out.backward()
    assert torch.all(one.grad == 0)


def test_area_variance_gradient_is_a_broadcast():
    """The gradient is coef[b, k] broadcast over the pixels (an expanded view, as torch's sum
    backward): it feeds a consumer that needs no materialised copy, and a leaf gets a
    dense .grad."""
    g = torch.Generator().manual_seed(13)
    x = torch.rand(2, 3, 5, 7, generator=g).requires_grad_()
    loss, areas = torch.ops.pdnet.area_variance(x)
    coef = torch.ops.pdnet.area_variance_backward(torch.tensor(2.0), x.detach(), areas)
    assert coef.shape == (2, 3) and coef.dtype == x.dtype
    (gx,) = torch.autograd.grad(loss, x, torch.tensor(2.0))
    assert gx.shape == x.shape
    torch.testing.assert_close(gx, coef[:, :, None, None].expand_as(x))
    ops.area_variance(x, backend="cpp").backward()
    assert x.grad.is_contiguous()
    torch.testing.assert_close(x.grad, torch.autograd.grad(ref.area_variance(x), x)[0], atol=1e-7, rtol=1e-5)
    # through a softmax over parts, as the part losses use it
    z = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    (gz,) = torch.autograd.grad(ops.area_variance(torch.softmax(z, 1), backend="cpp"), z)
    (gz_r,) = torch.autograd.grad(ref.area_variance(torch.softmax(z, 1)), z)
    torch.testing.assert_close(gz, gz_r, atol=1e-15, rtol=1e-10)
    # no pixels / no batch
    for shape in ((2, 3, 0, 4), (0, 3, 4, 4)):
        e = torch.rand(*shape, requires_grad=True)
        ops.area_variance(e, backend="cpp").backward()
        assert e.grad.shape == e.shape


def test_gradcheck_float64_small_ops():
    g = torch.Generator().manual_seed(6)
    x = _rand(2, 3, 4, 5, dtype=torch.float64, gen=g)
    s = _rand(2, 1, 4, 5, dtype=torch.float64, gen=g)
    gt = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: cpp.part_masks(x, s, True), (x, s))
    assert torch.autograd.gradcheck(lambda x, s: cpp.part_masks(x, s, False), (x, gt))
    P, Y = _rand(2, 3, 2, 3, 3, dtype=torch.float64, gen=g), _rand(2, 3, 2, 3, 3, dtype=torch.float64, gen=g)
    M = _rand(2, 3, 3, 3, dtype=torch.float64, gen=g)
    assert torch.autograd.gradcheck(cpp.assemble_parts, (P, Y, M))
    xa = torch.rand(2, 4, 3, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(cpp.area_variance, (xa,))


# ------------------------------------------------------------------ torch.library integration
def _opcheck_samples():
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g, requires_grad=True)  # noqa: E731
    mask = torch.randn(2, 3, 9, generator=g)
    mask[0, 0, :3] = -INF
    return [
        (torch.ops.pdnet.part_attention.default, (r(2, 3, 7, 8), r(2, 3, 9, 8), r(2, 3, 9, 8), 0.5, mask.requires_grad_())),
        (torch.ops.pdnet.part_attention.default, (r(1, 2, 5, 4), r(1, 2, 6, 4), r(1, 2, 6, 4), 1.0, None)),
        (torch.ops.pdnet.part_masks.default, (r(2, 4, 5, 6), r(2, 1, 5, 6), True)),
        (torch.ops.pdnet.part_masks.default, (r(2, 4, 5, 6), torch.rand(2, 1, 5, 6, generator=g), False)),
        (torch.ops.pdnet.assemble_parts.default, (r(2, 3, 4, 5, 6), r(2, 3, 4, 5, 6), r(2, 3, 5, 6))),
        (torch.ops.pdnet.area_variance.default, (torch.rand(2, 3, 5, 6, generator=g).requires_grad_(),)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_opcheck(index):
    op, args = _opcheck_samples()[index]
    torch.library.opcheck(op, args)


def test_backward_ops_opcheck():
    g = torch.Generator().manual_seed(8)
    q, k, v = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 9, 8, generator=g)
    mask = torch.randn(2, 3, 9, generator=g)
    out, lse = torch.ops.pdnet.part_attention(q, k, v, 0.5, mask)
    go = torch.randn_like(out)
    for want in (True, False):
        torch.library.opcheck(
            torch.ops.pdnet.part_attention_backward.default, (go, None, q, k, v, out, lse, 0.5, mask, want)
        )
    x, s = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 1, 5, 6, generator=g)
    for gate_grad in (True, False):
        for logit in (True, False):
            m = torch.ops.pdnet.part_masks(x, s, logit)
            torch.library.opcheck(
                torch.ops.pdnet.part_masks_backward.default, (torch.randn(2, 4, 5, 6), x, m, s, logit, gate_grad)
            )
    P, Y, M = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 6)
    for fg, mg in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.pdnet.assemble_parts_backward.default, (torch.randn(2, 4, 5, 6), P, Y, M, fg, mg))
    xa = torch.rand(2, 3, 5, 6)
    loss, areas = torch.ops.pdnet.area_variance(xa)
    torch.library.opcheck(torch.ops.pdnet.area_variance_backward.default, (torch.tensor(1.5), xa, areas))


def test_torch_compile_fullgraph_traces_the_ops():
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 2, 6, 4, generator=g, requires_grad=True) for _ in range(3))
    x, s = torch.randn(1, 2, 3, 3, generator=g, requires_grad=True), torch.randn(1, 1, 3, 3, generator=g)

    def f(q, k, v, x, s):
        o = ops.part_attention(q, k, v, 1.0, backend="cpp")
        m = ops.part_masks(x, s, backend="cpp")
        return o.sum() + ops.area_variance(m, backend="cpp")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(q, k, v, x, s)
    torch.testing.assert_close(out, f(q, k, v, x, s))
    out.backward()
    assert q.grad is not None and x.grad is not None


# ------------------------------------------------------------------ instruction sets
_ISA_SCRIPT = textwrap.dedent(
    """
    import torch
    from pdnet.ops import _cpp_backend as cpp, reference as ref
    print(cpp.cpu_isa())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 20, generator=g, requires_grad=True) for n in (41, 77, 77))
    m = torch.randn(2, 3, 77, generator=g)
    m[..., :5] = -float("inf")
    o, r = cpp.part_attention(q, k, v, 0.7, m), ref.part_attention(q, k, v, 0.7, m)
    c = torch.randn_like(o)
    ga, gb = torch.autograd.grad(o, (q, k, v), c), torch.autograd.grad(r, (q, k, v), c)
    err = max([(o - r).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(ga, gb)])
    for parts in (5, 11):  # a compile-time part count, and the runtime loop
        x = torch.randn(2, parts, 9, 13, generator=g, requires_grad=True)
        s = torch.randn(2, 1, 9, 13, generator=g, requires_grad=True)
        gt = torch.rand(2, 1, 9, 13, generator=g)
        gt_grad = gt.clone().requires_grad_()  # its gradient takes the recomputing core
        c = torch.randn(2, parts, 9, 13, generator=g)
        for gate, logit, wrt in ((s, True, (x, s)), (gt, False, (x,)), (gt_grad, False, (x, gt_grad))):
            o, r = cpp.part_masks(x, gate, logit), ref.part_masks(x, gate, logit)
            ga, gb = torch.autograd.grad(o, wrt, c), torch.autograd.grad(r, wrt, c)
            err = max([err, (o - r).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(ga, gb)])
    P, Y, R = torch.randn(2, 5, 3, 9, 13), torch.randn(2, 5, 3, 9, 13), torch.rand(2, 5, 9, 13)
    err = max(err, (cpp.assemble_parts(P, Y, R) - ref.assemble_parts(P, Y, R)).abs().max().item())
    a = torch.rand(2, 5, 9, 13)
    err = max(err, abs(cpp.area_variance(a).item() - ref.area_variance(a).item()))
    print(err)
    """
)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_each_cpu_instruction_set_build(capability):
    """The DEFAULT and AVX2 tables (the process itself uses the best one) agree with the reference."""
    if capability == "avx2" and cpp.cpu_isa() == "DEFAULT":
        pytest.skip("this processor or build has no AVX2 table")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    isa, err = res.stdout.split()[-2:]
    assert isa == capability.upper()
    assert float(err) < 2e-5


def test_import_without_the_extension_falls_back_with_one_warning():
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["pdnet._C"] = None  # as if the extension were not built
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import pdnet, torch
            from pdnet import ops
            import pdnet.ops._cpp_backend
        msgs = [str(x.message) for x in w if "pdnet._C" in str(x.message)]
        assert len(msgs) == 1, msgs
        assert "cpp" not in ops.available_backends(), ops.available_backends()
        q = torch.randn(1, 1, 3, 4)
        assert ops.part_attention(q, q, q).shape == (1, 1, 3, 4)
        try:
            ops.part_attention(q, q, q, backend="cpp")
        except RuntimeError as e:
            assert "not built" in str(e), e
        else:
            raise AssertionError("backend='cpp' should fail")
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


# ------------------------------------------------------------------ end to end
def test_pdnet_with_cpp_ops_matches_reference():
    """resnet18 PDNet at 64 x 64, ops_backend="cpp" vs "reference": outputs, loss and gradients."""
    from pdnet import losses as L

    def run(backend):
        torch.manual_seed(0)
        m = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=5, input_size=(64, 64), ops_backend=backend)).train()
        basis = L.PartBasis(5, 512)
        g = torch.Generator().manual_seed(1)
        t, r = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
        mt = torch.zeros(2, 1, 64, 64)
        mt[:, :, 16:48, 20:44] = 1
        mr = torch.roll(mt, 3, dims=-1)
        ft, fr = torch.randn(2, 512, 2, 2, generator=g), torch.randn(2, 512, 2, 2, generator=g)
        out = m.train_outputs(t, r)
        loss = L.video_step_loss(out, mt, mr, ft, fr, basis(), m.config.loss_variant, backend=backend)
        loss["total"].backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        with torch.no_grad():
            pred = m.eval()(t, r)
        return out["pred"].detach(), pred, loss["total"].detach(), grads

    o_c, p_c, l_c, g_c = run("cpp")
    o_r, p_r, l_r, g_r = run("reference")
    torch.testing.assert_close(o_c, o_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p_c, p_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l_c, l_r, atol=1e-5, rtol=1e-5)
    assert g_c.keys() == g_r.keys()
    for name in g_r:
        scale = g_r[name].abs().max().clamp_min(1e-6)
        assert (g_c[name] - g_r[name]).abs().max() <= 1e-3 * scale + 1e-6, name


def test_cpu_ops_benchmark_runs_every_mode():
    """bench/bench_cpu_ops.py at the model's shapes, two cheap cases, in a fresh process
    (--allocator steady changes the process's malloc)."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_cpu_ops.py"
    res = subprocess.run(
        [sys.executable, str(script), "--reps", "2", "--warmup", "0", "--no-save", "--allocator", "steady",
         "--only", "area_variance", "assemble_parts C64 30x30"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "allocator steady" in res.stdout
    for case in ("area_variance 2x5x480x480", "assemble_parts C64 30x30"):
        modes = [line[len(case):].split()[0] for line in res.stdout.splitlines() if line.startswith(case)]
        assert modes == ["fwd", "grad", "full"], res.stdout
