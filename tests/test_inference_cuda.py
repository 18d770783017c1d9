"""The fast path on CUDA: bf16 / fp16, channels_last and CUDA graphs against an fp64 reference."""
import copy

import numpy as np
import pytest
import torch
from test_inference import release_like

import pdnet
from pdnet.inference import VideoSegmenter

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return release_like(pdnet.PDNetConfig(backbone="resnet18", input_size=(128, 128)))


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 90, 140), generator=g, dtype=torch.uint8)


def probs(seg, frames):
    return seg.predict(frames, seg.encode_reference(frames[:1])).double().cpu()


@pytest.fixture(scope="module")
def ref64(model, frames):
    return probs(VideoSegmenter(copy.deepcopy(model).double(), device="cpu", dtype="float32", fast=False), frames)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("graphs", [False, True])
def test_fast_path_cuda_tolerance(model, frames, ref64, dtype, graphs):
    """max|fast - ref64| <= 2 * max|plain PDNet at the same precision on CUDA - ref64| (STYLE.md)."""
    pt_seg = VideoSegmenter(copy.deepcopy(model).to(dtype), device="cuda", dtype="float32", fast=False)
    pt_err = (probs(pt_seg, frames) - ref64).abs().max()
    seg = VideoSegmenter(model, device="cuda", dtype=dtype, cuda_graphs=graphs)
    assert seg.cuda_graphs == graphs and seg.channels_last
    out = probs(seg, frames)
    err = (out - ref64).abs().max()
    assert err <= 2 * max(float(pt_err), 1e-6), (float(err), float(pt_err))


def test_cuda_graph_replay_follows_inputs_and_reference(model, frames):
    eager = VideoSegmenter(model, device="cuda", dtype="float32", cuda_graphs=False)
    graphed = VideoSegmenter(model, device="cuda", dtype="float32", cuda_graphs=True)
    for ref_index in (0, 2):  # a new clip: new keys / values copied into the graph's buffers
        se, sg = eager.encode_reference(frames[ref_index]), graphed.encode_reference(frames[ref_index])
        for i in range(3):
            a = eager.predict(frames[i:i + 1], se)
            b = graphed.predict(frames[i:i + 1], sg).clone()
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    # streaming: step returns a copy, not the graph's output buffer
    graphed.reset()
    first = graphed.step(np.ascontiguousarray(frames[0].permute(1, 2, 0).numpy()))
    second = graphed.step(frames[1])
    assert not torch.equal(first, second)
    torch.testing.assert_close(first[None], eager.predict(frames[:1], eager.encode_reference(frames[0])),
                               rtol=0, atol=1e-5)


def test_segment_video_cuda_batched(model, tmp_path):
    pytest.importorskip("av")
    from PIL import Image

    g = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(g.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    a = pdnet.segment_video(model, tmp_path, tmp_path / "a", device="cuda", dtype="float32", batch_size=2,
                            progress=False)
    b = pdnet.segment_video(model, tmp_path, tmp_path / "b", device="cpu", batch_size=1, progress=False)
    assert a["frames"] == b["frames"] == 5
    for i in range(5):
        ma = np.asarray(Image.open(tmp_path / "a" / f"{i}.png")).astype(int)
        mb = np.asarray(Image.open(tmp_path / "b" / f"{i}.png")).astype(int)
        assert np.abs(ma - mb).max() <= 1
