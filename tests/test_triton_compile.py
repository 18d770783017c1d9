"""torch.compile(fullgraph=True) over the Triton ops, forward and backward.

On CUDA, Inductor traces into the kernels (triton_op + wrap_triton); under the CPU
interpreter each op stays one opaque node whose shapes come from its fake kernel.
Either way the compiled graph must have no breaks and match eager.
"""
import pytest
import torch

pytest.importorskip("triton")

from pdnet import kernels, ops  # noqa: E402 - only once triton is known to be importable

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or kernels.INTERPRET),
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def ipda_step(q, k, v, key_mask, part_logits, saliency, p_feats, gt):
    """A miniature IPDA step + part losses through every op: a scalar."""
    B, p, N, d = q.shape
    h, w = part_logits.shape[-2:]
    y = ops.part_attention(q, k, v, 0.5, key_mask, backend="triton")  # [B, p, N, d]
    y = y.transpose(2, 3).reshape(B, p, d, h, w)  # [B, p, d, h, w]
    masks = ops.part_masks(part_logits, saliency, backend="triton")  # [B, p, h, w]
    m = ops.assemble_parts(p_feats, y, masks, backend="triton")  # [B, d, h, w]
    x_gt = ops.part_masks_gt(part_logits, gt, backend="triton")  # [B, p, h, w]
    return m.square().mean() + ops.area_variance(x_gt, backend="triton")


@pytest.mark.slow  # torch.compile of the whole step
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    B, p, h, w, d = 1, 3, 4, 5, 16
    N = h * w

    def make():
        t = [torch.randn(s, generator=g) for s in ((B, p, N, d), (B, p, 9, d), (B, p, 9, d))]
        t.append(torch.zeros(B, p, 9))
        t += [torch.randn(B, p, h, w, generator=g), torch.randn(B, 1, h, w, generator=g)]
        t.append(torch.randn(B, p, d, h, w, generator=g))
        t.append(torch.rand(B, 1, h, w, generator=g))
        return [x.to(DEVICE).requires_grad_(i != 7) for i, x in enumerate(t)]

    inputs = make()
    compiled = torch.compile(ipda_step, fullgraph=True)
    got = compiled(*inputs)
    grads = torch.autograd.grad(got, inputs[:7])
    eager_inputs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
    want = ipda_step(*eager_inputs)
    want_grads = torch.autograd.grad(want, eager_inputs[:7])
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 86])
def test_kernels_compile_for_ampere_without_a_gpu(arch):
    """Every kernel at its launch configs also builds for sm_80 (A100) and sm_86 (RTX 3090)
    and fits their shared memory per block (163 KB / 99 KB): bf16 at the model's head dim,
    and every dtype at the largest head dim, where the wide dtypes need the most of it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    every_dtype = ["--dtype", "bf16", "fp16", "fp32", "fp64", "--head-dim", "128"]
    for args in (["--dtype", "bf16", "--head-dim", "32"], every_dtype):
        res = subprocess.run([sys.executable, str(script), "--arch", str(arch), *args],
                             capture_output=True, text=True, env=env, timeout=1200)
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
        assert "0 failure(s)" in res.stdout and "mma=mma.sync" in res.stdout


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Every kernel at its launch configs builds for sm_90 (Triton front end + bundled ptxas)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "compile_kernels.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script), "--dtype", "bf16", "fp32", "--head-dim", "32", "64"],
                         capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "0 failure(s)" in res.stdout and "mma=wgmma" in res.stdout
