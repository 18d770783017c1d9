"""PDNet structure, reference-state reuse, gradients, training steps and input errors."""
import math

import pytest
import torch

import pdnet
from pdnet import losses as L
from pdnet.model.release import pdnet_to_release_key, release_to_pdnet_key


def small_model(**kw):
    cfg = dict(backbone="resnet18", parts=5, input_size=(64, 64))
    cfg.update(kw)
    torch.manual_seed(0)
    return pdnet.PDNet(pdnet.PDNetConfig(**cfg))


def pair(B=2, H=64, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, W, generator=g), torch.randn(B, 3, H, W, generator=g)


def masks(B=2, H=64, W=64):
    m = torch.zeros(B, 1, H, W)
    m[:, :, H // 4 : 3 * H // 4, W // 3 : 2 * W // 3] = 1
    return m, torch.roll(m, 3, dims=-1)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(backbone="vgg16"), "backbone"),
        (dict(parts=0), "parts"),
        (dict(parts=9), "parts"),
        (dict(input_size=(100, 96)), "multiples of 32"),
        (dict(loss_variant="mine"), "loss_variant"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        pdnet.PDNetConfig(**kw)


def test_config_round_trip():
    cfg = pdnet.PDNetConfig(backbone="resnet34", parts=3, input_size=(96, 128), loss_variant="paper")
    assert pdnet.PDNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PDNetConfig keys"):
        pdnet.PDNetConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize("backbone,lateral", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_lateral_width_follows_backbone(backbone, lateral):
    m = pdnet.PDNet(backbone=backbone, input_size=(64, 64))
    assert m.decoder.lateral5.conv.weight.shape == (128, lateral, 1, 1)


# ------------------------------------------------------------------ outputs
def test_output_shapes_and_rectangular_input():
    m = small_model(parts=3).eval()
    t, r = pair(H=64, W=96)
    with torch.no_grad():
        assert m(t, r).shape == (2, 1, 64, 96)
        out = m.train_outputs(t, r)
    assert out["pred"].shape == (2, 1, 64, 96)
    for tag in "tr":
        assert len(out[f"side_{tag}"]) == 4
        assert all(s.shape == (2, 1, 64, 96) for s in out[f"side_{tag}"])
        assert out[f"saliency_{tag}"].shape == (2, 1, 64, 96)
        assert out[f"parts_{tag}"].shape == (2, 3, 64, 96)


def test_encode_reference_reuse_gives_identical_logits():
    m = small_model().eval()
    t, r = pair()
    with torch.no_grad():
        direct = m(t, r)
        state = m.encode_reference(r)
        cached = m(t, state)
        # the same state serves several target frames
        t2 = torch.randn_like(t)
        assert torch.equal(m(t2, state), m(t2, state))
        assert torch.allclose(m(t2, r), m(t2, state), rtol=1e-5, atol=1e-5)
    assert torch.allclose(direct, cached, rtol=1e-5, atol=1e-5)


def test_reference_state_batch_one_broadcasts():
    m = small_model().eval()
    t, r = pair(B=3)
    with torch.no_grad():
        state = m.encode_reference(r[:1])
        out = m(t, state)
        expect = m(t, r[:1].expand_as(t).contiguous())
    # batch 1 vs batch 3 convolutions round differently; the release's scale of 1.0
    # (no 1/sqrt(d)) sharpens the softmax and amplifies that to ~1e-5 of the range
    assert (out - expect).abs().max() <= 1e-4 * expect.abs().max()


def test_eval_joint_batch_equals_separate_trunks():
    m = small_model().eval()
    t, r = pair()
    with torch.no_grad():
        joint = m(t, r)
        ft, fr = m.trunk(t), m.trunk(r)
        k, v = m.ipda.keys_values(fr.parts)
        sep = m._decode(ft, k, v, t.shape[-2:])
    assert torch.allclose(joint, sep, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ gradients / training
def _video_loss(m, basis, t, r, mt, mr):
    out = m.train_outputs(t, r)
    ft = torch.randn(t.shape[0], 512, 2, 2)
    fr = torch.randn(t.shape[0], 512, 2, 2)
    return L.video_step_loss(out, mt, mr, ft, fr, basis(), m.config.loss_variant)


def test_gradients_reach_every_trainable_parameter():
    m = small_model().train()
    basis = L.PartBasis(5, 512)
    t, r = pair()
    mt, mr = masks()
    loss = _video_loss(m, basis, t, r, mt, mr)
    loss["total"].backward()
    missing = [n for n, p in list(m.named_parameters()) + [("basis", basis.weight)] if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    zero = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"zero gradient for {zero}"


@pytest.mark.parametrize("parts", [1, 7])
def test_train_one_step(parts):
    m = small_model(parts=parts).train()
    basis = L.PartBasis(parts, 512)
    opt = torch.optim.SGD(list(m.parameters()) + list(basis.parameters()), lr=1e-3, momentum=0.9)
    t, r = pair()
    mt, mr = masks()
    before = [p.detach().clone() for p in m.parameters()]
    loss = _video_loss(m, basis, t, r, mt, mr)
    assert all(torch.isfinite(v) for v in loss.values()), {k: float(v) for k, v in loss.items()}
    opt.zero_grad()
    loss["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    opt.step()
    unchanged = [n for (n, p), b in zip(m.named_parameters(), before, strict=True) if torch.equal(p, b)]
    # with a single part the softmax over parts is constant: the part head gets no gradient
    assert unchanged == (["ipda.part_head.weight", "ipda.part_head.bias"] if parts == 1 else [])
    # an image step too
    out = m.train_outputs(t, t)
    img = L.image_step_loss(out, mt)
    assert torch.isfinite(img["total"])
    img["total"].backward()


def test_batchnorm_statistics_update_in_training():
    m = small_model().train()
    rm = m.ipda.adapter[0].bn.running_mean.clone()
    t, r = pair()
    m.train_outputs(t, r)
    assert not torch.equal(rm, m.ipda.adapter[0].bn.running_mean)


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    "t,r,exc,msg",
    [
        (
            torch.randn(2, 4, 64, 64),
            torch.randn(2, 4, 64, 64),
            ValueError,
            r"RGB batch Tensor\[B, 3, H, W\].*\(2, 4, 64, 64\)",
        ),
        (torch.randn(2, 3, 64, 64), torch.randn(2, 3, 96, 64), ValueError, "same shape"),
        (torch.randn(2, 3, 64, 64), torch.randn(1, 3, 64, 64), ValueError, "same shape"),
        (
            torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
            torch.zeros(2, 3, 64, 64, dtype=torch.uint8),
            TypeError,
            "floating-point",
        ),
        (torch.randn(2, 3, 60, 64), torch.randn(2, 3, 60, 64), ValueError, "multiples of 32.*60x64"),
        (torch.randn(3, 64, 64), torch.randn(3, 64, 64), ValueError, "RGB batch"),
        (torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64).double(), ValueError, "dtype and device"),
    ],
)
def test_bad_inputs_raise_clear_errors(t, r, exc, msg):
    m = small_model().eval()
    with pytest.raises(exc, match=msg):
        m(t, r)
    with pytest.raises(exc, match=msg):
        m.train_outputs(t, r)


def test_reference_state_size_mismatch():
    m = small_model().eval()
    t, r = pair()
    with torch.no_grad():
        state = m.encode_reference(r)
    with pytest.raises(ValueError, match="reference state was encoded at"):
        m(torch.randn(2, 3, 96, 64), state)
    with pytest.raises(ValueError, match="batch"):
        m(torch.randn(3, 3, 64, 64), state)


# ------------------------------------------------------------------ release checkpoints
def test_release_key_map_round_trips():
    for k in small_model().state_dict():
        rk = pdnet_to_release_key(k)
        assert rk is not None, k
        assert release_to_pdnet_key(rk) == k


@pytest.mark.parametrize("backbone,parts", [("resnet18", 3), pytest.param("resnet101", 5, marks=pytest.mark.slow)])
def test_release_export_reload_other_backbones(backbone, parts):
    a = pdnet.PDNet(backbone=backbone, parts=parts, input_size=(64, 64)).eval()
    sd = pdnet.to_release_state_dict(a)
    assert "bkbone.layer1.0.conv1.weight" in sd and f"ipda.part_q_conv.{parts - 1}.weight" in sd
    if backbone == "resnet101":
        assert "bkbone.layer3.22.conv3.weight" in sd
    b = pdnet.PDNet(backbone=backbone, parts=parts, input_size=(64, 64)).eval()
    pdnet.load_release_state_dict(b, {"module." + k: v for k, v in sd.items()})  # DDP prefix accepted
    t, r = pair()
    with torch.no_grad():
        assert torch.equal(a(t, r), b(t, r))


def test_release_load_lists_every_problem():
    m = small_model()
    sd = pdnet.to_release_state_dict(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd.pop("head_2.weight")
    sd.pop("ipda.sup_head.bias")
    sd["extra.thing"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(1, 64, 3, 3)
    with pytest.raises(RuntimeError) as e:
        pdnet.load_release_state_dict(m, sd)
    msg = str(e.value)
    assert "missing keys (2)" in msg and "head_2.weight" in msg and "ipda.sup_head.bias" in msg
    assert "unexpected keys (1): extra.thing" in msg
    assert "head.weight: checkpoint (1, 64, 3, 3) vs model (1, 128, 3, 3)" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "model changed on a failed load"


def test_release_load_wrong_part_count():
    sd = pdnet.to_release_state_dict(small_model(parts=5))
    with pytest.raises(RuntimeError, match="unexpected keys"):
        pdnet.load_release_state_dict(small_model(parts=3), sd)


def test_init_follows_design():
    m = small_model()
    w = m.decoder.fuse2.conv1.conv.weight
    fan_in = w[0].numel()
    assert abs(w.std().item() - math.sqrt(2.0 / fan_in)) < 0.1 * math.sqrt(2.0 / fan_in)
    assert torch.all(m.head.bias == 0) and torch.all(m.decoder.fuse2.conv1.bn.weight == 1)
