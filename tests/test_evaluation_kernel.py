"""The two implementations of the DAVIS counts (``frame_counts`` backends ``cpp``, the fused
CPU kernel of the compiled extension, and ``torch``) against the per-frame NumPy
transcription of the toolkit, on awkward masks: empty, full, single pixels, odd sizes,
boundaries on the image border, radii of one or several 64-bit words.

(The toolkit's ``seg2bmap`` can also draw the boundary map at another size, but its
``f_measure`` never asks for that: the maps are always the masks' own size, which is
what both backends and ``reference.seg2bmap`` do.)
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_evaluation import blobs, special_frames

from pdnet.evaluation import boundary_radius, metrics
from pdnet.evaluation import reference as ref

CPP_REASON = metrics.compiled_counts_reason()
needs_cpp = pytest.mark.skipif(CPP_REASON is not None, reason=f"fused kernel unavailable: {CPP_REASON}")
BACKENDS = [pytest.param("cpp", marks=needs_cpp), "torch"]


def border_frames(h, w):
    """(pred, gt) lists of frames whose boundaries lie on the image border, or a pixel from it."""
    out = []
    for m in range(4):
        a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
        if m == 0:  # left column vs top row
            a[:, 0], b[0, :] = True, True
        elif m == 1:  # everything but the last row / column
            a[:-1, :], b[:, :-1] = True, True
        elif m == 2:  # corners
            a[0, 0] = a[-1, -1] = True
            b[0, -1] = b[-1, 0] = True
        else:  # a frame around the image vs its inside
            a[:], b[1:-1, 1:-1] = True, True
            a[1:-1, 1:-1] = False
        out.append((a, b))
    return out


def reference_counts(pred, gt, bound_th):
    """Per-frame J and F of the toolkit transcription."""
    return ref.evaluate_sequence(pred, gt, bound_th)


def scores(pred, gt, bound_th, backend, **kw):
    """(J, F, flicker) through frame_counts with the given backend."""
    t, h, w = pred.shape
    c = metrics.frame_counts(torch.from_numpy(pred), torch.from_numpy(gt), boundary_radius(h, w, bound_th),
                             backend=backend, **kw)
    j = metrics.j_from_counts(c["inter"], c["union"]).numpy()
    f = metrics.f_from_counts(c["pred_b"], c["gt_b"], c["pred_match"], c["gt_match"]).numpy()
    return j, f, metrics.flicker_from_counts(c["flicker_sq"], h * w)


SIZES = [(1, 1), (1, 64), (1, 130), (2, 2), (5, 1), (64, 1), (3, 63), (7, 65), (33, 128), (29, 191), (70, 257)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h,w", SIZES)
def test_backends_match_the_toolkit(backend, h, w):
    rng = np.random.default_rng(h * 977 + w)
    pred, gt = blobs(rng, 14, h, w, noise=0.03), blobs(rng, 14, h, w)
    pred, gt = special_frames(pred, gt)
    if h > 2 and w > 2:
        for i, (a, b) in enumerate(border_frames(h, w)):
            pred[9 + i], gt[9 + i] = a, b
    for bound_th in (0.008, 0.1, 1, 3, 0.9):
        j_ref, f_ref = reference_counts(pred, gt, bound_th)
        j, f, fl = scores(pred, gt, bound_th, backend)
        assert np.array_equal(j, j_ref) and np.array_equal(f, f_ref), (backend, bound_th)
        assert fl == pytest.approx(ref.flicker(pred, gt), abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_radii_of_several_words(backend):
    # r >= 64: the dilation of a row reaches over more than one word on each side
    rng = np.random.default_rng(8)
    pred, gt = blobs(rng, 4, 45, 300, noise=0.002), blobs(rng, 4, 45, 300)
    pred[0], gt[0] = False, False
    pred[0, 3, 2], gt[0, 40, 297] = True, True  # far apart: matched only by the largest radii
    for r in (63, 64, 65, 127, 128, 200, 400):
        j_ref, f_ref = reference_counts(pred, gt, r)
        j, f, _ = scores(pred, gt, r, backend)
        assert np.array_equal(j, j_ref) and np.array_equal(f, f_ref), (backend, r)


@needs_cpp
def test_cpp_equals_torch_counts_on_480p_and_with_threads():
    rng = np.random.default_rng(21)
    pred, gt = blobs(rng, 5, 480, 854, n=5, noise=0.001), blobs(rng, 5, 480, 854, n=5)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    want = metrics.frame_counts(p, g, 8, backend="torch")
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):  # frames split into blocks among the threads: flicker across blocks
            torch.set_num_threads(n)
            got = metrics.frame_counts(p, g, 8, backend="cpp")
            for k in want:
                assert torch.equal(got[k], want[k]), (n, k)
    finally:
        torch.set_num_threads(threads)
    j_ref, f_ref = reference_counts(pred, gt, 0.008)
    f = metrics.f_from_counts(want["pred_b"], want["gt_b"], want["pred_match"], want["gt_match"])
    assert np.array_equal(f, f_ref)


@needs_cpp
def test_cpp_input_handling():
    rng = np.random.default_rng(4)
    pred, gt = blobs(rng, 6, 20, 70), blobs(rng, 6, 20, 70)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    want = metrics.frame_counts(p, g, 2, backend="torch")
    # non-contiguous views (every other frame, a transposed image) and a bool tensor
    # holding bytes other than 0 and 1
    for a, b in ((p[::2], g[::2]), (p.transpose(1, 2), g.transpose(1, 2))):
        got = metrics.frame_counts(a, b, 2, backend="cpp")
        ref_c = metrics.frame_counts(a.contiguous(), b.contiguous(), 2, backend="torch")
        for k in ("inter", "union", "pred_b", "gt_b", "pred_match", "gt_match"):
            assert torch.equal(got[k], ref_c[k]), k
    odd = (p.to(torch.uint8) * 7).view(torch.bool)
    got = metrics.frame_counts(odd, g, 2, backend="cpp")
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # no frames; one frame (no flicker pair)
    empty = metrics.frame_counts(p[:0], g[:0], 2, backend="cpp")
    assert empty["inter"].shape == (0,) and empty["flicker_sq"].shape == (0,)
    one = metrics.frame_counts(p[:1], g[:1], 2, backend="cpp")
    assert one["flicker_sq"].shape == (0,) and torch.equal(one["gt_match"], want["gt_match"][:1])
    op = torch.ops.pdnet.eval_frame_counts
    with pytest.raises(RuntimeError, match="bool"):
        op(p.to(torch.uint8), g, 2)
    with pytest.raises(RuntimeError, match="same shape"):
        op(p, g[:, :, :-1], 2)
    with pytest.raises(RuntimeError, match=r"\(T, H, W\)"):
        op(p[0], g[0], 2)
    with pytest.raises(RuntimeError, match="radius"):
        op(p, g, -1)
    with pytest.raises(ValueError, match="backend"):
        metrics.frame_counts(p, g, 2, backend="cuda")


def test_backend_errors():
    p = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="backend must be one of"):
        metrics.frame_counts(p, p, 1, backend="numpy")
    if CPP_REASON is not None:
        with pytest.raises(RuntimeError, match="not available"):
            metrics.frame_counts(p, p, 1, backend="cpp")
    with pytest.raises(ValueError, match="CPU only"):
        metrics.frame_counts(p.to("meta"), p.to("meta"), 1, backend="cpp")


@pytest.mark.slow  # a fresh interpreter (ATEN_CPU_CAPABILITY is read once, when torch starts)
@needs_cpp
def test_cpp_baseline_isa_build():
    """The kernel's build for the baseline instruction set (chosen with ATEN_CPU_CAPABILITY=default)."""
    code = (
        "import numpy as np, torch\n"
        "from pdnet.evaluation import metrics\n"
        "from test_evaluation import blobs, special_frames\n"
        "rng = np.random.default_rng(3)\n"
        "for h, w in ((31, 200), (9, 64), (1, 5)):\n"
        "    p, g = special_frames(blobs(rng, 10, h, w, noise=0.02), blobs(rng, 10, h, w))\n"
        "    p, g = torch.from_numpy(p), torch.from_numpy(g)\n"
        "    for r in (1, 4, 70):\n"
        "        a = metrics.frame_counts(p, g, r, backend='cpp')\n"
        "        b = metrics.frame_counts(p, g, r, backend='torch')\n"
        "        assert all(torch.equal(a[k], b[k]) for k in a), (h, w, r)\n"
        "print('ok', torch.backends.cpu.get_cpu_capability())\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ok", "DEFAULT"]
