"""Parity with the authors' release (tests/data/official, see PARITY.md there)."""
import pytest
import torch
from release_fixture import FIXTURE, read_keys, recipe_state_dict

import pdnet
from pdnet import losses as L

OUT_RTOL = 1e-4  # PARITY.md: model outputs to about 1e-4 relative error in fp32
LOSS_RTOL = 1e-5  # PARITY.md: losses to about 1e-5 relative error


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, map_location="cpu")


@pytest.fixture(scope="module")
def release_model(fixture):
    H, W = fixture["x"].shape[-2:]
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone=fixture["backbone"], input_size=(H, W)))
    pdnet.load_release_state_dict(model, recipe_state_dict(read_keys(), fixture["seed_base"]))
    return model.eval()


@pytest.fixture(scope="module")
def train_outputs(release_model, fixture):
    with torch.no_grad():
        return release_model.train_outputs(fixture["x"], fixture["y"])


def test_release_key_set_is_complete():
    """Every key of the release's ResNet-50 state_dict maps onto the engine and back."""
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet50", input_size=(64, 64)))
    exported = pdnet.to_release_state_dict(model)
    keys = read_keys()
    assert set(exported) == {k for k, _, _ in keys}
    for name, shape, _ in keys:
        assert tuple(exported[name].shape) == shape, name


def test_pred_eval(release_model, fixture):
    with torch.no_grad():
        out = release_model(fixture["x"], fixture["y"])
    assert out.shape == fixture["pred_eval"].shape
    assert rel_err(out, fixture["pred_eval"]) < OUT_RTOL


def test_pred_eval_with_cached_reference(release_model, fixture):
    with torch.no_grad():
        state = release_model.encode_reference(fixture["y"])
        out = release_model(fixture["x"], state)
    assert rel_err(out, fixture["pred_eval"]) < OUT_RTOL


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("pred", "pred"),
        ("saliency_t", "sup_x"),
        ("parts_t", "parts_x"),
        ("saliency_r", "sup_y"),
        ("parts_r", "parts_y"),
    ],
)
def test_train_outputs(train_outputs, fixture, ours, theirs):
    ref = fixture["train_outputs"][theirs]
    assert train_outputs[ours].shape == ref.shape
    assert rel_err(train_outputs[ours], ref) < OUT_RTOL


@pytest.mark.parametrize("frame,theirs", [("t", "side_x"), ("r", "side_y")])
@pytest.mark.parametrize("i", range(4))
def test_side_outputs(train_outputs, fixture, frame, theirs, i):
    ref = fixture["train_outputs"][theirs][i]
    assert rel_err(train_outputs[f"side_{frame}"][i], ref) < OUT_RTOL


@pytest.fixture(scope="module")
def loss_case(fixture):
    T, inputs = fixture["train_outputs"], fixture["loss_inputs"]
    X = torch.softmax(T["parts_x"], dim=1)
    return T, inputs, X, fixture["losses"]


def test_seg_losses(loss_case):
    T, inputs, _, R = loss_case
    assert rel_err(L.wbce(T["pred"], inputs["gt"]), R["seg_wbce"]) < LOSS_RTOL
    assert rel_err(L.prob_l1(T["pred"], inputs["gt"]), R["seg_l1"]) < LOSS_RTOL
    s = L.seg_loss(T["pred"], inputs["gt"])
    assert rel_err(s["total"], R["seg_wbce"] + 0.8 * R["seg_l1"]) < LOSS_RTOL


def test_part_losses(loss_case):
    T, inputs, X, R = loss_case
    gt, feat, basis = inputs["gt"], inputs["feat"], inputs["basis"]
    assert rel_err(L.concentration(X * gt), R["concentration"]) < LOSS_RTOL
    assert rel_err(L.semantic(X * gt, feat * gt, basis), R["semantic"]) < LOSS_RTOL
    assert rel_err(L.orthonormal(basis), R["orthonormal"]) < LOSS_RTOL
    assert rel_err(L.area(X * gt), R["area"]) < LOSS_RTOL


def test_part_total(loss_case):
    T, inputs, _, R = loss_case
    out = L.part_total(T["parts_x"], inputs["gt"], T["sup_x"], inputs["feat"], inputs["basis"])
    assert rel_err(out["total"], R["part_total"]) < LOSS_RTOL


def test_losses_on_our_outputs(train_outputs, fixture):
    """The whole chain: our outputs fed to our losses give the release's loss values."""
    inputs, R = fixture["loss_inputs"], fixture["losses"]
    parts, saliency = train_outputs["parts_t"], train_outputs["saliency_t"]
    out = L.part_total(parts, inputs["gt"], saliency, inputs["feat"], inputs["basis"])
    assert rel_err(out["total"], R["part_total"]) < 1e-4
    assert rel_err(L.wbce(train_outputs["pred"], inputs["gt"]), R["seg_wbce"]) < 1e-4
