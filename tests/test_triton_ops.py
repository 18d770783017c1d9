"""The Triton kernels (pdnet.kernels) against the reference ops: values and every gradient.

Without a GPU they run in Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), on small shapes chosen to cover several tiles and ragged tails.
float64 is compared with tight tolerances; fp32/bf16/fp16 follow STYLE.md:
max|out - ref| <= 2 * max|pt - ref| (3x for gradients), where ref is the reference in
float64 and pt the reference run in the same low precision. Tests marked ``cuda`` add
the model's shapes and large ones.
"""
import importlib

import pytest
import torch

pytest.importorskip("triton")

from pdnet import kernels, ops  # noqa: E402
from pdnet.kernels import _common  # noqa: E402
from pdnet.ops import _dispatch, reference  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or kernels.INTERPRET),
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- helpers
def run(fn, inputs, grad_out=None, seed=0):
    """fn(*inputs) and the gradients of <out, grad_out> w.r.t. inputs that require grad."""
    out = fn(*inputs)
    if grad_out is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    diff = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    grads = torch.autograd.grad(out, diff, grad_out.to(out.dtype)) if diff else ()
    return [out.detach()] + [g_.detach() for g_ in grads], grad_out


def cast(inputs, dtype):
    """Detached copies of the tensor inputs in ``dtype`` (requires_grad kept)."""
    return [
        x.detach().to(dtype).requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
        for x in inputs
    ]


def check_against_reference(kernel_fn, ref_fn, inputs64, dtype, names):
    """Compare kernel_fn in ``dtype`` with ref_fn: exact-ish in fp64, STYLE.md rule otherwise."""
    x_low = cast(inputs64, dtype)
    got, g = run(kernel_fn, x_low)
    ref, _ = run(ref_fn, cast(x_low, torch.float64), g)
    assert len(got) == len(ref) == len(names)
    if dtype == torch.float64:
        for name, a, b in zip(names, got, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")
        return
    pt, _ = run(ref_fn, cast(x_low, dtype), g)
    # Where PyTorch is exact by cancellation (e.g. dq == 0 with a single key) the rule alone
    # would demand exactness; allow a few fp32 roundings (the kernels' accumulator) at the
    # scale of the problem, i.e. the largest reference value of this check.
    floor = 8 * torch.finfo(torch.float32).eps * max(b.abs().max().item() for b in ref if b.numel())
    for i, (name, a, b, c) in enumerate(zip(names, got, ref, pt)):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        if not a.numel():
            continue
        err = (a.double() - b).abs().max().item()
        pt_err = (c.double() - b).abs().max().item()
        factor = 2.0 if i == 0 else 3.0  # outputs 2x, gradients 3x
        assert err <= factor * pt_err + floor, (
            f"{name} ({dtype}): max error {err:.3e} > {factor} x PyTorch's {pt_err:.3e} + {floor:.1e}"
        )


def randn(*shape, seed, scale=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE)


def key_mask(kind, B, p, Nk, seed):
    """Additive key masks: None, all zero, random finite with some -inf (never a whole row)."""
    if kind is None:
        return None
    if kind == "zeros":
        return torch.zeros(B, p, Nk, dtype=torch.float64, device=DEVICE)
    g = torch.Generator(device="cpu").manual_seed(seed)
    m = torch.randn(B, p, Nk, generator=g, dtype=torch.float64)
    m[torch.rand(B, p, Nk, generator=g) < 0.3] = float("-inf")
    m[..., 0] = 0.5  # at least one key per row
    return m.to(DEVICE)


def tri_attention(q, k, v, scale, km):
    return ops.part_attention(q, k, v, scale, km, backend="triton")


# --------------------------------------------------------------------------- part_attention
ATTN_CASES = [
    # B, p, Nq, Nk, d, scale, mask kind
    (2, 3, 17, 130, 32, 1.0, "random"),
    (1, 5, 64, 1, 16, 0.5, None),
    (2, 1, 130, 64, 16, 1.0, "zeros"),
    (1, 3, 1, 17, 32, 0.25, "random"),
    (1, 5, 17, 64, 24, 1.0, "random"),  # head dim padded to 32
    (1, 1, 1, 1, 16, 1.0, None),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,p,Nq,Nk,d,scale,mask", ATTN_CASES)
def test_part_attention_matches_reference(B, p, Nq, Nk, d, scale, mask, dtype):
    q = randn(B, p, Nq, d, seed=1).requires_grad_()
    k = randn(B, p, Nk, d, seed=2).requires_grad_()
    v = randn(B, p, Nk, d, seed=3).requires_grad_()
    km = key_mask(mask, B, p, Nk, seed=4)
    inputs, names = [q, k, v, scale], ["out", "dq", "dk", "dv"]
    if km is not None:
        km.requires_grad_()
        names.append("dkey_mask")
    inputs.append(km)
    check_against_reference(tri_attention, reference.part_attention, inputs, dtype, names)


def test_part_attention_fp16():
    q, k, v = (randn(2, 3, n, 32, seed=s).requires_grad_() for s, n in ((1, 40), (2, 33), (3, 33)))
    km = key_mask("random", 2, 3, 33, seed=4).requires_grad_()
    names = ["out", "dq", "dk", "dv", "dkey_mask"]
    check_against_reference(tri_attention, reference.part_attention, [q, k, v, 0.5, km], torch.float16, names)


def test_part_attention_zero_key_mask_equals_no_mask():
    q, k, v = randn(1, 3, 20, 16, seed=1), randn(1, 3, 9, 16, seed=2), randn(1, 3, 9, 16, seed=3)
    zero = torch.zeros(1, 3, 9, dtype=torch.float64, device=DEVICE)
    a = ops.part_attention(q, k, v, 1.0, zero, backend="triton")
    b = ops.part_attention(q, k, v, 1.0, None, backend="triton")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_part_attention_key_mask_of_another_dtype():
    """An fp32 key mask with fp64 q/k/v: the mask gradient comes back in fp32."""
    q, k, v = (randn(2, 3, n, 16, seed=s).requires_grad_() for s, n in ((1, 21), (2, 18), (3, 18)))
    km = key_mask("random", 2, 3, 18, seed=4).float().requires_grad_()
    got, g = run(tri_attention, [q, k, v, 0.5, km])
    ref, _ = run(reference.part_attention, [q, k, v, 0.5, km], g)
    assert got[4].dtype == torch.float32
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_part_attention_fully_masked_rows_are_zero(dtype):
    """Heads whose keys are all -inf: output 0 and zero gradients (the reference gives NaN)."""
    B, p, Nq, Nk, d = 2, 3, 19, 21, 16
    q, k, v = (randn(B, p, n, d, seed=s).to(dtype).requires_grad_() for s, n in ((1, Nq), (2, Nk), (3, Nk)))
    km = key_mask("random", B, p, Nk, seed=4).to(dtype)
    km[0, 1] = float("-inf")
    km[1, 2] = float("-inf")
    km.requires_grad_()
    empty = torch.zeros(B, p, dtype=torch.bool, device=DEVICE)
    empty[0, 1] = empty[1, 2] = True
    (out, dq, dk, dv, dkm), g = run(tri_attention, [q, k, v, 0.5, km])
    assert (out[empty] == 0).all() and (dq[empty] == 0).all()
    assert (dk[empty] == 0).all() and (dv[empty] == 0).all() and (dkm[empty] == 0).all()
    x64 = cast([q, k, v, 0.5, km], torch.float64)
    ref, _ = run(reference.part_attention, x64, g)
    assert torch.isnan(ref[0][empty]).all()  # what the reference does there
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=0.05, atol=0.05)
    for a, b in zip((out, dq, dk, dv, dkm), ref):
        torch.testing.assert_close(a[~empty].double(), b[~empty], **tol)


def test_part_attention_strided_and_expanded_inputs():
    """Non-contiguous q (a transposed view) and batch-expanded k/v, as the model passes them."""
    q_store = randn(2, 3, 16, 37, seed=1).requires_grad_()  # [B, p, d, Nq]
    k1 = randn(1, 3, 29, 16, seed=2).requires_grad_()
    v1 = randn(1, 3, 29, 16, seed=3).requires_grad_()

    def with_views(fn):
        def f(qs, k_, v_):
            return fn(qs.transpose(2, 3), k_.expand(2, -1, -1, -1), v_.expand(2, -1, -1, -1), 1.0, None)
        return f

    got, g = run(with_views(tri_attention), [q_store, k1, v1])
    ref, _ = run(with_views(reference.part_attention), [q_store, k1, v1], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_part_attention_gradcheck():
    q = randn(1, 2, 5, 16, seed=1).requires_grad_()
    k = randn(1, 2, 7, 16, seed=2).requires_grad_()
    v = randn(1, 2, 7, 16, seed=3).requires_grad_()
    km = randn(1, 2, 7, seed=4).requires_grad_()  # finite: gradcheck perturbs every entry
    fn = kernels.part_attention.part_attention
    assert torch.autograd.gradcheck(lambda *a: fn(*a[:3], 0.7, a[3]), (q, k, v, km), fast_mode=True)
    small = [randn(1, 1, n, 3, seed=s).requires_grad_() for s, n in ((5, 2), (6, 3), (7, 3))]
    m = randn(1, 1, 3, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: fn(*a[:3], 1.3, a[3]), (*small, m))


# --------------------------------------------------------------------------- part_masks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p,h,w", [(1, 1, 1), (3, 17, 9), (5, 13, 10)])
def test_part_masks_matches_reference(p, h, w, dtype):
    D = randn(2, p, h, w, seed=1, scale=2.0).requires_grad_()
    S = randn(2, 1, h, w, seed=2, scale=2.0).requires_grad_()
    check_against_reference(
        lambda a, b: ops.part_masks(a, b, backend="triton"),
        lambda a, b: reference.part_masks(a, b, True),
        [D, S], dtype, ["masks", "dpart_logits", "dsaliency"],
    )
    G = (randn(2, 1, h, w, seed=3) > 0).to(torch.float64)
    G = G * torch.rand(G.shape, dtype=G.dtype, device=DEVICE)  # soft, with exact zeros
    check_against_reference(
        lambda a, b: ops.part_masks_gt(a, b, backend="triton"),
        lambda a, b: reference.part_masks(a, b, False),
        [D, G], dtype, ["masks_gt", "dpart_logits_gt"],
    )


def test_part_masks_all_zero_gate_and_gt_gradient():
    D = randn(2, 5, 6, 7, seed=1).requires_grad_()
    G = torch.zeros(2, 1, 6, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    (out, dD, dG), _ = run(lambda a, b: ops.part_masks_gt(a, b, backend="triton"), [D, G])
    assert (out == 0).all() and (dD == 0).all()
    ref, _ = run(lambda a, b: reference.part_masks(a, b, False), [D, G])
    torch.testing.assert_close(dG, ref[2], rtol=1e-12, atol=1e-12)  # d/dG = sum_k dR_k softmax_k


def test_part_masks_gradcheck():
    D = randn(1, 3, 2, 3, seed=1).requires_grad_()
    S = randn(1, 1, 2, 3, seed=2).requires_grad_()
    fn = kernels.part_masks.part_masks
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, True), (D, S))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, False), (D, S))
    D, S = randn(2, 5, 9, 7, seed=3).requires_grad_(), randn(2, 1, 9, 7, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, True), (D, S), fast_mode=True)


# --------------------------------------------------------------------------- assemble_parts
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,p,C,h,w", [(1, 1, 1, 1, 1), (2, 3, 17, 5, 13), (1, 5, 64, 6, 7)])
def test_assemble_parts_matches_reference(B, p, C, h, w, dtype):
    P = randn(B, p, C, h, w, seed=1).requires_grad_()
    Y = randn(B, p, C, h, w, seed=2).requires_grad_()
    R = torch.rand(B, p, h, w, dtype=torch.float64, device=DEVICE).requires_grad_()
    check_against_reference(
        lambda a, b, c: ops.assemble_parts(a, b, c, backend="triton"),
        reference.assemble_parts, [P, Y, R], dtype, ["assembled", "dp_feats", "dy_feats", "dmasks"],
    )


def test_assemble_parts_zero_masks():
    P, Y = randn(2, 3, 4, 5, 6, seed=1), randn(2, 3, 4, 5, 6, seed=2)
    out = ops.assemble_parts(P, Y, torch.zeros(2, 3, 5, 6, dtype=torch.float64, device=DEVICE), backend="triton")
    assert out.shape == (2, 4, 5, 6) and (out == 0).all()


def test_assemble_parts_gradcheck():
    args = (randn(1, 2, 3, 2, 2, seed=1), randn(1, 2, 3, 2, 2, seed=2), randn(1, 2, 2, 2, seed=3))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(kernels.assemble_parts.assemble_parts, args)
    args = (randn(2, 3, 9, 5, 7, seed=4), randn(2, 3, 9, 5, 7, seed=5), randn(2, 3, 5, 7, seed=6))
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(kernels.assemble_parts.assemble_parts, args, fast_mode=True)


# --------------------------------------------------------------------------- area_variance
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,p,H,W", [(1, 1, 3, 3), (2, 3, 17, 31), (3, 5, 40, 33)])
def test_area_variance_matches_reference(B, p, H, W, dtype):
    x = torch.rand(B, p, H, W, dtype=torch.float64, device=DEVICE)
    x = (x * (randn(B, p, 1, 1, seed=3).abs() + 0.1)).requires_grad_()  # unequal areas
    check_against_reference(
        lambda a: ops.area_variance(a, backend="triton"), reference.area_variance, [x], dtype, ["loss", "dx"]
    )


def test_area_variance_all_zero_and_single_part():
    for shape in ((2, 3, 5, 5), (2, 1, 5, 5)):
        x = torch.zeros(shape, dtype=torch.float64, device=DEVICE, requires_grad=True)
        loss = ops.area_variance(x, backend="triton")
        (dx,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and (dx == 0).all()


def test_area_variance_gradcheck():
    x = torch.rand(2, 3, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.area_variance.area_variance, (x,))
    x = torch.rand(2, 4, 30, 17, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(kernels.area_variance.area_variance, (x,), fast_mode=True)


# --------------------------------------------------------------------------- torch.library
def test_opcheck_every_op():
    q, k, v = randn(1, 2, 9, 16, seed=1), randn(1, 2, 18, 16, seed=2), randn(1, 2, 18, 16, seed=3)
    km = key_mask("random", 1, 2, 18, seed=4)
    lib = torch.ops.pdnet_triton
    for t in (q, k, v, km):
        t.requires_grad_()
    torch.library.opcheck(lib.part_attention.default, (q, k, v, 0.5, km))
    torch.library.opcheck(lib.part_attention.default, (q, k, v, 1.0, None))
    # the backward ops have no autograd of their own (no double backward): plain inputs
    q, k, v, km = (t.detach() for t in (q, k, v, km))
    out, lse = lib.part_attention(q, k, v, 0.5, km)
    dout = randn(*out.shape, seed=5)
    torch.library.opcheck(lib.part_attention_backward.default, (dout, q, k, v, out, lse, 0.5, km, True))
    D, S = randn(2, 3, 5, 6, seed=1).requires_grad_(), randn(2, 1, 5, 6, seed=2).requires_grad_()
    for gate_is_logit in (True, False):
        torch.library.opcheck(lib.part_masks.default, (D, S, gate_is_logit))
        args = (randn(2, 3, 5, 6, seed=3), D.detach(), S.detach(), gate_is_logit, True)
        torch.library.opcheck(lib.part_masks_backward.default, args)
    P, Y = randn(1, 3, 4, 5, 6, seed=1).requires_grad_(), randn(1, 3, 4, 5, 6, seed=2).requires_grad_()
    R = torch.rand(1, 3, 5, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    torch.library.opcheck(lib.assemble_parts.default, (P, Y, R))
    args = (randn(1, 4, 5, 6, seed=3), P.detach(), Y.detach(), R.detach())
    torch.library.opcheck(lib.assemble_parts_backward.default, args)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64, device=DEVICE, requires_grad=True)
    torch.library.opcheck(lib.area_sums.default, (x,))


# --------------------------------------------------------------------------- dispatch and errors
def test_backend_registration():
    assert "triton" in ops.available_backends(DEVICE)
    auto = _dispatch.resolve("part_attention", "auto", torch.device("cpu"))
    assert auto is not kernels.OPS["part_attention"]  # the interpreter is never picked by "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_unavailable_without_interpreter_names_the_fix(monkeypatch):
    import pdnet.ops._triton_backend as tb

    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(_dispatch, "_REGISTRY", dict(_dispatch._REGISTRY))
    monkeypatch.setattr(_dispatch, "_UNAVAILABLE_REASON", {})
    del _dispatch._REGISTRY["triton"]
    importlib.reload(tb)
    with pytest.raises(RuntimeError, match="backend 'triton' is not available.*TRITON_INTERPRET=1"):
        ops.part_masks(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), backend="triton")


def test_cpu_tensors_without_interpreter_are_rejected(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)
    x = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"must be on a CUDA device, got cpu.*TRITON_INTERPRET=1"):
        kernels.area_variance.area_variance(x)


def test_bad_inputs_are_named():
    q = torch.zeros(1, 2, 3, 160, device=DEVICE)
    with pytest.raises(ValueError, match=r"head dim d=160 is above 128"):
        ops.part_attention(q, q, q, backend="triton")
    with pytest.raises(ValueError, match=r"k must be \(B=1, p=2, Nk, d=160\)"):
        kernels.part_attention.part_attention(q, q[:, :1], q)
    with pytest.raises(ValueError, match=r"masks must be \(B, p, h, w\)"):
        kernels.assemble_parts.assemble_parts(
            torch.zeros(1, 2, 3, 4, 4, device=DEVICE), torch.zeros(1, 2, 3, 4, 4, device=DEVICE),
            torch.zeros(1, 3, 4, 4, device=DEVICE),
        )


def test_empty_inputs():
    q = torch.zeros(0, 2, 5, 16, device=DEVICE, requires_grad=True)
    out = ops.part_attention(q, q, q, backend="triton")
    assert out.shape == (0, 2, 5, 16)
    x = torch.zeros(2, 3, 0, 4, device=DEVICE)
    assert ops.part_masks(x, x[:, :1], backend="triton").shape == x.shape
    P = torch.zeros(1, 2, 0, 3, 3, device=DEVICE)
    assert ops.assemble_parts(P, P, torch.rand(1, 2, 3, 3, device=DEVICE), backend="triton").shape == (1, 0, 3, 3)


# --------------------------------------------------------------------------- CUDA: model and large shapes
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 8, 32])
def test_cuda_model_shapes(B, dtype):
    p, N, d = 5, 900, 32
    q, k, v = (randn(B, p, N, d, seed=s).requires_grad_() for s in (1, 2, 3))
    check_against_reference(tri_attention, reference.part_attention, [q, k, v, 1.0, None], dtype,
                            ["out", "dq", "dk", "dv"])
    D, S = randn(B, p, 30, 30, seed=4).requires_grad_(), randn(B, 1, 30, 30, seed=5).requires_grad_()
    check_against_reference(lambda a, b: ops.part_masks(a, b, backend="triton"),
                            lambda a, b: reference.part_masks(a, b, True), [D, S], dtype,
                            ["masks", "dpart_logits", "dsaliency"])
    P, Y = randn(B, p, 64, 30, 30, seed=6).requires_grad_(), randn(B, p, 64, 30, 30, seed=7).requires_grad_()
    R = torch.rand(B, p, 30, 30, dtype=torch.float64, device=DEVICE).requires_grad_()
    check_against_reference(lambda a, b, c: ops.assemble_parts(a, b, c, backend="triton"),
                            reference.assemble_parts, [P, Y, R], dtype, ["m", "dp", "dy", "dr"])


@pytest.mark.cuda
@pytest.mark.parametrize("N,B", [(3600, 2), (14400, 1)])
def test_cuda_large_attention_bf16(N, B):
    """Large shapes in bf16 with an fp32 reference (fp64 scores would not fit comfortably)."""
    p, d = 5, 64
    q, k, v = (randn(B, p, N, d, seed=s).to(torch.bfloat16).requires_grad_() for s in (1, 2, 3))
    km = key_mask("random", B, p, N, seed=4).to(torch.bfloat16).requires_grad_()
    got, g = run(tri_attention, [q, k, v, 0.125, km])
    ref, _ = run(reference.part_attention, cast([q, k, v, 0.125, km], torch.float32), g)
    pt, _ = run(reference.part_attention, [q, k, v, 0.125, km], g)
    for i, (a, b, c) in enumerate(zip(got, ref, pt)):
        err, pt_err = (a.float() - b).abs().max().item(), (c.float() - b).abs().max().item()
        assert err <= (2 if i == 0 else 3) * pt_err, (i, err, pt_err)


@pytest.mark.cuda
def test_cuda_area_variance_large():
    x = torch.rand(32, 5, 480, 480, device="cuda", requires_grad=True)
    check_against_reference(lambda a: ops.area_variance(a, backend="triton"), reference.area_variance,
                            [x.double()], torch.float32, ["loss", "dx"])
