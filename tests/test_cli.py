"""The command line: entry points and the demo."""
import subprocess
import sys

import pytest

from pdnet.cli import main


def test_python_m_pdnet_help():
    r = subprocess.run([sys.executable, "-m", "pdnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_demo_runs(capsys):
    assert main(["demo", "--quick", "--steps", "1", "--size", "64", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "parts_t.area_gt" in out and "total time" in out


def test_console_script_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "pdnet"
    assert script.exists(), "the pdnet console script is not installed in this environment"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("pdnet ")


def test_demo_pipeline_end_to_end(tmp_path, capsys):
    """`pdnet demo` (the README's main job) on a tiny budget: synth, J&F before/after,
    training, segmenting a held-out clip, and the report naming real files. The
    recipe (50 epochs) does not fit the 12-s budget, so the time budget ends training
    (after at least one step) and the report says so."""
    import json
    from pathlib import Path

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "0.2", "--clips", "5", "--frames", "3",
                 "--synth-size", "64x64", "--set", "train.epochs=50", "--set", "data.size=64",
                 "--set", "data.workers=0", "--set", "train.batch_size=2", "--set", "log.progress=false"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["J&F_before"] <= 1.0 and 0.0 <= report["J&F_after"] <= 1.0
    assert report["steps"] >= 1 and Path(report["checkpoint"]).is_file() and Path(report["metrics"]).is_file()
    assert report["stopped_by_time_budget"] and report["steps"] < report["recipe_steps"]
    assert report["epochs"] == pytest.approx(report["steps"] * 50 / report["recipe_steps"], abs=0.01)
    assert set(report["stage_seconds"]) == {"synth", "setup", "validate_before", "train", "validate_after", "segment"}
    seg = report["segmented"]
    frames = sorted((out / "data" / "JPEGImages" / "480p" / seg["clip"]).glob("*.jpg"))
    masks = sorted(Path(seg["masks"]).glob("*.png"))
    assert [m.stem for m in masks] == [f.stem for f in frames] and Path(seg["overlay"]).stat().st_size > 0
    assert "J&F on held-out synthetic clips" in capsys.readouterr().out
    # a second run into the same folder refuses to overwrite it
    assert main(["demo", "--out", str(out)]) == 2
