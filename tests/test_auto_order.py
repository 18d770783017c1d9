"""bench/auto_order.py: the measured order of backend="auto" from benchmark rows."""
from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pdnet.ops import auto_table

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "auto_order.py"


@pytest.fixture(scope="module")
def auto_order():
    return SimpleNamespace(**runpy.run_path(str(SCRIPT), run_name="auto_order"))


def row(backend, ms, *, op="part_attention", mode="grad", dtype="bfloat16", device="NVIDIA H200", date="2026-12-01",
        case=None, dims=None, **extra):
    dims = dims or {"B": 2, "p": 5, "Nq": 900, "Nk": 900, "d": 32}
    return dict(op=op, case=case or f"{op}-model", dims=dims, mode=mode, dtype=dtype, device=device, date=date,
                backend=backend, ms_median=ms, cuda_graph=False, commit="abc1234", **extra)


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def results(tmp_path):
    big = {"B": 32, "p": 5, "Nq": 3600, "Nk": 3600, "d": 64}
    write(tmp_path / "ops_NVIDIA_H200.jsonl", [
        row("cpp", 2.0), row("triton", 1.0), row("reference", 5.0),
        row("cpp", 1.0, mode="fwd"), row("triton", 0.8, mode="fwd"), row("reference", 4.0, mode="fwd"),
        row("triton", 9.0, date="2026-11-01"),  # older: superseded by the 1.0 above
        row("sdpa_heads", 0.1), row("cpp", 0.1, mode="full"),  # a baseline, a mode auto does not rank
        row("cpp", 0.1, op="attention_assembly"), row("triton", 0.2, op="attention_assembly"),  # a composite
        row("cpp", 3.0, case="part_attention-N3600", dims=big), row("triton", 4.0, case="part_attention-N3600",
                                                                    dims=big),
        row("cpp", 1.0, case="part_attention-alone", dims={"B": 1, "p": 1, "Nq": 8, "Nk": 8, "d": 8},
            dtype="float16"),  # one backend: nothing to rank
    ])
    write(tmp_path / "ops_Weird.jsonl", [
        row("cpp", 1.0, device="Weird GPU", capability=[8, 6], op="part_masks_gt", case="part_masks_gt-model",
            dims={"B": 2, "p": 5, "h": 480, "w": 480}),
        row("triton", 2.0, device="Weird GPU", capability=[8, 6], op="part_masks_gt", case="part_masks_gt-model",
            dims={"B": 2, "p": 5, "h": 480, "w": 480}),
        row("triton", 2.0, device="Mystery GPU"),
    ])
    write(tmp_path / "ops_cpu.jsonl", [
        row("cpp", 3.0, device="Xeon", dtype="float32"), row("reference", 1.0, device="Xeon", dtype="float32"),
        row("triton", 0.5, device="Xeon", dtype="float32"),  # Triton's interpreter: never a CPU candidate
    ])
    return tmp_path


def test_rows_rank_the_backends_per_key(auto_order, results):
    rows, notes = auto_order.read_rows(sorted(results.glob("ops_*.jsonl")))
    table = auto_order.rank(rows)
    assert set(table) == {
        ("part_attention", "sm90", "bfloat16", "model"),
        ("part_attention", "sm90", "bfloat16", "large"),
        ("part_masks", "sm86", "bfloat16", "model"),
        ("part_attention", "cpu", "float32", "model"),
    }
    ranked, source = table[("part_attention", "sm90", "bfloat16", "model")]
    assert ranked == ("triton", "cpp", "reference")
    # geometric means of time / fastest over (grad, fwd): cpp sqrt(2 * 1.25), reference sqrt(5 * 5)
    assert "2 timings of 1 cases" in source and "cpp 1.58, reference 5.00" in source
    assert table[("part_attention", "sm90", "bfloat16", "large")][0] == ("cpp", "triton")
    assert table[("part_masks", "sm86", "bfloat16", "model")][0] == ("cpp", "triton")
    assert table[("part_attention", "cpu", "float32", "model")][0] == ("reference", "cpp")
    assert notes == ["left out, no compute capability known for ops_Weird.jsonl: 'Mystery GPU'"]


def test_the_written_module_holds_the_table_and_check_compares(auto_order, results, tmp_path):
    out = tmp_path / "measured.py"
    assert auto_order.main(["--results", str(results), "--out", str(out)]) == 0
    namespace: dict = {}
    exec(out.read_text(), namespace)
    rows, _ = auto_order.read_rows(sorted(results.glob("ops_*.jsonl")))
    assert namespace["MEASURED"] == auto_order.rank(rows)
    assert max(len(line) for line in out.read_text().splitlines()) <= 120
    assert auto_order.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    write(results / "ops_cpu.jsonl", [row("cpp", 1.0, device="Xeon", dtype="float32"),
                                      row("reference", 3.0, device="Xeon", dtype="float32")])
    assert auto_order.main(["--results", str(results), "--out", str(out), "--check"]) == 1


def test_the_shipped_table_is_what_the_committed_rows_give(auto_order, capsys):
    assert auto_order.main(["--check"]) == 0, capsys.readouterr().out
    for (op, device, dtype, size), (ranked, source) in auto_table.MEASURED.items():
        assert op in auto_table.LARGE_FROM and size in auto_table.SIZE_CLASSES, (op, size)
        assert isinstance(getattr(torch, dtype), torch.dtype), dtype
        assert set(ranked) <= set(auto_table.DEFAULT_ORDER[auto_table.device_type(device)]) and source
