"""bench/bench_ops.py: its command line works everywhere; without CUDA it stops with a clear message."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ops.py"


def run(*args):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_options():
    res = run("--help")
    assert res.returncode == 0, res.stderr
    for word in ("--ops", "part_attention", "--dtype", "--modes", "--attn-config", "do_bench", "sdpa_per_part"):
        assert word in res.stdout, word


def test_bad_option_is_a_usage_error():
    res = run("--ops", "no_such_op")
    assert res.returncode == 2 and "invalid choice: 'no_such_op'" in res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_it_explains_and_writes_nothing(tmp_path):
    res = run("--ops", "area_variance", "--out", str(tmp_path))
    assert res.returncode == 2
    assert "needs a CUDA device" in res.stderr and "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())


def test_every_benchmarked_path_computes_the_same_op():
    """The bench's baselines (reference, SDPA per part / as heads) agree with the kernels."""
    import importlib.util

    import torch.nn.functional as F

    from pdnet import kernels, ops
    from pdnet.ops import reference

    if not (torch.cuda.is_available() or kernels.INTERPRET):
        pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1")
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = {
        "part_attention": (2, 3, 20, 17, 16), "part_masks": (2, 3, 5, 6), "assemble_parts": (2, 3, 4, 5, 6),
        "area_variance": (2, 3, 5, 6), "ipda": (1, 3, 4, 5, 16, 8),
    }
    for op, shape in tiny.items():
        for masked in ((False, True) if op == "part_attention" else (False,)):
            inputs, impls, _, _ = bench.make_case(op, shape, torch.float32, device, masked, ops, reference, F)
            outs = {name: fn(*inputs) for name, fn in impls.items() if name in ops.available_backends() + [
                "sdpa_per_part", "sdpa_heads"]}
            assert "triton" in outs and "reference" in outs
            for name, out in outs.items():
                torch.testing.assert_close(out, outs["reference"], rtol=1e-4, atol=1e-5, msg=lambda m: f"{op} {name}: {m}")
