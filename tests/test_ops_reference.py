"""The reference ops against naive per-part loops, their validation and backend dispatch."""
import pytest
import torch

from pdnet import ops


def naive_attention(q, k, v, scale, key_mask=None):
    B, p = q.shape[:2]
    out = torch.empty_like(q)
    for b in range(B):
        for j in range(p):
            s = (q[b, j] @ k[b, j].T) * scale
            if key_mask is not None:
                s = s + key_mask[b, j][None, :]
            out[b, j] = torch.softmax(s, dim=-1) @ v[b, j]
    return out


@pytest.mark.parametrize("B,p,Nq,Nk,d", [(1, 1, 1, 1, 16), (2, 3, 17, 5, 32), (1, 5, 64, 130, 16)])
def test_part_attention_matches_loops(B, p, Nq, Nk, d):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, p, n, d, generator=g, dtype=torch.float64) for n in (Nq, Nk, Nk))
    mask = torch.zeros(B, p, Nk, dtype=torch.float64)
    mask[..., ::3] = float("-inf") if Nk > 1 else 0.0
    for scale in (1.0, 0.25):
        torch.testing.assert_close(ops.part_attention(q, k, v, scale), naive_attention(q, k, v, scale))
        torch.testing.assert_close(
            ops.part_attention(q, k, v, scale, key_mask=mask), naive_attention(q, k, v, scale, mask)
        )


def test_part_masks_and_gt_variant():
    g = torch.Generator().manual_seed(1)
    D, S = torch.randn(2, 4, 5, 7, generator=g), torch.randn(2, 1, 5, 7, generator=g)
    R = ops.part_masks(D, S)
    torch.testing.assert_close(R.sum(1, keepdim=True), torch.sigmoid(S))
    G = (torch.rand(2, 1, 5, 7, generator=g) > 0.5).float()
    torch.testing.assert_close(ops.part_masks_gt(D, G), torch.softmax(D, 1) * G)
    assert torch.all(ops.part_masks_gt(D, torch.zeros_like(G)) == 0)


def test_assemble_parts_matches_loop():
    g = torch.Generator().manual_seed(2)
    P, Y = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 4, 5, 6, generator=g)
    R = torch.rand(2, 3, 5, 6, generator=g)
    expect = sum((P[:, k] + Y[:, k]) * R[:, k : k + 1] for k in range(3))
    torch.testing.assert_close(ops.assemble_parts(P, Y, R), expect)


def test_area_variance_by_hand():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 1.0  # area 4
    x[0, 1, 0, 0] = 1.0  # area 1
    a = torch.tensor([4.0, 1.0, 0.0])
    a = a / a.norm()
    expect = ((a - a.mean()) ** 2).sum() / 2
    torch.testing.assert_close(ops.area_variance(x), expect)
    assert ops.area_variance(torch.zeros(2, 3, 4, 4)).item() == 0.0  # empty masks
    single = ops.area_variance(torch.rand(2, 1, 4, 4, requires_grad=True))
    assert single.item() == 0.0  # one part: no variance (release: NaN)


@pytest.mark.parametrize(
    "call,exc,msg",
    [
        (lambda: ops.part_attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)), ValueError, r"q must have 4 dims.*\(2, 3, 4\)"),
        (lambda: ops.part_attention(torch.randn(2, 3, 4, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)), ValueError, "k must be"),
        (lambda: ops.part_attention(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8)), ValueError, "v must have the shape of k"),
        (lambda: ops.part_attention(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8).double(), torch.randn(1, 1, 4, 8)), TypeError, "dtype"),
        (lambda: ops.part_attention(torch.ones(1, 1, 4, 8, dtype=torch.long), torch.ones(1, 1, 4, 8), torch.ones(1, 1, 4, 8)), TypeError, "floating-point"),
        (lambda: ops.part_attention(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), key_mask=torch.zeros(1, 2, 4)), ValueError, "key_mask must be"),
        (lambda: ops.part_masks(torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)), ValueError, "saliency_logit must be"),
        (lambda: ops.part_masks_gt(torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 5)), ValueError, "mask must be"),
        (lambda: ops.assemble_parts(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4), torch.randn(1, 3, 4, 4)), ValueError, "masks must be"),
        (lambda: ops.assemble_parts(torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 4, 4)), ValueError, "y_feats must have the shape"),
        (lambda: ops.area_variance(torch.randn(2, 3, 4)), ValueError, r"x must have 4 dims"),
    ],
)
def test_validation_messages(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_unknown_backend_names_the_available_ones():
    x = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"unknown backend 'fastest'.*'reference'"):
        ops.area_variance(x, backend="fastest")
    assert "reference" in ops.available_backends()
    torch.testing.assert_close(ops.area_variance(x, backend="auto"), ops.area_variance(x, backend="reference"))


def test_missing_backend_error_names_available(monkeypatch):
    from pdnet.ops import _dispatch

    monkeypatch.delitem(_dispatch._REGISTRY, "triton", raising=False)
    monkeypatch.setitem(_dispatch._UNAVAILABLE_REASON, "triton", "not built in this test")
    with pytest.raises(RuntimeError, match=r"backend 'triton' is not available \(not built in this test\); available backends: .*reference"):
        ops.area_variance(torch.rand(1, 2, 3, 3), backend="triton")
