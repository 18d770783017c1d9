"""Loss composition: step totals, the paper variant, edge cases and input checks."""
import pytest
import torch

from pdnet import losses as L


def outputs(B=2, p=3, H=32, W=32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g)

    out = {"pred": r(B, 1, H, W)}
    for tag in "tr":
        out[f"side_{tag}"] = [r(B, 1, H, W) for _ in range(4)]
        out[f"saliency_{tag}"] = r(B, 1, H, W)
        out[f"parts_{tag}"] = r(B, p, H, W)
    return out


def gts(B=2, H=32, W=32):
    m = torch.zeros(B, 1, H, W)
    m[..., 8:24, 10:20] = 1
    return m, torch.roll(m, 2, -1)


def test_image_step_total():
    out, (m, _) = outputs(), gts()
    terms = L.image_step_loss(out, m)
    expect = L.seg_loss(out["pred"], m)["total"] + 0.8 * (
        sum(L.seg_loss(s, m)["total"] for s in out["side_t"]) + L.seg_loss(out["saliency_t"], m)["total"]
    )
    torch.testing.assert_close(terms["total"], expect)
    assert "pred.wbce" in terms and "side_t3.l1" in terms and "saliency_t.wbce" in terms


@pytest.mark.parametrize("variant", ["release", "paper"])
def test_video_step_total(variant):
    out, (mt, mr) = outputs(), gts()
    basis = L.PartBasis(3, 16)()
    ft, fr = torch.rand(2, 16, 4, 4), torch.rand(2, 16, 4, 4)
    terms = L.video_step_loss(out, mt, mr, ft, fr, basis, variant)
    expect = L.seg_loss(out["pred"], mt)["total"]
    for tag, m, f in (("t", mt, ft), ("r", mr, fr)):
        sides = sum(L.seg_loss(s, m)["total"] for s in out[f"side_{tag}"])
        aux = sides + L.seg_loss(out[f"saliency_{tag}"], m)["total"]
        parts = L.part_total(out[f"parts_{tag}"], m, out[f"saliency_{tag}"], f, basis, variant)["total"]
        expect = expect + 0.8 * (aux + parts)
    torch.testing.assert_close(terms["total"], expect)


def test_part_total_variants_by_formula():
    out, (m, _) = outputs(), gts()
    basis = L.PartBasis(3, 16)()
    feat = torch.rand(2, 16, 32, 32)
    D, S = out["parts_t"], out["saliency_t"]
    X = torch.softmax(D, 1)
    sal = torch.sigmoid(S)
    c_g, c_s = L.concentration(X * m), L.concentration(X * sal)
    s_g, s_s = L.semantic(X * m, feat * m, basis), L.semantic(X * sal, feat * sal, basis)
    a_g, a_s = L.area(X * m), L.area(X * sal)
    o = L.orthonormal(basis)
    rel = L.part_total(D, m, S, feat, basis, "release")
    pap = L.part_total(D, m, S, feat, basis, "paper")
    torch.testing.assert_close(rel["total"], c_g + c_s / 2 + s_g + s_s / 2 + o + (a_g + a_s) / 2)
    torch.testing.assert_close(pap["total"], (c_g + c_s) / 2 + (s_g + s_s) / 2 + o + (a_g + a_s) / 2)
    with pytest.raises(ValueError, match="variant"):
        L.part_total(D, m, S, feat, basis, "eq7")


def test_semantic_upsamples_low_resolution_features():
    out, (m, _) = outputs(), gts()
    basis = L.PartBasis(3, 16)()
    low = torch.rand(2, 16, 4, 4)
    up = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=True)
    a = L.part_total(out["parts_t"], m, out["saliency_t"], low, basis)
    b = L.part_total(out["parts_t"], m, out["saliency_t"], up, basis)
    torch.testing.assert_close(a["total"], b["total"])


def test_wbce_weight_and_l1_by_hand():
    z = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # n_pos = 1 + 1 = 2, w = 4 / 2 = 2, BCE(0, y) = log 2 everywhere
    torch.testing.assert_close(L.wbce(z, y), 2 * torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(L.prob_l1(z, y), torch.tensor(0.5))


def test_concentration_point_mass_is_zero_and_spread_is_positive():
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 3, 4] = 1.0
    x[0, 1] = 1.0
    c = L.concentration(x)
    u = torch.arange(8) / 8 * 2 - 1
    expect = 2 * ((u - u.mean()) ** 2).mean()
    torch.testing.assert_close(c, expect, rtol=1e-5, atol=1e-6)


def test_orthonormal_of_orthonormal_rows_is_zero():
    assert L.orthonormal(torch.eye(4, 10) * 3).item() < 1e-6
    assert L.orthonormal(torch.ones(2, 5)).item() == pytest.approx(2.0, rel=1e-5)


def test_part_basis_is_nonnegative():
    b = L.PartBasis(5, 512)
    assert b.weight.shape == (5, 512) and torch.all(b() >= 0)


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda: L.wbce(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5)), "same shape"),
        (lambda: L.concentration(torch.zeros(2, 4, 4)), r"Tensor\[B, p, H, W\]"),
        (lambda: L.semantic(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), torch.zeros(3, 3)), "basis must be"),
        (lambda: L.semantic(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 5, 4), torch.zeros(2, 3)), "feat must be"),
        (
            lambda: L.part_total(
                torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4),
                torch.zeros(2, 3),
            ),
            "saliency_logit must be",
        ),
    ],
)
def test_loss_input_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


@pytest.mark.parametrize("low", [(4, 4), (3, 5), (32, 32)])
def test_factored_semantic_equals_dense_with_gradients(low):
    g = torch.Generator().manual_seed(5)
    B, p, C, H, W = 2, 3, 24, 32, 32
    D = torch.randn(B, p, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    S = torch.randn(B, 1, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(p, C, generator=g, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(B, C, *low, generator=g, dtype=torch.float64)
    m, _ = gts(B, H, W)
    m = m.double()

    def both(impl):
        out = L.part_total(D, m, S, feat, w, semantic_impl=impl)
        return out["semantic_gt"], out["semantic_sal"]

    dense, fact = both("dense"), both("factored")
    for a, b in zip(dense, fact, strict=True):
        torch.testing.assert_close(b.double(), a.double(), rtol=1e-5, atol=1e-7)
        ga = torch.autograd.grad(a, (D, S, w), retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(b, (D, S, w), retain_graph=True, allow_unused=True)
        for x, y, t in zip(ga, gb, (D, S, w), strict=True):
            x = torch.zeros_like(t) if x is None else x
            y = torch.zeros_like(t) if y is None else y
            torch.testing.assert_close(y.double(), x.double(), rtol=1e-4, atol=1e-6)
