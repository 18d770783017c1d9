"""PDNet and the part losses with ops_backend="triton" against the reference ops.

Tiny inputs (ResNet-18, 64x64: a 4x4 IPDA grid, 16 tokens, p=5, d=32); float64, so
any kernel error shows far above the rounding level.
"""
import pytest
import torch

pytest.importorskip("triton")

import pdnet  # noqa: E402 - these imports need triton, checked above
from pdnet import kernels  # noqa: E402
from pdnet.losses import part_total  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or kernels.INTERPRET),
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def twin_models():
    torch.manual_seed(0)
    ref = pdnet.PDNet(backbone="resnet18", parts=5, input_size=(64, 64), ops_backend="reference")
    tri = pdnet.PDNet(backbone="resnet18", parts=5, input_size=(64, 64), ops_backend="triton")
    tri.load_state_dict(ref.state_dict())
    return ref.double().to(DEVICE), tri.double().to(DEVICE)


def frames(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 64, 64, generator=g, dtype=torch.float64).to(DEVICE)


def test_model_outputs_and_gradients_match_reference():
    ref, tri = twin_models()
    target, reference = frames(1), frames(2)
    weight = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(DEVICE)
    preds = []
    for model in (ref, tri):
        model.train()  # BatchNorm on batch statistics: the training path
        preds.append(model(target, reference))
        (preds[-1] * weight).sum().backward()
    torch.testing.assert_close(preds[1], preds[0], rtol=1e-9, atol=1e-9)
    n = 0
    for (name, p_ref), (_, p_tri) in zip(ref.named_parameters(), tri.named_parameters(), strict=True):
        if p_ref.grad is None:
            assert p_tri.grad is None, name
            continue
        torch.testing.assert_close(
            p_tri.grad, p_ref.grad, rtol=1e-7, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}"
        )
        n += 1
    assert n > 50  # the trunk, IPDA (attention, masks, assembly) and heads all got gradients
    assert tri.ipda.query[0].weight.grad.abs().sum() > 0 and tri.ipda.key[0].weight.grad.abs().sum() > 0

    ref.eval(), tri.eval()
    with torch.no_grad():
        state = tri.encode_reference(reference)  # batch-expanded keys/values path
        torch.testing.assert_close(tri(target, state), ref(target, reference), rtol=1e-9, atol=1e-9)


def test_part_losses_match_reference():
    g = torch.Generator().manual_seed(0)
    B, p, H, W = 2, 5, 32, 32
    part_logits = torch.randn(B, p, H, W, generator=g).to(DEVICE)
    saliency = torch.randn(B, 1, H, W, generator=g).to(DEVICE)
    gt = (torch.rand(B, 1, H, W, generator=g) > 0.5).float().to(DEVICE)
    feat = torch.randn(B, 8, 8, 8, generator=g).to(DEVICE)
    basis = torch.randn(p, 8, generator=g).to(DEVICE)
    out = {}
    for backend in ("reference", "triton"):
        logits = part_logits.clone().requires_grad_()
        terms = part_total(logits, gt, saliency, feat, basis, backend=backend)
        (grad,) = torch.autograd.grad(terms["total"], logits)
        out[backend] = (terms, grad)
    (t_ref, g_ref), (t_tri, g_tri) = out["reference"], out["triton"]
    assert set(t_ref) == set(t_tri)
    for name in t_ref:
        torch.testing.assert_close(
            t_tri[name], t_ref[name], rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    torch.testing.assert_close(g_tri, g_ref, rtol=1e-4, atol=1e-7)
