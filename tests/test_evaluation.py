"""DAVIS measures: the vectorised torch engine against the per-frame NumPy transcription of
the toolkit, hand-computed cases, properties, statistics (Decay beyond 256 frames)."""
import numpy as np
import pytest
import torch

from pdnet.evaluation import _bits, boundary_f, boundary_radius, flicker, jaccard, metrics, statistics
from pdnet.evaluation import reference as ref


def blobs(rng, t, h, w, n=3, noise=0.0):
    """(T, H, W) bool: XOR of random rectangles, plus optional salt noise."""
    m = np.zeros((t, h, w), bool)
    for i in range(t):
        for _ in range(n):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[i, y0 : y0 + rng.integers(1, h // 2 + 2), x0 : x0 + rng.integers(1, w // 2 + 2)] ^= True
        if noise:
            m[i] ^= rng.random((h, w)) < noise
    return m


def special_frames(pred, gt):
    """Overwrite frames with the awkward cases: empty/empty, empty/full, full/empty, identical, single pixels."""
    t, h, w = pred.shape
    cases = [
        (np.zeros((h, w), bool), np.zeros((h, w), bool)),
        (np.zeros((h, w), bool), np.ones((h, w), bool)),
        (np.ones((h, w), bool), np.zeros((h, w), bool)),
        (gt[0], gt[0]),
        (np.zeros((h, w), bool), gt[0]),
        (gt[0], np.zeros((h, w), bool)),
    ]
    px = np.zeros((h, w), bool)
    px[h // 2, w // 2] = True
    px2 = np.zeros((h, w), bool)
    px2[h - 1, w - 1] = True
    cases += [(px, px2), (px2, px2), (px, np.zeros((h, w), bool))]
    for i, (p, g) in enumerate(cases[:t]):
        pred[i], gt[i] = p, g
    return pred, gt


SIZES = [(1, 1), (1, 7), (6, 1), (7, 3), (31, 65), (64, 64), (63, 127), (40, 200), (17, 129)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_toolkit_transcription(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    pred = blobs(rng, 12, h, w, noise=0.02)
    gt = blobs(rng, 12, h, w)
    pred, gt = special_frames(pred, gt)
    for bound_th in (0.008, 0.05, 0.3, 2):
        j_ref, f_ref = ref.evaluate_sequence(pred, gt, bound_th)
        np.testing.assert_allclose(jaccard(pred, gt), j_ref, rtol=0, atol=1e-9)
        for chunk in (None, 1, 5):
            f = boundary_f(pred, gt, bound_th, chunk=chunk)
            np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-9, err_msg=f"bound_th={bound_th} chunk={chunk}")
        assert np.array_equal(boundary_f(pred, gt, bound_th), f_ref)  # bit-identical, in fact
    assert flicker(pred, gt) == pytest.approx(ref.flicker(pred, gt), abs=1e-12)


def test_large_radius_and_480p_frame():
    rng = np.random.default_rng(3)
    # radius >= 64 needs multi-word shifts and intermediate widening steps
    pred, gt = blobs(rng, 3, 40, 150), blobs(rng, 3, 40, 150)
    for r in (63, 64, 70):
        assert np.array_equal(boundary_f(pred, gt, r), ref.evaluate_sequence(pred, gt, r)[1])
    pred, gt = blobs(rng, 2, 480, 854, n=4), blobs(rng, 2, 480, 854, n=4)
    j_ref, f_ref = ref.evaluate_sequence(pred, gt)
    assert boundary_radius(480, 854) == 8
    assert np.array_equal(jaccard(pred, gt), j_ref)
    assert np.array_equal(boundary_f(pred, gt), f_ref)


def test_chunks_and_flicker_across_chunks():
    rng = np.random.default_rng(5)
    pred, gt = blobs(rng, 11, 20, 70, noise=0.05), blobs(rng, 11, 20, 70)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    full = metrics.frame_counts(p, g, 2, chunk=11)
    for chunk in (1, 2, 4, 10):
        c = metrics.frame_counts(p, g, 2, chunk=chunk)
        for k in full:
            assert torch.equal(c[k], full[k]), (chunk, k)
    want = ref.flicker(pred, gt)
    assert metrics.flicker_from_counts(full["flicker_sq"], 20 * 70) == pytest.approx(want, abs=1e-12)


def test_hand_computed_cases():
    z = np.zeros((100, 100), bool)
    full = np.ones((100, 100), bool)
    sq = z.copy()
    sq[20:40, 20:40] = True
    assert jaccard(z, z) == 1.0 and boundary_f(z, z) == 1.0
    assert jaccard(z, full) == 0.0
    assert boundary_f(z, full) == 1.0  # a full mask has no boundary pixel: both boundaries empty
    assert boundary_f(z, sq) == 0.0  # precision 1, recall 0
    assert boundary_f(sq, z) == 0.0  # precision 0, recall 1
    # 20x20 square vs the same square 3 pixels to the right, radius 1: each 80-pixel
    # boundary ring has 19 + 19 + 2 pixels within distance 1 of the other: P = R = 1/2
    sh = np.roll(sq, 3, axis=1)
    assert jaccard(sq, sh) == pytest.approx(340 / 460, abs=1e-15)
    assert boundary_f(sq, sh, bound_th=1) == pytest.approx(0.5, abs=1e-15)
    # half-planes: the boundary is one row; matched iff the rows are <= r = ceil(0.008 * 141.4) = 2 apart
    half, half2, half3 = z.copy(), z.copy(), z.copy()
    half[:50], half2[:52], half3[:53] = True, True, True
    assert boundary_radius(100, 100) == 2
    assert boundary_f(half, half2) == 1.0
    assert boundary_f(half, half3) == 0.0


def test_properties():
    rng = np.random.default_rng(11)
    a, b = blobs(rng, 8, 33, 90, noise=0.01), blobs(rng, 8, 33, 90)
    assert np.all(jaccard(a, a) == 1.0) and np.all(boundary_f(a, a) == 1.0)
    assert np.array_equal(jaccard(a, b), jaccard(b, a))
    assert np.array_equal(boundary_f(a, b), boundary_f(b, a))
    f = boundary_f(a, b)
    assert np.all((f >= 0) & (f <= 1))
    assert flicker(a, a) == 0.0
    # a static ground truth and a prediction toggling an area a on and off: flicker sqrt(a)
    g = np.zeros((6, 10, 10), bool)
    p = g.copy()
    p[1::2, :5, :5] = True
    assert flicker(p, g) == pytest.approx(0.5, abs=1e-15)


def test_input_types_and_errors():
    rng = np.random.default_rng(2)
    a, b = blobs(rng, 3, 20, 30), blobs(rng, 3, 20, 30)
    want = ref.evaluate_sequence(a, b)[1]
    out = boundary_f(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert np.array_equal(out.numpy(), want)
    assert np.array_equal(boundary_f(a.astype(np.uint8) * 255, b.astype(np.float32)), want)
    assert isinstance(jaccard(a[0], b[0]), float)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 20, 30\).*\(3, 20, 31\)"):
        jaccard(a, np.zeros((3, 20, 31)))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(T, H, W\)"):
        boundary_f(a[None], b[None])
    with pytest.raises(ValueError, match="empty image"):
        jaccard(np.zeros((2, 0, 3)), np.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match="integer"):
        boundary_f(a, b, bound_th=2.5)


def test_disk_and_dilation_match_the_toolkit_kernels():
    skm = pytest.importorskip("skimage.morphology")
    for r in (1, 2, 5, 8, 13):
        assert np.array_equal(ref.disk(r), skm.disk(r).astype(np.uint8))
        assert [int(v) for v in ref.disk(r)[r:].sum(axis=1) // 2] == _bits.disk_widths(r)
    cv2 = pytest.importorskip("cv2")
    from scipy.ndimage import binary_dilation

    rng = np.random.default_rng(0)
    b = rng.random((61, 97)) < 0.01
    b[0, 0] = b[-1, -1] = b[0, -1] = True
    for r in (1, 3, 8):
        k = ref.disk(r)
        want = cv2.dilate(b.astype(np.uint8), k) > 0
        assert np.array_equal(binary_dilation(b, structure=k.astype(bool)), want)


def test_packing_and_popcount_paths_agree():
    rng = np.random.default_rng(9)
    m = torch.from_numpy(rng.random((3, 5, 131)) < 0.5)
    wp = _bits.packed_width(131, 8)
    a = _bits.pack(m, wp)
    assert torch.equal(a, _bits.pack_torch(m, wp))
    bits = torch.stack([(a[..., x // 64] >> (x % 64)) & 1 for x in range(131)], dim=-1)
    assert torch.equal(bits.bool(), m)
    assert torch.equal(_bits.popcount(a), _bits.popcount_torch(a))
    assert torch.equal(_bits.popcount(a), m.sum(dim=(-2, -1)))


def test_statistics_hand_computed_and_toolkit():
    mean, recall, decay = statistics([1.0, 0.8, 0.4, 0.2])
    assert (mean, recall, decay) == pytest.approx((0.6, 0.5, 0.6), abs=1e-15)
    assert statistics([0.7]) == pytest.approx((0.7, 1.0, 0.0))
    rng = np.random.default_rng(1)
    for n in list(range(1, 40)) + [99, 100, 101, 255, 256]:
        v = rng.random(n)
        assert statistics(v) == ref.db_statistics(v), n
    with pytest.raises(ValueError, match="no values"):
        statistics([])


def test_decay_beyond_256_frames():
    # a sequence that degrades linearly from 1 to 0: Decay = mean(first quarter) - mean(last quarter)
    for n in (257, 300, 600, 1000):
        v = np.linspace(1.0, 0.0, n)
        ids = np.round(np.linspace(1, n, 5) + 1e-10).astype(np.int64) - 1
        want = v[ids[0] : ids[1] + 1].mean() - v[ids[3] : ids[4] + 1].mean()
        assert statistics(v)[2] == pytest.approx(want, abs=1e-12)
        assert statistics(v) == ref.db_statistics(v, uint8_bins=False)
        assert abs(statistics(v)[2] - 0.75) < 0.01  # about 3/4 for a linear ramp
    # the toolkit's uint8 indices wrap modulo 256: an empty last bin (NaN) or the wrong frames
    assert np.isnan(ref.db_statistics(np.linspace(1.0, 0.0, 300))[2])
    assert abs(ref.db_statistics(np.linspace(1.0, 0.0, 400))[2] - 0.75) > 0.5


@pytest.mark.cuda
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    pred, gt = blobs(rng, 9, 70, 301, noise=0.01), blobs(rng, 9, 70, 301)
    pred, gt = special_frames(pred, gt)
    p, g = torch.from_numpy(pred), torch.from_numpy(gt)
    cpu = metrics.frame_counts(p, g, 3)
    gpu = metrics.frame_counts(p.cuda(), g.cuda(), 3)
    for k in cpu:
        assert torch.equal(cpu[k], gpu[k].cpu()), k
    assert np.array_equal(boundary_f(p.cuda(), g.cuda()).cpu().numpy(), ref.evaluate_sequence(pred, gt)[1])


def test_bench_script_runs_and_checks_identity(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_eval.py"
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        argv = ["--frames", "5", "--size", "96x64", "--baseline", "scipy", "--repeats", "1", "--no-save"]
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert "results identical" in capsys.readouterr().out
