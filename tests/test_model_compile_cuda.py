"""torch.compile(fullgraph=True) of the whole PDNet with the kernels on CUDA, as training uses it.

A training step (train mode: BatchNorm on batch statistics; forward, a weighted loss,
backward) compiled by Inductor, with ``ops_backend`` triton (Inductor traces into the
kernels) and cpp (opaque custom ops), against the same step in eager mode. Both are
judged against the step in float64 with the reference ops: the compiled step's error is
at most twice the eager one's (STYLE.md's rule, applied to compilation), for the logits,
the gradients of each part of the network (encoder, decoder, IPDA, fusion and heads) and
the BatchNorm running statistics. TF32 is off, so that these errors are
float32's and a kernel or graph error cannot hide below them.
"""
import copy

import pytest
import torch

import pdnet

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
COMPILER = "inductor"
SIZE = (96, 64)  # a 6 x 4 IPDA grid: 24 tokens per part; 2 parts keep the graph (and its compile time) small
#: smallest error the rule compares, relative to the reference's largest magnitude
FLOOR = 1e-5


@pytest.fixture
def ieee_fp32():
    """TF32 off for cuDNN convolutions and matmuls, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def inputs(dtype):
    g = torch.Generator().manual_seed(1)
    target, reference = (torch.randn(2, 3, *SIZE, generator=g, dtype=torch.float64) for _ in range(2))
    weight = torch.randn(2, 1, *SIZE, generator=g, dtype=torch.float64)
    return [t.to(DEVICE, dtype) for t in (target, reference, weight)]


def step(run, model, target, reference, weight) -> dict[str, list]:
    """One step of ``run`` (``model`` or its compiled form): {"logits": [logits], "<module>
    gradients": [the gradient of each of its parameters (None where it gets none)] for the
    encoder, decoder, IPDA and the rest of ``model``}."""
    logits = run(target, reference)
    (logits * weight).sum().backward()
    out = {"logits": [logits.detach()]}
    for name, p in model.named_parameters():
        group = name.split(".")[0] if name.startswith(("encoder", "decoder", "ipda")) else "fusion and heads"
        out.setdefault(f"{group} gradients", []).append(p.grad)
    return out


def running_statistics(model) -> torch.Tensor:
    """Every BatchNorm running mean and variance, concatenated."""
    stats = [b.flatten() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    return torch.cat(stats)


def relative_error(got: list, want: list) -> float:
    """Largest |got - want| over the tensors, each relative to its reference's largest
    magnitude, or to a thousandth of the largest of all where that is larger (a gradient
    that is 0 in exact arithmetic, e.g. of a convolution bias before a BatchNorm, is
    rounding noise in float32)."""
    assert [a is None for a in got] == [b is None for b in want]
    pairs = [(a.double(), b) for a, b in zip(got, want, strict=True) if b is not None]
    top = max(float(b.abs().max()) for _, b in pairs)
    return max(float((a - b).abs().max()) / max(float(b.abs().max()), 1e-3 * top) for a, b in pairs)


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_compiled_training_step_matches_eager(backend, ieee_fp32):
    if backend not in pdnet.ops.available_backends(DEVICE):
        pytest.skip(f"the {backend} backend does not run on {DEVICE} here")
    torch.manual_seed(0)
    model = pdnet.PDNet(backbone="resnet18", parts=2, input_size=SIZE, ops_backend=backend).to(DEVICE).train()
    ref64 = pdnet.PDNet(model.config, ops_backend="reference").to(DEVICE).double().train()
    ref64.load_state_dict(model.state_dict())
    compiled_model = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=COMPILER)

    want = step(ref64, ref64, *inputs(torch.float64))
    eager = step(model, model, *inputs(torch.float32))
    got = step(compiled, compiled_model, *inputs(torch.float32))
    assert sum(g is not None for g in got["ipda gradients"]) > 20  # attention, masks and assembly in the graph
    for net, res in ((ref64, want), (model, eager), (compiled_model, got)):  # compiled: updated in the module
        res["BatchNorm statistics"] = [running_statistics(net)]
    for what in want:
        e_eager = relative_error(eager[what], want[what])
        e_compiled = relative_error(got[what], want[what])
        assert e_compiled <= 2 * max(e_eager, FLOOR), (
            f"{backend} {what}: compiled error {e_compiled:.2e}, eager {e_eager:.2e} (relative to float64)"
        )
