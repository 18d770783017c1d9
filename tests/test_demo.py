"""pdnet demo: the pipeline through pdnet synth and the trainer, --quick, its flags and its budget."""
import json
import tempfile
from pathlib import Path

import pytest

from pdnet.cli import main


@pytest.mark.slow
def test_demo_quick(tmp_path, monkeypatch, capsys):
    """--quick: pdnet synth clips and trainer steps, the loss terms of the first video step
    and the held-out J&F; its temporary folder is removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo", "--quick", "--steps", "2", "--size", "64", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "loss terms of the first video step:" in out and "parts_t.area_gt" in out
    assert "step 1/2: total" in out and "step 2/2: total" in out
    assert "J&F of the held-out clip" in out and "after 2 steps" in out and "total time" in out
    assert list(tmp_path.glob("pdnet-demo-quick-*")) == []


def test_demo_quick_bad_set_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo", "--quick", "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdnet demo: error: --set train.lr=-1"), err
    assert list(tmp_path.glob("pdnet-demo-quick-*")) == []


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path, capsys):
    """`pdnet demo` (the README's main job) on a tiny budget: synth, J&F before/after,
    training, segmenting a held-out clip, and the report naming real files. The
    recipe (50 epochs) does not fit the 12-s budget, so the time budget ends training
    (after at least one step) and the report says so."""
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


@pytest.mark.parametrize("args, expected", [
    (["--clips", "0"], "argument --clips: expected an integer >= 2, got 0"),
    (["--clips", "x"], "argument --clips: expected an integer >= 2, got 'x'"),
    (["--frames", "1"], "argument --frames: expected an integer >= 2, got 1"),
    (["--synth-size", "10x"], "argument --synth-size: size must be HxW"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--minutes", "nan"], "argument --minutes: must be a number of minutes (a finite number > 0), got 'nan'"),
    (["--minutes", "0"], "argument --minutes: must be a number of minutes (a finite number > 0), got '0'"),
    (["--set", "train.lr=nan"], "--set train.lr=nan: train.lr must be a finite number > 0"),
    (["--set", "bogus"], "--set expects section.key=value, got 'bogus'"),
    (["--quick", "--parts", "0"], "argument --parts: expected an integer >= 1, got 0"),
    (["--quick", "--parts", "9"], "argument --parts: expected a number of parts in 1..8, got 9"),
    (["--quick", "--size", "33"], "argument --size: the input size must be a multiple of 32, got 33"),
    (["--quick", "--batch", "0"], "argument --batch: expected an integer >= 1, got 0"),
    (["--quick", "--steps", "-1"], "argument --steps: expected an integer >= 0, got -1"),
    (["--quick", "--lr", "inf"], "argument --lr: must be a learning rate (a finite number > 0), got 'inf'"),
    (["--quick", "--backbone", "resnet9"], "argument --backbone: invalid choice: 'resnet9'"),
])
def test_demo_flags_bad_values_are_one_line(args, expected, tmp_path, capsys):
    """Every flag of pdnet demo: a bad value is one line naming it (exit 2), before anything runs."""
    try:
        code = main(["demo", "--out", str(tmp_path / "demo"), *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pdnet demo: error: ") and expected in err[0], err
    assert not (tmp_path / "demo").exists()


def test_demo_overwrite_replaces_only_a_previous_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "mine").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    assert main(["demo", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the output of a previous demo (it holds 'mine')" in err[0]
    assert (out / "mine").is_dir() and (out / "report.json").is_file()  # nothing removed


def test_demo_training_budget():
    from pdnet.demo import training_budget

    # 270 s in all, 30 s spent, the first J&F took 10 s: reserve 1.1 * (1.5 * 10 + 10) + 0.05 * 270 = 41 s
    assert training_budget(270.0, 30.0, 10.0) == pytest.approx(199.0)
    # a slower machine (J&F 4x slower) gets less training
    assert training_budget(270.0, 30.0, 40.0) < training_budget(270.0, 30.0, 10.0)
    # nothing left: still one step, so that there is a checkpoint to evaluate and segment with
    assert training_budget(60.0, 59.0, 30.0) == 1.0
