"""The engine's inference paths on CUDA against the same paths with the reference ops.

Each path (the fast path: folded BatchNorm, channels_last, the model cast to bf16 / fp16 /
fp32, with and without CUDA graphs; the plain model under autocast) runs once with the
kernels (``ops_backend`` auto, triton, cpp) and once with ``ops_backend="reference"`` at
the same precision. Both are judged against the plain model in float64 on the CPU with
the reference ops, by STYLE.md's rule: the kernels' error is at most twice the
reference ops' own.
"""
import numpy as np
import pytest
import torch
from ops.checks import kernel_ops_run
from test_inference import release_like

import pdnet
from pdnet.inference import VideoSegmenter

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
#: the engine's default dtype on CUDA (bf16 where supported) first
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: kernel namespaces each backend may run and the ops that must run there: ``auto`` may
#: take either library, op by op, but the attention always through a kernel
KERNELS = {
    "triton": (("pdnet_triton",), {"part_attention", "part_masks", "assemble_parts"}),
    "cpp": (("pdnet",), {"part_attention", "part_masks", "assemble_parts"}),
    "auto": (("pdnet_triton", "pdnet"), {"part_attention"}),
}
#: (fast, cuda_graphs) of each inference path: the fast path eager and graphed, and the
#: plain model (under autocast for bf16 / fp16)
PATHS = {"fast": (True, False), "fast_graphs": (True, True), "plain": (False, False)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return release_like(pdnet.PDNetConfig(backbone="resnet18", input_size=(128, 128)))


@pytest.fixture(scope="module")
def frames():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 3, 90, 140), generator=g, dtype=torch.uint8)


def with_backend(model: pdnet.PDNet, backend: str) -> pdnet.PDNet:
    """A copy of ``model`` (same weights and statistics) whose ops run on ``backend``."""
    out = pdnet.PDNet(model.config, ops_backend=backend)
    out.load_state_dict(model.state_dict())
    return out.eval()


def probs(seg, frames):
    return seg.predict(frames, seg.encode_reference(frames[:1])).double().cpu()


@pytest.fixture(scope="module")
def ref64(model, frames):
    net = with_backend(model, "reference").double()
    return probs(VideoSegmenter(net, device="cpu", dtype="float32", fast=False), frames)


def segmenter(model, backend, dtype, path):
    fast, graphs = PATHS[path]
    return VideoSegmenter(with_backend(model, backend), device=DEVICE, dtype=dtype, fast=fast, cuda_graphs=graphs)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("backend,dtype", [
    pytest.param(b, dt, id=f"{b}-{str(dt).replace('torch.', '')}")
    for b, dtypes in (("triton", DTYPES), ("cpp", DTYPES), ("auto", DTYPES[:1]))  # auto: as the engine runs
    for dt in dtypes
])
def test_kernels_within_twice_the_reference_ops_error(model, frames, ref64, backend, dtype, path):
    """max|kernels - ref64| <= 2 * max|reference ops at the same precision - ref64| (STYLE.md),
    on the same inference path; the kernels must have run, and only in the kernel run."""
    if backend != "auto" and backend not in pdnet.ops.available_backends(DEVICE):
        pytest.skip(f"the {backend} backend has no CUDA kernels here")
    plain = segmenter(model, "reference", dtype, path)
    seg = segmenter(model, backend, dtype, path)
    assert seg.fast == plain.fast == PATHS[path][0] and seg.cuda_graphs == PATHS[path][1]
    assert seg.channels_last == seg.fast
    pt, pt_kernels = kernel_ops_run(probs, plain, frames)
    assert not pt_kernels, f"the reference run called kernels: {sorted(set(pt_kernels))}"
    out, ran = kernel_ops_run(probs, seg, frames)  # with CUDA graphs: the ops called while capturing
    namespaces, needed = KERNELS[backend]
    called = {name.split("::")[1] for name in ran if name.split("::")[0] in namespaces}
    assert needed <= called, f"{backend}: kernels run {sorted(set(ran))}, expected {sorted(needed)}"
    pt_err = float((pt - ref64).abs().max())
    err = float((out - ref64).abs().max())
    assert err <= 2 * max(pt_err, 1e-6), f"{backend} {dtype} {path}: error {err:.3e}, reference ops' {pt_err:.3e}"


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
