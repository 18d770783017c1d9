"""Inference engine: checkpoints, BatchNorm folding, the fast path, the streaming segmenter (CPU)."""
import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from release_fixture import FIXTURE, read_keys, recipe_state_dict
from torch import nn

import pdnet
from pdnet.inference import (
    CheckpointError,
    FastPDNet,
    VideoSegmenter,
    fold_batchnorm,
    fold_conv_bn,
    infer_config,
    load,
    preprocess,
    read_checkpoint,
    save_model_checkpoint,
    to_uint8,
)
from pdnet.inference.cpu import cpu_bf16_supported

OUT_RTOL = 1e-4  # tests/data/official/PARITY.md: model outputs to ~1e-4 relative error in fp32


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


def release_like(config: pdnet.PDNetConfig, seed_base: int = 1000) -> pdnet.PDNet:
    """A PDNet in eval mode with the parity recipe's weights: non-trivial BatchNorm running stats."""
    model = pdnet.PDNet(config)
    keys = [(k, tuple(v.shape), str(v.dtype)) for k, v in pdnet.to_release_state_dict(model).items()]
    pdnet.load_release_state_dict(model, recipe_state_dict(keys, seed_base))
    return model.eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return release_like(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64)))


@pytest.fixture(scope="module")
def seg(small):
    return VideoSegmenter(small, device="cpu")


def frames_like(B, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)


# ---------------------------------------------------------------------------- checkpoints
def test_save_and_load_roundtrip(small, tmp_path):
    path = save_model_checkpoint(tmp_path / "run" / "last.pt", small, {"epoch": 7, "metrics": {"J": 0.5}})
    assert sorted(os.listdir(path.parent)) == ["last.pt"], "the temporary file was left behind"
    raw = read_checkpoint(path)
    assert raw["format"] == "pdnet" and raw["version"] == 1 and raw["epoch"] == 7 and raw["metrics"] == {"J": 0.5}
    assert raw["config"] == small.config.to_dict()
    loaded = load(path)
    assert loaded.config == small.config and not loaded.training
    x, r = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, r), small(x, r))


def test_save_rejects_reserved_extra_and_non_pdnet(small, tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_model_checkpoint(tmp_path / "a.pt", small, {"model": 1})
    with pytest.raises(TypeError, match="PDNet"):
        save_model_checkpoint(tmp_path / "b.pt", nn.Linear(2, 2))
    assert not list(tmp_path.iterdir())


def test_save_unwraps_compiled_or_parallel(small, tmp_path):
    wrapped = nn.DataParallel(small)
    save_model_checkpoint(tmp_path / "w.pt", wrapped)
    assert all(not k.startswith("module.") for k in read_checkpoint(tmp_path / "w.pt")["model"])


def test_load_release_file_infers_config(tmp_path):
    torch.manual_seed(1)
    model = release_like(pdnet.PDNetConfig(backbone="resnet18", parts=3, input_size=(64, 64)), seed_base=5)
    torch.save({"model": pdnet.to_release_state_dict(model), "epoch": 3}, tmp_path / "release.pth")
    loaded = load(tmp_path / "release.pth", input_size=64)
    assert (loaded.config.backbone, loaded.config.parts, loaded.config.input_size) == ("resnet18", 3, (64, 64))
    assert load(tmp_path / "release.pth").config.input_size == (480, 480)  # the release's default
    x, r = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, r), model(x, r))


@pytest.mark.parametrize(
    "c2, blocks, name", [(64, 2, "resnet18"), (64, 6, "resnet34"), (256, 6, "resnet50"), (256, 23, "resnet101")]
)
def test_infer_backbone_from_keys(c2, blocks, name):
    state = {"decoder.lateral2.conv.weight": torch.zeros(128, c2, 1, 1)}
    state.update({f"encoder.layer3.{i}.conv1.weight": torch.zeros(1) for i in range(blocks)})
    state.update({f"ipda.query.{k}.weight": torch.zeros(32, 64, 1, 1) for k in range(4)})
    cfg = infer_config(state)
    assert cfg.backbone == name and cfg.parts == 4 and cfg.attention_dim == 32
    assert infer_config(state, backbone="resnet34", parts=2).backbone == "resnet34"
    with pytest.raises(CheckpointError, match="cannot tell the backbone"):
        infer_config({**state, "encoder.layer3.99.conv1.weight": torch.zeros(1)})


def test_load_errors(small, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load(tmp_path / "nowhere.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a torch file"):
        load(tmp_path / "junk.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is not a torch file .*an empty file"):
        load(tmp_path / "empty.pt")
    torch.save({"weights": torch.zeros(100)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200])  # truncated zip
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*cut.pt"):
        load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="neither a pdnet checkpoint"):  # legacy format read, then judged
        load(tmp_path / "legacy.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a pdnet checkpoint"):
        load(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load(tmp_path / "tensor.pt")


def test_load_release_mismatch_names_keys(small, tmp_path):
    sd = pdnet.to_release_state_dict(small)
    del sd["ipda.part_k_conv.2.weight"]
    sd["head.weight"] = torch.zeros(1, 128, 5, 5)
    sd["extra.thing"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "bad.pth")
    msg = str(info.value)
    assert "bad.pth" in msg and "ipda.part_k_conv.2.weight" in msg and "extra.thing" in msg
    assert "head.weight: checkpoint (1, 128, 5, 5) vs model (1, 128, 3, 3)" in msg


def test_load_engine_mismatch_names_keys(small, tmp_path):
    save_model_checkpoint(tmp_path / "ck.pt", small)
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "ck.pt", backbone="resnet50")  # the weights are resnet18's
    msg = str(info.value)
    assert "ck.pt" in msg and "resnet50" in msg and "decoder.lateral2.conv.weight" in msg
    assert "encoder.layer1.0.conv3.weight" in msg  # a Bottleneck key the file lacks


# ---------------------------------------------------------------------------- BatchNorm folding
@pytest.mark.parametrize("groups, bias", [(1, False), (2, True)])
def test_fold_conv_bn(groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=bias).double()
    bn = nn.BatchNorm2d(6).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    folded = fold_conv_bn(conv, bn)
    assert folded.groups == groups and folded.bias is not None
    torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_fold_batchnorm_refuses_unknown_patterns():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.norm = nn.BatchNorm2d(3)

    with pytest.raises(RuntimeError, match="could not fold.*norm"):
        fold_batchnorm(Odd().eval())
    with pytest.raises(RuntimeError, match="eval"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


# ---------------------------------------------------------------------------- the fast path
@pytest.mark.parametrize("parts", [5, 2])
def test_fast_path_equals_reference_in_float64(parts):
    """Folding and part batching change no maths: agreement to float64 rounding."""
    torch.manual_seed(parts)
    model = release_like(pdnet.PDNetConfig(backbone="resnet18", parts=parts, input_size=(64, 64)), seed_base=parts)
    model = model.double()
    fast = FastPDNet(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x, r = torch.randn(2, 3, 64, 96, dtype=torch.float64), torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x, r.expand(2, -1, -1, -1), size=(50, 70))
        state = fast.encode_reference(r)
        out = fast(x, state.keys, state.values, (50, 70))  # keys of batch 1, expanded to the batch
    assert out.shape == (2, 1, 50, 70)
    assert rel_err(out, ref) < 1e-10


def test_fast_path_fp32_channels_last(small):
    """fp32 + channels_last vs a float64 reference, to the fp32 output tolerance of PARITY.md."""
    ref64 = copy.deepcopy(small).double()
    fast = FastPDNet(small).to(memory_format=torch.channels_last)
    x, r = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = ref64(x.double(), r.double())
        state = fast.encode_reference(r.contiguous(memory_format=torch.channels_last))
        out = fast(x.contiguous(memory_format=torch.channels_last), state.keys, state.values)
    assert rel_err(out, ref) < OUT_RTOL


def test_fast_path_reproduces_release_outputs():
    """The folded model gives the release's own outputs (tests/data/official parity fixture)."""
    fixture = torch.load(FIXTURE, map_location="cpu")
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet50", input_size=(64, 64)))
    pdnet.load_release_state_dict(model, recipe_state_dict(read_keys(), fixture["seed_base"]))
    fast = FastPDNet(model.eval()).to(memory_format=torch.channels_last)
    with torch.no_grad():
        state = fast.encode_reference(fixture["y"])
        out = fast(fixture["x"], state.keys, state.values)
    assert rel_err(out, fixture["pred_eval"]) < OUT_RTOL


@pytest.mark.skipif(not cpu_bf16_supported(), reason="bf16 on the CPU needs native bf16 (AVX-512 BF16 / AMX)")
def test_fast_path_bf16_tolerance(small):
    """bf16 fast path: max|out - ref64| <= 2 * max|PDNet in bf16 - ref64| (STYLE.md rule)."""
    frames = frames_like(2, 64, 64, seed=3)
    ref_seg = VideoSegmenter(copy.deepcopy(small).double(), device="cpu", dtype="float32", fast=False)
    ref = ref_seg.predict(frames, ref_seg.encode_reference(frames[:1]))
    pt_seg = VideoSegmenter(copy.deepcopy(small).bfloat16(), device="cpu", fast=False)
    pt = pt_seg.predict(frames, pt_seg.encode_reference(frames[:1]))
    seg = VideoSegmenter(small, device="cpu", dtype="bfloat16")
    out = seg.predict(frames, seg.encode_reference(frames[:1]))
    assert out.dtype == torch.float32
    err, pt_err = (out.double() - ref.double()).abs().max(), (pt.double() - ref.double()).abs().max()
    assert pt_err > 0
    assert err <= 2 * pt_err, (float(err), float(pt_err))


# ---------------------------------------------------------------------------- pre / post-processing
def test_preprocess_resize_is_cv2_linear():
    """Half-pixel bilinear without antialiasing (cv2.INTER_LINEAR): a 2x reduction averages 2x2 blocks."""
    img = torch.randint(0, 256, (1, 3, 8, 12), dtype=torch.uint8)
    x = preprocess(img, (4, 6))
    blocks = F.avg_pool2d(img.float() / 255.0, 2)
    torch.testing.assert_close(x, pdnet.preprocess.normalize(blocks), rtol=1e-6, atol=1e-6)
    same = preprocess(img, (8, 12))
    torch.testing.assert_close(same, pdnet.preprocess.normalize(img))


def test_to_uint8_rounds():
    p = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 0.5, 1.2])
    assert to_uint8(p).tolist() == [0, 0, 0, 255, 128, 255]  # round half to even: 0.5 -> 0, 127.5 -> 128


# ---------------------------------------------------------------------------- the segmenter
def protocol(model, frames, reference):
    """The release's test-time protocol written out: resize, normalise, model, upsample to the frame, sigmoid."""
    H, W = frames.shape[-2:]
    x = pdnet.preprocess.normalize(F.interpolate(frames.float() / 255, size=(64, 64), mode="bilinear"))
    r = pdnet.preprocess.normalize(F.interpolate(reference.float() / 255, size=(64, 64), mode="bilinear"))
    with torch.no_grad():
        return torch.sigmoid(model(x, r.expand_as(x), size=(H, W)))


def test_step_streaming_matches_protocol_and_batched(small, seg):
    frames = frames_like(4, 50, 70, seed=1)  # not multiples of 32: resized to the model's 64x64
    expected = protocol(small, frames, frames[:1])
    seg.reset()
    assert seg.fast and seg.channels_last and not seg.cuda_graphs and seg.dtype == torch.float32
    stream = torch.stack([seg.step(np.ascontiguousarray(f.permute(1, 2, 0).numpy())) for f in frames])
    assert stream.shape == (4, 1, 50, 70)
    torch.testing.assert_close(stream, expected, rtol=0, atol=1e-5)
    batched = seg.predict(frames)  # the state kept from the first step
    torch.testing.assert_close(batched, stream, rtol=0, atol=1e-5)
    reference_path = VideoSegmenter(small, device="cpu", fast=False)
    torch.testing.assert_close(reference_path.predict(frames, reference_path.encode_reference(frames[0])),
                               expected, rtol=0, atol=1e-6)
    seg.reset()
    other = seg.step(frames[2])  # a new clip: frame 2 is now its own reference
    torch.testing.assert_close(other[None], protocol(small, frames[2:3], frames[2:3]), rtol=0, atol=1e-5)


def test_segmenter_input_errors(small, seg):
    seg.reset()
    with pytest.raises(RuntimeError, match="no reference frame"):
        seg.predict(frames_like(1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 4, 32, 32\)"):
        seg.step(torch.zeros(2, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\].*\(32, 32\)"):
        seg.step(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(TypeError, match="int64"):
        seg.step(torch.zeros(3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="one frame"):
        seg.encode_reference(frames_like(2, 32, 32))
    with pytest.raises(ValueError, match="multiples of 32"):
        VideoSegmenter(small, device="cpu", input_size=(50, 64))
    with pytest.raises(ValueError, match="CUDA"):
        VideoSegmenter(small, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="dtype"):
        VideoSegmenter(small, device="cpu", dtype="int8")
    state = seg.encode_reference(frames_like(1, 32, 32))
    with pytest.raises(ValueError, match="encoded at"):
        seg.predict(frames_like(1, 32, 32), pdnet.ReferenceState(state.keys, state.values, (96, 96)))


def test_top_level_exports():
    assert pdnet.load is load
    assert callable(pdnet.segment_video)
