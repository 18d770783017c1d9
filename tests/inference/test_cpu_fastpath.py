"""CPU options of the fast path (pdnet.inference.cpu): compile=True, bf16 on the CPU, int8 (PT2E),
mask_agreement_jf. Tiny model: resnet18 at 64x64 with non-trivial BatchNorm statistics."""
import copy

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import pdnet
from pdnet.inference import VideoSegmenter, cpu
from pdnet.inference.cpu import as_clip, cpu_bf16_supported, mask_agreement_jf
from pdnet.inference.segmenter import parse_dtype

OUT_RTOL = 1e-4  # tests/data/official/PARITY.md: fp32 outputs to ~1e-4 of the output scale


def tiny(seed: int = 0) -> pdnet.PDNet:
    """resnet18 PDNet at 64x64, eval mode, with random BatchNorm statistics and affine terms."""
    torch.manual_seed(seed)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64)))
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3, generator=g)
            m.running_var.uniform_(0.4, 2.5, generator=g)
            m.weight.data.uniform_(0.6, 1.4, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


def synth_clip(index: int, frames: int = 4, size=(64, 64)) -> np.ndarray:
    """A synthetic portrait clip (pdnet synth: a person moving smoothly over a photo), uint8 [T, H, W, 3]."""
    from pdnet.data.synth.layers import ClipRenderer

    return np.stack([frame for frame, _ in ClipRenderer(7, index, frames, size)])


def centred(model: pdnet.PDNet, clips) -> pdnet.PDNet:
    """A copy of ``model`` whose head bias makes the median probability over the clips' frames 0.5.

    Random weights put nearly every pixel on one side of 0.5 (all-foreground or
    all-background masks, on which J&F says nothing); with the logits centred, the masks
    cover about half of each frame and have boundaries.
    """
    seg = VideoSegmenter(model, device="cpu", dtype="float32")
    probs = []
    for clip in clips:
        frames = torch.from_numpy(clip).permute(0, 3, 1, 2)
        probs.append(seg.predict(frames, seg.encode_reference(frames[:1])))  # [T, 1, H, W]
    median = torch.cat(probs).median().double().clamp(1e-6, 1 - 1e-6)
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.head.bias -= torch.logit(median).float()  # a constant shift of every logit
    return out


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def clips():
    return [synth_clip(i) for i in range(4)]


@pytest.fixture(scope="module")
def model(clips):
    return centred(tiny(0), clips)


@pytest.fixture(scope="module")
def eager(model):
    return VideoSegmenter(model, device="cpu", dtype="float32")


needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(), reason="this CPU has no native bf16 (AVX-512 BF16 / AMX)")


# ---------------------------------------------------------------------------- capabilities and errors
@pytest.mark.parametrize(
    ("mkldnn", "x86", "avx512_bf16", "amx", "expected"),
    [
        (True, True, False, False, False),  # AVX-512 without BF16: oneDNN emulates bf16
        (True, True, True, False, True),
        (True, True, False, True, True),
        (False, True, True, True, False),  # oneDNN says no
        (True, False, False, False, True),  # Arm: oneDNN's check is the BF16 extension
    ],
)
def test_cpu_bf16_supported_reads_the_cpu_features(monkeypatch, mkldnn, x86, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: x86)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_bf16_supported() is expected


def test_bf16_refused_on_a_cpu_without_native_bf16(monkeypatch, model):
    monkeypatch.setattr(cpu, "cpu_bf16_supported", lambda: False)
    with pytest.raises(ValueError, match=r"^dtype bfloat16 on the CPU needs native bf16 \(AVX-512 BF16 or AMX") as e:
        VideoSegmenter(model, device="cpu", dtype="bfloat16")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="native bf16"):
        parse_dtype(torch.bfloat16, torch.device("cpu"))
    assert parse_dtype("float32", torch.device("cpu")) == torch.float32
    assert parse_dtype("auto", torch.device("cpu")) == torch.float32  # auto never picks bf16 on the CPU


def test_option_errors(monkeypatch, model, clips):
    calib = clips[:1]
    cases = [
        (dict(quantize="int4", calibration=calib), ValueError, r"quantize must be None or 'int8', got 'int4'"),
        (dict(quantize="int8"), ValueError, r"quantize='int8' needs calibration clips"),
        (dict(calibration=calib), ValueError, r"calibration is only used with quantize='int8'"),
        (dict(quantize="int8", calibration=calib, fast=False), ValueError, r"quantize='int8' needs fast=True"),
        (dict(compile=True, fast=False), ValueError, r"compile=True needs fast=True"),
        (dict(quantize="int8", calibration=[]), ValueError, r"calibration clip: no clips"),
        (dict(quantize="int8", calibration=clips[0]), TypeError, r"expected an iterable of clips .* got one array"),
        (dict(quantize="int8", calibration=[clips[0], clips[1][0]]), ValueError,
         r"calibration clip 1: expected frames \[T, H, W, 3\] or \[T, 3, H, W\], got shape \(64, 64, 3\)"),
        (dict(quantize="int8", calibration=[clips[0].astype(np.float32) / 255]), TypeError,
         r"calibration clip 0: frames must be uint8 \(0..255\), got torch.float32"),
        (dict(quantize="int8", calibration=[clips[0][..., :2]]), ValueError,
         r"calibration clip 0: expected frames \[T, H, W, 3\] or \[T, 3, H, W\], got shape \(4, 64, 64, 2\)"),
    ]
    for kwargs, exc, message in cases:
        with pytest.raises(exc, match=message) as e:
            VideoSegmenter(model, device="cpu", **{"dtype": "float32", **kwargs})
        assert "\n" not in str(e.value)
    monkeypatch.setattr(cpu, "cpu_bf16_supported", lambda: True)
    with pytest.raises(ValueError, match=r"quantize='int8' keeps the non-quantised ops in float32: use dtype float32"):
        VideoSegmenter(model, device="cpu", dtype="bfloat16", quantize="int8", calibration=calib)
    monkeypatch.setattr(cpu, "torchao_installed", lambda: False)
    with pytest.raises(ImportError, match=r"quantize='int8' needs torchao, .* pip install 'pdnet\[deploy\]'"):
        VideoSegmenter(model, device="cpu", quantize="int8", calibration=calib)


def test_cuda_is_refused_before_anything_runs(monkeypatch, model, clips):
    """compile / int8 are CPU options: on CUDA the fast path replays CUDA graphs instead."""
    import pdnet.inference.segmenter as segmenter

    monkeypatch.setattr(segmenter, "parse_device", lambda device: torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"^compile=True is for the CPU .* got cuda:0; on CUDA the fast path replays"):
        VideoSegmenter(model, device="cuda", dtype="float32", compile=True)
    with pytest.raises(ValueError, match=r"^quantize='int8' runs on the CPU only .* got cuda:0$"):
        VideoSegmenter(model, device="cuda", dtype="float32", quantize="int8", calibration=clips[:1])


def test_as_clip_layouts(clips):
    c = clips[0]  # [T, H, W, 3]
    t = as_clip(c, "clip")
    assert t.shape == (4, 3, 64, 64) and t.dtype == torch.uint8
    assert torch.equal(t, torch.from_numpy(c).permute(0, 3, 1, 2))
    assert torch.equal(as_clip(torch.from_numpy(c), "clip"), t)  # tensor [T, H, W, 3]
    assert torch.equal(as_clip(t, "clip"), t)  # tensor [T, 3, H, W]
    with pytest.raises(ValueError, match=r"clip: empty clip of shape \(0, 3, 64, 64\)"):
        as_clip(t[:0], "clip")
    with pytest.raises(TypeError, match=r"clip: expected a uint8 numpy array or tensor .* got list"):
        as_clip([c], "clip")


# ---------------------------------------------------------------------------- mask agreement
def test_mask_agreement_identical_and_different(model, eager, clips):
    same = mask_agreement_jf(eager, VideoSegmenter(model, device="cpu", dtype="float32"), clips[:2], batch_size=4)
    assert same == {"J": 1.0, "F": 1.0, "JF": 1.0, "prob_mae": 0.0, "prob_max": 0.0, "frames": 8}
    other = VideoSegmenter(centred(tiny(1), clips[:2]), device="cpu", dtype="float32")
    diff = mask_agreement_jf(other, eager, clips[:2])
    assert diff["frames"] == 8
    assert diff["JF"] < 0.6 and diff["J"] < 1 and diff["F"] < 1  # measured: about 0.3
    assert diff["JF"] == pytest.approx((diff["J"] + diff["F"]) / 2)
    assert 0 < diff["prob_mae"] <= diff["prob_max"] <= 1
    # mean |p - p_ref| over every pixel, computed here directly
    clip = torch.from_numpy(clips[0]).permute(0, 3, 1, 2)
    p = other.predict(clip, other.encode_reference(clip[:1]))
    q = eager.predict(clip, eager.encode_reference(clip[:1]))
    one = mask_agreement_jf(other, eager, clips[:1], batch_size=6)  # the same batches as above
    assert one["prob_mae"] == pytest.approx(float((p - q).abs().double().mean()), rel=1e-9)
    assert one["prob_max"] == pytest.approx(float((p - q).abs().max()), rel=1e-6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mask_agreement_jf(other, eager, clips[:1], batch_size=0)


# ---------------------------------------------------------------------------- bf16
@needs_bf16
def test_bf16_eager_within_the_low_precision_rule(model, clips):
    """max|bf16 fast - fp64| <= 2 max|plain PDNet in bf16 - fp64| (STYLE.md), on a synthetic clip."""
    frames = torch.from_numpy(clips[0][:2]).permute(0, 3, 1, 2)
    ref_seg = VideoSegmenter(copy.deepcopy(model).double(), device="cpu", dtype="float32", fast=False)
    ref = ref_seg.predict(frames, ref_seg.encode_reference(frames[:1]))
    pt_seg = VideoSegmenter(copy.deepcopy(model).bfloat16(), device="cpu", dtype="float32", fast=False)
    pt = pt_seg.predict(frames, pt_seg.encode_reference(frames[:1]))
    seg = VideoSegmenter(model, device="cpu", dtype="bfloat16")
    assert next(seg.net.parameters()).dtype == torch.bfloat16
    out = seg.predict(frames, seg.encode_reference(frames[:1]))
    err, pt_err = (out.double() - ref).abs().max(), (pt.double() - ref).abs().max()
    assert 0 < pt_err
    assert err <= 2 * pt_err, (float(err), float(pt_err))


# ---------------------------------------------------------------------------- compile=True
@pytest.mark.slow
def test_compile_equals_eager_fp32(model, eager, clips):
    """The compiled step and encoder compute the eager fast path's function (fp32 tolerance of
    PARITY.md relative to the logit scale); batch 1 and 3 compile, batch 2 is padded to 3."""
    seg = VideoSegmenter(model, device="cpu", dtype="float32", compile=True)
    clip = synth_clip(1, frames=6)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2)  # [6, 3, 64, 64]
    with torch.inference_mode():
        state, state_ref = seg.encode_reference(frames[:1]), eager.encode_reference(frames[:1])
        assert rel_err(state.keys, state_ref.keys) < OUT_RTOL and rel_err(state.values, state_ref.values) < OUT_RTOL
        x = seg._input(frames[:3])
        logits = seg._step(x, state.keys, state.values)  # [3, 1, 16, 16]
        logits_ref = eager.net(x, state.keys, state.values, (16, 16))
    assert logits.shape == (3, 1, 16, 16)
    assert rel_err(logits, logits_ref) < OUT_RTOL
    probs = seg.predict(frames[:3], state)
    assert probs.shape == (3, 1, 64, 64)
    assert (probs - eager.predict(frames[:3], state)).abs().max() < 1e-5
    seg.reset()
    first = seg.step(clip[0])  # batch 1: its own graph
    assert (first - eager.predict(frames[:1], state)[0]).abs().max() < 1e-5
    graphs = counters["stats"]["unique_graphs"]
    two = seg.predict(frames[3:5], state)  # padded to the compiled batch of 3, not compiled
    assert counters["stats"]["unique_graphs"] == graphs
    assert seg._step.batch_sizes == {1, 3}
    assert (two - eager.predict(frames[3:5], state)).abs().max() < 1e-5
    with torch.no_grad():
        seg.net.head.bias += 1.0  # frozen weights: constants of the compiled graphs, not read again
    assert torch.equal(seg.predict(frames[:3], state), probs)


@pytest.mark.slow
@needs_bf16
def test_compile_bf16_within_the_low_precision_rule(model, clips):
    frames = torch.from_numpy(clips[2]).permute(0, 3, 1, 2)[:2]
    ref_seg = VideoSegmenter(copy.deepcopy(model).double(), device="cpu", dtype="float32", fast=False)
    ref = ref_seg.predict(frames, ref_seg.encode_reference(frames[:1]))
    pt_seg = VideoSegmenter(copy.deepcopy(model).bfloat16(), device="cpu", dtype="float32", fast=False)
    pt = pt_seg.predict(frames, pt_seg.encode_reference(frames[:1]))
    seg = VideoSegmenter(model, device="cpu", dtype="bfloat16", compile=True)
    out = seg.predict(frames, seg.encode_reference(frames[:1]))
    assert out.dtype == torch.float32
    err, pt_err = (out.double() - ref).abs().max(), (pt.double() - ref).abs().max()
    assert err <= 2 * pt_err, (float(err), float(pt_err))


# ---------------------------------------------------------------------------- int8
@pytest.mark.slow
def test_int8_calibrates_runs_and_agrees_with_fp32(model, eager, clips):
    """Calibrated on two synthetic clips, scored on two others.

    Threshold: the random net's centred probabilities sit close to 0.5 over most of each
    frame (5th to 95th percentile about 0.16 to 0.58), so the int8 error flips far more
    pixels than it would for a trained model's confident masks: measured J&F 0.90 on the
    held-out clips, mean |dp| 0.024, against 0.35 and 0.134 for an unrelated model
    (test_mask_agreement_identical_and_different). 0.8 and 0.05 fail a broken
    quantisation (wrong scales, observers never run, constant logits) and leave room for
    other CPUs' and oneDNN versions' rounding.
    """
    seg = VideoSegmenter(model, device="cpu", quantize="int8", calibration=clips[:2])
    assert seg.calibration_frames == 8
    assert seg._encode is None  # the reference encoder stays eager float32
    agree = mask_agreement_jf(seg, eager, clips[2:])
    assert agree["frames"] == 8
    assert agree["JF"] >= 0.8, agree
    assert agree["prob_mae"] < 0.05, agree
    assert agree["prob_mae"] > 0  # it did quantise
