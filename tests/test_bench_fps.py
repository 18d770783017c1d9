"""bench/bench_fps.py: its rows, the peers (ONNX Runtime, torch.compile) and the fast-path options."""

import pytest
import torch
from bench_helpers import load_bench, main_runner

import pdnet

#: max |p - p_fast| of a path computing the same function as the fp32 fast path on the same frames: float32
#: rounding of the random network (logits up to ~1e3 at 64x64) moves probabilities by less than this, while a
#: mis-wired path (another reference frame, no normalisation) moves them by more than 0.1
#: (test_same_function_bound_discriminates)
SAME_FUNCTION = 0.01
#: the tiny run every test starts from (one thread: the CI machine has two cores)
TINY = ("--backbone", "resnet18", "--size", "64", "--batch", "2", "--iters", "2", "--warmup", "0", "--threads", "1")
ROW_FIELDS = {
    "bench", "time", "host", "device", "commit", "torch", "versions", "threads", "size", "ops_backends", "bn_stats",
    "backbone", "path", "mode", "batch", "includes_io", "iters", "warmup", "fps", "fps_best", "latency_ms",
    "same_frames", "same_preprocess", "scope", "engine", "precision", "channels_last", "cuda_graphs",
    "reference_cached", "first_call_s", "loadavg", "command",
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy CI core makes OpenMP's barriers slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_fps")


@pytest.fixture
def run_main(bench, tmp_path):
    """bench.main(argv) writing into tmp_path; returns (exit code, rows written); restores the thread count."""
    yield from main_runner(bench, tmp_path, "fps_cpu.jsonl")


def by_path(rows, mode):
    return {r["path"]: r for r in rows if r["mode"] == mode}


def check_common(rows, bench, command_has):
    for r in rows:
        assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
        assert r["threads"] == 1 and r["size"] == 64 and r["backbone"] == "resnet18"
        assert r["versions"]["torch"] == torch.__version__
        assert r["bn_stats"] == "synthetic" and r["bn_stats_how"] == bench.BN_STATS["synthetic"]
        assert r["scope"] == bench.SCOPE and r["same_frames"] and r["same_preprocess"]
        assert r["fps"] > 0 and r["fps_best"] > 0 and r["first_call_s"] > 0
        assert r["batch"] == (1 if r["mode"] == "streaming" else 2)
        assert command_has in r["command"]


def test_fast_and_reference_rows(run_main, bench):
    code, rows = run_main(*TINY)
    assert code == 0
    assert {(r["path"], r["mode"]) for r in rows} == {(p, m) for p in ("reference", "fast")
                                                       for m in ("streaming", "batched")}
    check_common(rows, bench, "--backbone resnet18")
    for mode in ("streaming", "batched"):
        rows_m = by_path(rows, mode)
        fast, ref = rows_m["fast"], rows_m["reference"]
        assert fast["reference_cached"] and not ref["reference_cached"]
        assert fast["precision"] == "float32" and not fast["compile"] and fast["quantize"] is None
        # the same function: the reference path and the fast path agree on the same frames
        assert ref["max_prob_diff_vs_fast"] < SAME_FUNCTION and fast["max_prob_diff_vs_fast"] == 0
        assert fast["speedup_vs_reference"] == pytest.approx(fast["fps"] / ref["fps"])
        assert fast["speedup_best_vs_reference"] == pytest.approx(fast["fps_best"] / ref["fps_best"])
        assert not any(k.startswith("fast_vs_") for k in fast)  # no peers asked for


def bn_stats(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return torch.cat([m.running_mean for m in bns]), torch.cat([m.running_var for m in bns])


def test_batchnorm_stats(bench):
    def model():
        torch.manual_seed(0)
        return pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64))).eval()

    m = model()
    n = sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert bench.set_batchnorm_stats(m, "init") == n > 20 and not m.training
    mean, var = bn_stats(m)
    assert torch.all(mean == 0) and torch.all(var == 1)
    assert bench.set_batchnorm_stats(m, "uniform") == n
    mean, var = bn_stats(m)
    assert -0.2 <= mean.min() < -0.1 and 0.1 < mean.max() <= 0.2
    assert 0.5 <= var.min() < 0.7 and 1.8 < var.max() <= 2.0
    assert bench.set_batchnorm_stats(m, "synthetic") == n and not m.training
    mean, var = bn_stats(m)
    assert mean.abs().max() > 1 and (var.max() > 4 or var.min() < 0.25)  # far from 0 and 1
    momenta = {x.momentum for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}  # restored
    again = model()
    bench.set_batchnorm_stats(again, "synthetic")
    assert all(torch.equal(a, b) for a, b in zip(bn_stats(again), (mean, var), strict=True))  # every run: same model
    with torch.no_grad():  # eval mode normalises the estimation frames as training mode did: logits of order 1
        clip = torch.from_numpy(bench.synthetic_clips(1, bench.BN_CLIP, 2, (64, 64))[0]).permute(0, 3, 1, 2)
        logits = m(bench.preprocess(clip[1:], (64, 64)), bench.preprocess(clip[:1], (64, 64)))
    assert 0.01 < logits.abs().max() < 100
    with pytest.raises(ValueError, match="how must be one of synthetic, uniform, init"):
        bench.set_batchnorm_stats(m, "random")


def test_same_function_bound_discriminates(bench):
    """SAME_FUNCTION separates rounding from wiring errors on the bench's tiny model and frames."""
    from pdnet.inference import VideoSegmenter

    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64))).eval()
    bench.set_batchnorm_stats(model, "synthetic")
    clip = torch.from_numpy(bench.synthetic_clips(1, bench.FRAMES_CLIP, 3, (64, 64))[0]).permute(0, 3, 1, 2)
    first, frames = clip[:1].contiguous(), clip[1:].contiguous()
    seg = VideoSegmenter(model, device="cpu", dtype="float32")
    p = seg.predict(frames, seg.encode_reference(first))
    with torch.inference_mode():
        plain = bench.reference_step(model, frames, first, (64, 64))  # the same function, other arithmetic
        other_ref = bench.reference_step(model, frames, frames[:1], (64, 64))
        x = bench.preprocess(frames, (64, 64))
        unnormalised = torch.sigmoid(model(frames.float() / 255, bench.preprocess(first, (64, 64)).expand_as(x)))
    assert (plain - p).abs().max() < SAME_FUNCTION
    assert (other_ref - p).abs().max() > 0.1 and (unnormalised - p).abs().max() > 0.1


def test_ratios_and_table(bench, capsys):
    def row(path, fps, best, mode="streaming", io=False):
        return {"backbone": "resnet50", "path": path, "mode": mode, "batch": 1, "precision": "float32",
                "includes_io": io, "fps": fps, "fps_best": best, "latency_ms": {"median": 1000 / fps}}

    rows = [row("reference", 2, 2.5), row("fast", 6, 7), row("fast-compile", 9, 10), row("ort", 4, 5),
            row("compile-freeze", 3, 3.5), row("fast", 100, 100, mode="batched"), row("ort", 50, 40, mode="batched"),
            row("fast", 5, 5, mode="e2e", io=True)]
    bench.add_ratios(rows)
    fast, fc, e2e, fast_b = rows[1], rows[2], rows[7], rows[5]
    assert fast["fast_vs_ort"] == 1.5 and fast["fast_vs_ort_best"] == 1.4
    assert fast["fast_vs_compile_freeze"] == 2 and fast["fast_vs_compile_freeze_best"] == 2
    assert fast["speedup_vs_reference"] == 3 and fast["speedup_best_vs_reference"] == 2.8
    assert fc["fast_vs_ort"] == 2.25 and fc["speedup_vs_fast"] == 1.5 and "fast_vs_compile" not in fc
    assert fast_b["fast_vs_ort"] == 2 and fast_b["fast_vs_ort_best"] == 2.5 and "speedup_vs_reference" not in fast_b
    assert not any(k.startswith(("fast_vs", "speedup")) for r in (rows[0], rows[3], rows[4], e2e) for k in r)
    bench.print_table(rows)
    out = capsys.readouterr().out
    assert "| resnet50 | streaming | 1 | ort | float32 | 4.00 | 5.00 | 250.0 | 1.50x |" in out
    assert "resnet50 batched: fast/ort = 2.00x (throughput), 2.50x (best call of each)" in out
    assert "e2e" not in out


@pytest.mark.parametrize("argv, message", [
    (("--iters", "0"), "--iters must be >= 1"),
    (("--calib-clips", "0"), "--calib-clips must be >= 1"),
    (("--peers", "tflite"), "invalid choice: 'tflite'"),
])
def test_bad_arguments(run_main, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        run_main(*TINY, *argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bf16_rows_carry_accuracy(run_main, bench):
    from pdnet.inference.cpu import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    code, rows = run_main(*TINY, "--paths", "fast", "--modes", "streaming", "--dtype", "bfloat16",
                          "--accuracy-clips", "1", "--clip-frames", "3", "--bn-stats", "uniform")
    assert code == 0 and len(rows) == 1
    r = rows[0]
    assert r["precision"] == "bfloat16" and r["bn_stats"] == "uniform"
    assert 0 < r["jf_vs_fp32"] <= 1 and r["jf_vs_fp32"] == r["accuracy_vs_fp32"]["JF"]
    assert 0 < r["mean_prob_diff_vs_fp32"] < 0.05 and r["accuracy_vs_fp32"]["frames"] == 3
    assert r["accuracy_clips"]["indices"] == [bench.ACCURACY_FIRST_INDEX, bench.ACCURACY_FIRST_INDEX + 1]
    assert 0 < r["max_prob_diff_vs_fast"] <= 1  # not 0: against the fp32 fast path built for the comparison


def test_checkpoint(run_main, tmp_path):
    from pdnet.inference.checkpoint import save_model_checkpoint

    torch.manual_seed(1)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64))).eval()
    path = save_model_checkpoint(tmp_path / "tiny.pt", model)
    code, rows = run_main(*TINY[2:], "--checkpoint", str(path), "--modes", "streaming")
    assert code == 0 and {r["path"] for r in rows} == {"reference", "fast"}
    assert all(r["backbone"] == "resnet18" and r["checkpoint"] == str(path) and r["bn_stats"] == "checkpoint"
               for r in rows)
    with pytest.raises(RuntimeError, match="does not fit"):  # the loader's error: another backbone
        run_main(*TINY[2:], "--checkpoint", str(path), "--backbone", "resnet50", "--modes", "streaming")


def test_model_fingerprint(bench):
    a = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64))).eval()
    b = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", input_size=(64, 64))).eval()
    b.load_state_dict(a.state_dict())
    assert bench.model_fingerprint(a) == bench.model_fingerprint(b)
    bench.set_batchnorm_stats(b, "uniform")
    assert bench.model_fingerprint(a) != bench.model_fingerprint(b)  # buffers count, not only parameters
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert bench.model_fingerprint(a) != bench.model_fingerprint(b)


@pytest.mark.slow
def test_ort_peer_rows(run_main, bench, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime

    cache = tmp_path / "onnx"
    code, rows = run_main(*TINY, "--paths", "fast", "--peers", "ort", "--onnx-cache", str(cache))
    assert code == 0
    assert {(r["path"], r["mode"]) for r in rows} == {(p, m) for p in ("fast", "ort") for m in ("streaming", "batched")}
    check_common(rows, bench, "--peers ort")
    for mode in ("streaming", "batched"):
        rows_m = by_path(rows, mode)
        fast, ort = rows_m["fast"], rows_m["ort"]
        # equal work: the same frames, preprocessing, cached reference state, output
        assert ort["reference_cached"] and ort["same_frames"] and ort["same_preprocess"]
        assert ort["engine"] == "onnxruntime" and ort["precision"] == "float32"
        assert ort["providers"] == ["CPUExecutionProvider"] and ort["opset"] == 18
        assert ort["intra_op_num_threads"] == 1 and ort["graph_optimization_level"] == "ORT_ENABLE_ALL"
        assert ort["versions"]["onnxruntime"] == onnxruntime.__version__
        assert ort["export_s"] > 0 and not ort["export_reused"]
        assert ort["max_prob_diff_vs_fast"] < SAME_FUNCTION  # the same function, computed by ONNX Runtime
        assert fast["fast_vs_ort"] == pytest.approx(fast["fps"] / ort["fps"])
        assert fast["fast_vs_ort_best"] == pytest.approx(fast["fps_best"] / ort["fps_best"])
    (folder,) = cache.iterdir()  # one export, named by the model
    assert folder.name.startswith("resnet18-64x64-opset18-") and (folder / "step.onnx").is_file()
    code, again = run_main(*TINY, "--paths", "fast", "--peers", "ort", "--onnx-cache", str(cache), "--modes",
                           "streaming")
    ort = by_path(again[len(rows):], "streaming")["ort"]
    assert code == 0 and ort["export_reused"] and ort["export_s"] is None
    assert ort["max_prob_diff_vs_fast"] < SAME_FUNCTION


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["compile", "compile-freeze"])
def test_compile_peer_rows(run_main, bench, peer):
    code, rows = run_main(*TINY, "--paths", "fast", "--modes", "streaming", "--peers", peer)
    assert code == 0
    check_common(rows, bench, f"--peers {peer}")
    fast, comp = by_path(rows, "streaming")["fast"], by_path(rows, "streaming")[peer]
    assert comp["engine"] == "torch.compile (PDNet)" and comp["reference_cached"] and comp["channels_last"]
    assert comp["compile"] == {"backend": "inductor", "dynamic": False, "freezing": peer == "compile-freeze",
                               "options": "defaults" + (" + freezing" if peer == "compile-freeze" else "")}
    assert comp["max_prob_diff_vs_fast"] < SAME_FUNCTION
    assert comp["first_call_s"] > comp["latency_ms"]["min"] / 1e3  # the first call compiled
    assert fast[f"fast_vs_{bench.key(peer)}"] == pytest.approx(fast["fps"] / comp["fps"])
