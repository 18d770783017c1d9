"""bench/gpu_check.sh on the CPU (its plan, its deadline, its rows and summary), and the figures it
reports: bench_ops.py's peak table and attention + assembly rows, bench/results_summary.py."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from ops import cases as C  # tests/ops/cases.py

import pdnet.ops

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["env", "build", "tests", "tests_slow", "ops_large", "ops_model", "fps", "train", "eval"]
sys.path.insert(0, str(ROOT / "bench"))

import bench_ops  # noqa: E402  (bench/ on sys.path)
import ops_baselines  # noqa: E402
import results_summary as rs  # noqa: E402


def gpu_check(results: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # as on a GPU machine: the script's steps decide
    return subprocess.run(["bash", str(SCRIPT), str(results), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def summary(results: Path) -> dict:
    """{step: (status, note)} of summary.json, which must list every step in order."""
    data = json.loads((results / "summary.json").read_text())
    assert [s["step"] for s in data["steps"]] == STEPS
    text = (results / "summary.txt").read_text()
    for s in data["steps"]:
        assert f"{s['step']:12s} {s['status']}" in text
    return {s["step"]: (s["status"], s["note"]) for s in data["steps"]}


#: the script's tests take its CPU path; on a GPU machine the script is the real run, not a test
cpu_path = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of gpu_check.sh")


# --------------------------------------------------------------------------- the script
@cpu_path
def test_dry_run_plans_every_step(tmp_path):
    res = gpu_check(tmp_path / "r", "--dry-run", timeout=60)
    assert res.returncode == 0, res.stderr
    steps = summary(tmp_path / "r")
    assert {status for status, _ in steps.values()} == {"dry-run"}
    assert steps["env"][1] == "would run for at most 30 s on cpu"
    assert res.stdout.rstrip().splitlines()[-1] == "rows: none"  # the summary table ends the output


@cpu_path
def test_cpu_ops_rows_land_in_results_and_bundle(tmp_path):
    res = gpu_check(tmp_path / "r", "--only", "ops_large", "--bundle", str(tmp_path / "b"))
    assert res.returncode == 0, res.stdout + res.stderr
    steps = summary(tmp_path / "r")
    assert steps["ops_large"][0] == "ok"
    assert all(steps[s] == ("skipped", "not selected (--only / --skip)") for s in STEPS if s != "ops_large")
    rows = rs.read_jsonl(tmp_path / "r" / "rows" / "ops_cpu.jsonl")
    backends = {b for b in ("reference", "cpp") if b in pdnet.ops.available_backends("cpu")}
    assert {(r["case"], r["backend"]) for r in rows} == {
        (case, b) for case in ("part_attention-odd_nq_ne_nk", "assemble_parts-odd") for b in backends}
    assert f"ops_cpu.jsonl ({len(rows)})" in (tmp_path / "r" / "summary.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["gpu_check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(tmp_path / "b" / "gpu_check.tar.gz") as tar:
        assert {"rows/ops_cpu.jsonl", "logs/ops_large.log", "steps.tsv", "summary.txt"} <= set(tar.getnames())
    # CPU stand-in rows stay out of the committed results
    committed = ROOT / "bench" / "results" / "ops_cpu.jsonl"
    dates = {r["date"] for r in rows}
    assert not committed.exists() or not [r for r in rs.read_jsonl(committed) if r.get("date") in dates]


@cpu_path
def test_a_step_past_its_time_is_stopped_and_the_next_runs(tmp_path):
    res = gpu_check(tmp_path / "r", "--only", "train,eval", "--step-cap", "2", timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    steps = summary(tmp_path / "r")
    assert steps["train"][0] == "timeout" and steps["train"][1].startswith("stopped after 2 s")
    assert steps["eval"][0] in ("timeout", "ok")  # it ran although train had failed


@cpu_path
def test_no_time_left_skips_with_the_reason(tmp_path):
    res = gpu_check(tmp_path / "r", "--only", "eval", "--budget", "11", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    status, note = summary(tmp_path / "r")["eval"]
    assert status == "skipped" and note.startswith("out of time")
    assert not list((tmp_path / "r" / "rows").iterdir())


@pytest.mark.parametrize("args,message", [
    ([], "usage: bench/gpu_check.sh RESULTS_DIR"),
    (["R", "--only", "ops"], "unknown step 'ops'; steps are: env build tests"),
    (["R", "--budget", "9m"], "take a whole number of seconds, got 9m"),
    (["R", "--frobnicate"], "unknown option --frobnicate"),
])
def test_bad_arguments_are_clear_errors(tmp_path, args, message):
    res = subprocess.run(["bash", str(SCRIPT), *[str(tmp_path / a) if a == "R" else a for a in args]],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and message in res.stderr, res.stderr


@cpu_path
@pytest.mark.slow
def test_full_cpu_run_without_the_build(tmp_path):
    """Every step but the build (which compiles the extension: minutes on a small machine)."""
    res = gpu_check(tmp_path / "r", "--skip", "build", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    steps = summary(tmp_path / "r")
    assert all(status == "ok" for step, (status, _) in steps.items() if step != "build"), steps
    names = {p.name for p in (tmp_path / "r" / "rows").iterdir()}
    assert {"ops_cpu.jsonl", "fps_cpu.jsonl", "eval_cpu.jsonl", "train_cpu_resnet18_64_b1.json"} <= names
    assert "skipped" in (tmp_path / "r" / "logs" / "pytest.log").read_text()  # the CUDA tests, here


# --------------------------------------------------------------------------- the figures
@pytest.mark.parametrize("name,dtype,expected", [
    ("NVIDIA H200", torch.bfloat16, (989.0, 4800.0)),
    ("NVIDIA H200 NVL", torch.float16, (835.0, 4800.0)),
    ("NVIDIA H100 80GB HBM3", torch.float32, (67.0, 3350.0)),
    ("NVIDIA H100 PCIe", torch.bfloat16, (756.0, 2000.0)),
    ("NVIDIA A100-SXM4-80GB", torch.bfloat16, (312.0, 2039.0)),
    ("NVIDIA A100-SXM4-40GB", torch.float32, (19.5, 1555.0)),
    ("NVIDIA GeForce RTX 3090", torch.bfloat16, (71.0, 936.0)),
    ("Some CPU", torch.float32, (None, None)),
])
def test_device_peaks_take_the_most_specific_name(name, dtype, expected):
    assert bench_ops.device_peaks(name, dtype) == expected


def test_assembly_cases_are_the_square_model_and_large_attention_cases():
    cases = ops_baselines.assembly_cases([c for op in C.OPS for c in C.cases(op)])
    assert [c.id for c in cases] == [f"attention_assembly-{n}" for n in
                                     ("model", "model_masked", "model_B32", "N3600_d64", "N14400_d64")]
    attention, assembly = ops_baselines.parts(cases[3])
    assert attention == next(c for c in C.cases("part_attention") if c.name == "N3600_d64")
    assert assembly.dims == {"B": 8, "p": 5, "C": 64, "h": 60, "w": 60}


@pytest.mark.parametrize("backend", ["cpp", "sdpa_per_part", "sdpa_heads"])
def test_attention_assembly_matches_its_reference(backend):
    """Every side of the attention + assembly rows computes the same function, gradients too."""
    if backend == "cpp" and "cpp" not in pdnet.ops.available_backends("cpu"):
        pytest.skip("the cpp backend is not built")
    base = C.Case("part_attention", "small", "model", dict(B=2, p=3, Nq=16, Nk=16, d=8), dict(key_mask="random"))
    case = ops_baselines.assembly_cases([base])[0]
    args, kwargs = ops_baselines.make_inputs(case, "cpu", torch.float64, requires_grad=True)
    want = C.forward_backward(ops_baselines.attention_assembly("reference"), args, kwargs)
    got = C.forward_backward(ops_baselines.attention_assembly(backend), args, kwargs)
    assert len(got) == 7  # output; q, k, v, P, R and the key mask's gradients
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def _target_rows(device="NVIDIA H200", cpp_fwd_ms=0.5, triton_fwd_ms=0.6, cpp_full_ms=2.0, sdpa_full_ms=4.0):
    flops = 4.0 * 40 * 3600 * 3600 * 64
    rows = []
    for case, backend, mode, ms in [
        ("part_attention-N3600_d64", "cpp", "fwd", cpp_fwd_ms), ("part_attention-N3600_d64", "triton", "fwd",
                                                                 triton_fwd_ms),
        ("part_attention-N3600_d64", "cpp", "full", cpp_full_ms),
        ("attention_assembly-N3600_d64", "cpp", "full", cpp_full_ms),
        ("attention_assembly-N3600_d64", "sdpa_per_part", "full", sdpa_full_ms),
    ]:
        tflops = flops * bench_ops.FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12
        rows.append(dict(device=device, case=case, backend=backend, mode=mode, dtype="bfloat16", tflops=tflops,
                         tflops_frac_peak=tflops / 989.0, ratio_to_sdpa_per_part=sdpa_full_ms / ms
                         if case.startswith("attention_assembly") else None))
    return rows


def test_attention_target_lines():
    lines = rs.attention_target_lines(_target_rows())
    assert lines[0] == "attention target (bfloat16, d=64, N=3600, B*p=40) on NVIDIA H200:"
    # 4 * 40 * 3600^2 * 64 = 132.7 GFLOP in 0.5 ms; 3.5x that in 2 ms; of 989 TFLOP/s
    assert lines[1].startswith("  cpp           fwd 265.4 TFLOP/s (26.8% of peak); "
                               "fwd+bwd 232.2 TFLOP/s (23.5% of peak)")
    assert lines[1].endswith("attention+assembly fwd+bwd 2.00x SDPA per part + assembly")
    assert lines[-1] == ("  cpp targets: fwd >= 200 TFLOP/s on an H100/H200: met; fwd >= triton's: met; "
                         "fwd+bwd >= 1.5x SDPA per part + assembly: met")
    assert lines[2].startswith("  triton        fwd 221.2 TFLOP/s (22.4% of peak); fwd+bwd -;")
    assert lines[3].startswith("  sdpa_per_part fwd -; fwd+bwd -; attention+assembly fwd+bwd 1.00x")
    slow = rs.attention_target_lines(_target_rows(cpp_fwd_ms=2.0, cpp_full_ms=5.0))
    assert slow[-1] == ("  cpp targets: fwd >= 200 TFLOP/s on an H100/H200: NOT met; fwd >= triton's: NOT met; "
                        "fwd+bwd >= 1.5x SDPA per part + assembly: NOT met")
    other = rs.attention_target_lines(_target_rows(device="NVIDIA GeForce RTX 3090"))
    assert "on an H100/H200: n/a" in other[-1]
    assert rs.attention_target_lines([r for r in _target_rows() if r["dtype"] != "bfloat16"]) == []


def test_copy_rows_appends_lines_and_copies_files(tmp_path):
    src, dest = tmp_path / "rows", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "ops_x.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "cut sh')  # a row cut short is left out
    (src / "train_x.json").write_text('{"b": 1}')
    (dest / "ops_x.jsonl").write_text('{"a": 0}\n')
    assert rs.copy_rows(src, dest) == [dest / "ops_x.jsonl", dest / "train_x.json"]
    assert [r["a"] for r in rs.read_jsonl(dest / "ops_x.jsonl")] == [0, 1, 2]
    assert json.loads((dest / "train_x.json").read_text()) == {"b": 1}


def test_pytest_report_counts_and_names_failures(tmp_path):
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2">'
        '<testcase classname="tests.t" name="a"/><testcase classname="tests.t" name="b"><failure/></testcase>'
        '<testcase classname="tests.t" name="c"><skipped/></testcase>'
        '<testcase classname="tests.t" name="d"><skipped/></testcase></testsuite></testsuites>')
    assert rs.pytest_report(tmp_path) == {"pytest": {"tests": 4, "failures": 1, "errors": 0, "skipped": 2,
                                                     "passed": 1, "failed": ["tests.t::b"]}}


def test_ops_lines_give_each_kernel_backend_per_case():
    row = dict(dtype="bfloat16", ratio_to_reference=None, tflops_frac_peak=None, gbps_frac_peak=None)
    rows = [
        {**row, "case": "a", "mode": "fwd", "backend": "reference", "ms_median": 2.0},
        {**row, "case": "a", "mode": "fwd", "backend": "cpp", "ms_median": 0.5, "ratio_to_reference": 4.0,
         "gbps_frac_peak": 0.71},
        {**row, "case": "a", "mode": "full", "backend": "triton", "ms_median": 1.25, "tflops_frac_peak": 0.2},
        {**row, "case": "a", "mode": "fwd", "backend": "cpp", "ms_median": 9.0, "dtype": "float16"},
        {**row, "case": "b", "mode": "fwd", "backend": "sdpa_heads", "ms_median": 1.0},
    ]
    assert rs.ops_lines(rows) == [
        "ops a bfloat16: fwd cpp 0.5 ms 4.00x ref 71% of peak; full triton 1.25 ms 20% of peak"]


def test_read_steps_keeps_a_note_with_a_carriage_return_on_its_line(tmp_path):
    """A step stopped mid progress bar once left a note with \\r in steps.tsv; it is one step, not two."""
    path = tmp_path / "steps.tsv"
    path.write_bytes(b"env\tok\t0\t1\tfine\ntrain\ttimeout\t124\t2\tlast line: synth:   0%|\r 1/4\n")
    steps = rs.read_steps(path)
    assert [s["step"] for s in steps] == ["env", "train"]
    assert steps[1]["status"] == "timeout" and steps[1]["rc"] == 124 and steps[1]["note"].endswith("1/4")
