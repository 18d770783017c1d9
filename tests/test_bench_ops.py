"""bench/bench_ops.py: its rows on the CPU, its SDPA baselines, its memory count and its errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bench_helpers import load_bench, main_runner
from ops import cases as C  # tests/ops/cases.py, as bench_ops.py imports it

import pdnet.ops

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_ops.py"
#: one cheap case per op
ONE_PER_OP = ["part_attention-odd_nq_ne_nk", "part_masks-odd", "part_masks_gt-odd", "assemble_parts-odd",
              "area_variance-odd"]
ROW_FIELDS = {
    "commit", "date", "device", "host", "torch", "triton", "threads", "allocator", "loadavg", "case", "op", "kind",
    "dims", "options", "dtype", "mode", "backend", "cuda_graph", "ms_median", "ms_p20", "ms_p80", "peak_mem_mib",
    "ratio_to_reference", "tflops", "gbps",
}


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_ops")


@pytest.fixture
def run_main(bench, tmp_path):
    """bench.main(argv) writing into tmp_path; returns (exit code, rows written); restores the thread count."""
    yield from main_runner(bench, tmp_path, "ops_cpu.jsonl")


def test_cpu_rows_one_case_per_op(run_main):
    code, rows = run_main("--kinds", "awkward", "--only", *ONE_PER_OP, "--modes", "fwd", "grad", "full", "bwd",
                          "--reps", "3", "--warmup", "0", "--threads", "1")
    assert code == 0
    backends = [b for b in ("reference", "cpp") if b in pdnet.ops.available_backends("cpu")]
    expected = {(case, mode, b) for case in ONE_PER_OP for mode in ("fwd", "grad", "full", "bwd") for b in backends}
    assert {(r["case"], r["mode"], r["backend"]) for r in rows} == expected
    for r in rows:
        assert ROW_FIELDS <= r.keys(), ROW_FIELDS - r.keys()
        assert r["threads"] == 1 and r["allocator"] == "glibc" and r["dtype"] == "float32" and not r["cuda_graph"]
        assert 0 < r["ms_p20"] <= r["ms_median"] <= r["ms_p80"], r
        assert r["peak_mem_mib"] >= 0
        ref = next(x for x in rows if (x["case"], x["mode"], x["backend"]) == (r["case"], r["mode"], "reference"))
        assert r["ratio_to_reference"] == pytest.approx(ref["ms_median"] / r["ms_median"])
        assert (r["tflops"] is not None) == (r["op"] == "part_attention")
        assert r["gbps"] is not None or (r["op"], r["mode"]) == ("area_variance", "bwd")


def test_triton_in_the_interpreter(run_main):
    if "triton" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("Triton runs on the CPU only in its interpreter (TRITON_INTERPRET=1)")
    code, rows = run_main("--kinds", "awkward", "--only", "part_attention-one_part", "--backends", "reference",
                          "triton", "--modes", "fwd", "grad", "--reps", "1", "--warmup", "0", "--threads", "1")
    assert code == 0
    assert sorted((r["mode"], r["backend"]) for r in rows) == [
        ("fwd", "reference"), ("fwd", "triton"), ("grad", "reference"), ("grad", "triton")]


def test_sdpa_baselines_compute_part_attention(bench):
    """The baselines the CUDA rows compare against give the reference's output and gradients."""
    for case in C.cases("part_attention", "awkward"):
        if case.empty or case.options.get("key_mask") == "rows_fully_masked":
            continue  # SDPA gives NaN for a row without keys, where the op gives 0
        args, kwargs = C.make_inputs(case, "cpu", torch.float64, requires_grad=True)
        want = C.forward_backward(C.reference("part_attention"), args, kwargs)
        for name, fn in bench.BASELINES.items():
            for got, ref in zip(C.forward_backward(fn, args, kwargs), want, strict=True):
                torch.testing.assert_close(got, ref, msg=lambda m, name=name, case=case: f"{name} {case.id}: {m}")


def test_peak_memory_counts_what_a_call_allocates(bench):
    mib = bench.peak_memory_mib(lambda: torch.ones(2 << 20).add(1), torch.device("cpu"))  # two 8 MiB tensors
    assert 15.9 < mib < 16.5


@pytest.mark.parametrize("argv,message", [
    (["--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["--backends", "no_such_backend"], "backend 'no_such_backend' is not available on cpu, only reference"),
    (["--device", "cuda"], "torch.cuda.is_available() is False"),
    (["--attn-config", "fwd=16"], "bad --attn-config 'fwd=16'; expected KIND=BM,BN,WARPS,STAGES"),
    (["--ops", "part_masks", "--only", "no_such_case"], "no model case of part_masks matches --only no_such_case"),
])
def test_settings_it_cannot_honour_are_clear_errors(bench, capsys, tmp_path, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("checks the message without a CUDA device")
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_help_lists_the_options(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--device", "--cuda-graph", "--allocator", "--kinds", "--modes", "--backends", "sdpa_per_part"):
        assert word in out, word


@pytest.mark.slow
def test_steady_allocator_in_a_fresh_process():
    """--allocator steady tunes the process's malloc, so it runs in a process of its own."""
    res = subprocess.run(
        [sys.executable, str(BENCH), "--allocator", "steady", "--kinds", "awkward", "--only", "area_variance-odd",
         "--reps", "2", "--warmup", "0", "--no-save"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "allocator steady" in res.stdout
    backends = [b for b in ("reference", "cpp") if b in pdnet.ops.available_backends("cpu")]
    modes = [line.split()[2] for line in res.stdout.splitlines() if line.startswith("area_variance-odd ")]
    assert modes == [mode for mode in ("fwd", "grad", "full") for _ in backends], res.stdout


@pytest.mark.cuda
def test_cuda_graph_rows(bench, tmp_path):
    code = bench.main(["--device", "cuda", "--cuda-graph", "--kinds", "model", "--modes", "fwd", "grad",
                       "--warmup-ms", "2", "--rep-ms", "5", "--out", str(tmp_path)])
    assert code == 0
    rows = [json.loads(line) for path in tmp_path.glob("ops_*.jsonl") for line in path.read_text().splitlines()]
    assert {r["op"] for r in rows} == set(C.OPS)
    assert all(r["cuda_graph"] and r["ms_median"] > 0 and r["peak_mem_mib"] >= 0 for r in rows)
    assert {"sdpa_heads", "sdpa_per_part", "reference"} <= {r["backend"] for r in rows}
