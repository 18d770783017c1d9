"""``pdnet synth`` / ``pdnet evaluate`` hardening: synth --force replaces only its own previous
output, every flag given a bad value is a one-line error, linked sequence folders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from data_hardening_helpers import _box, _cli, _davis, _save
from PIL import Image

from pdnet.evaluation import evaluate

# -------------------------------------------------------------- synth --force


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_force_replaces_the_previous_set(tmp_path, capsys):
    """--force deletes exactly the previous synth output (by its synth.json), so seed 0
    with 3 clips then seed 1 with 2 clips equals a fresh seed-1 run byte for byte; a
    folder that is not synth output is refused and left alone."""
    from pdnet.cli import main

    common = ["--frames", "2", "--size", "16x24", "--workers", "1", "--quiet"]
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["synth", str(out), "--seed", "0", "--clips", "3", *common]) == 0
    assert len(list((out / "JPEGImages/480p").iterdir())) == 3
    (out / "notes.txt").write_text("mine")  # not synth's: kept
    assert main(["synth", str(out), "--seed", "1", "--clips", "2", "--force", *common]) == 0
    assert main(["synth", str(fresh), "--seed", "1", "--clips", "2", *common]) == 0
    got = _tree(out)
    assert got.pop("notes.txt") == b"mine"
    assert got == _tree(fresh)
    assert not (out / "JPEGImages/480p/clip0002").exists()
    # an interrupted run (manifest still "in_progress") is removable too
    meta = json.loads((out / "synth.json").read_text())
    meta["in_progress"] = True
    del meta["sequences"]
    (out / "synth.json").write_text(json.dumps(meta))
    assert main(["synth", str(out), "--seed", "1", "--clips", "2", "--force", *common]) == 0
    assert _tree(out) == {**_tree(fresh), "notes.txt": b"mine"}
    capsys.readouterr()
    # not synth output (no manifest, or a foreign one): refused, nothing deleted
    other = tmp_path / "other"
    _davis(other, [Image.fromarray((_box() * 255).astype(np.uint8))])
    before = _tree(other)
    for manifest in (None, '{"generator": "someone else", "clips": 1, "frames": 1}', "not json"):
        if manifest is not None:
            (other / "synth.json").write_text(manifest)
            before = _tree(other)
        assert main(["synth", str(other), "--clips", "1", "--force", *common]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refusing to delete" in err and str(other) in err, err
        assert _tree(other) == before


# ----------------------------------------------------- every flag, bad values


@pytest.fixture(scope="module")
def flag_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    (d / "afile").write_text("x")
    (d / "full").mkdir()
    (d / "full/x.txt").write_text("x")
    (d / "dir.json").mkdir()
    for root in ("gt", "pred"):
        for t in range(3):
            _save(d / root / "s" / f"{t}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    return d


SYNTH_BAD = [
    ([], "required: OUT"),
    (["{d}/new", "--seed", "-1"], "--seed -1"),
    (["{d}/new", "--seed", "abc"], "'abc'"),
    (["{d}/afile/x"], "{d}/afile is not a folder"),
    (["{d}/afile"], "{d}/afile: exists and is not a folder"),
    (["{d}/full"], "{d}/full: folder is not empty"),
    (["{d}/full", "--force"], "refusing to delete"),
    (["{d}/new", "--clips", "0"], "--clips 0"),
    (["{d}/new", "--clips", "-2"], "--clips -2"),
    (["{d}/new", "--clips", "two"], "'two'"),
    (["{d}/new", "--frames", "0"], "--frames 0"),
    (["{d}/new", "--frames", "1.5"], "'1.5'"),
    (["{d}/new", "--size", "8x8"], "'8x8'"),
    (["{d}/new", "--size", "abc"], "'abc'"),
    (["{d}/new", "--size", "5000x64"], "'5000x64'"),
    (["{d}/new", "--size", "16x16x16"], "'16x16x16'"),
    (["{d}/new", "--size", "-32"], "'-32'"),
    (["{d}/new", "--val", "1"], "--val 1.0"),
    (["{d}/new", "--val", "-0.1"], "--val -0.1"),
    (["{d}/new", "--val", "nan"], "--val nan"),
    (["{d}/new", "--val", "half"], "'half'"),
    (["{d}/new", "--quality", "0"], "--quality 0"),
    (["{d}/new", "--quality", "101"], "--quality 101"),
    (["{d}/new", "--quality", "high"], "'high'"),
    (["{d}/new", "--workers", "0"], "--workers 0"),
    (["{d}/new", "--workers", "many"], "'many'"),
    (["{d}/new", "--force=yes"], "--force"),
    (["{d}/new", "--quiet=1"], "--quiet"),
]


EVAL_BAD = [
    (["--gt", "{d}/gt"], "--pred"),
    (["--pred", "{d}/pred"], "--gt"),
    (["--pred", "{d}/nope", "--gt", "{d}/gt"], "{d}/nope does not exist"),
    (["--pred", "{d}/pred", "--gt", "{d}/nope"], "{d}/nope does not exist"),
    (["--pred", "{d}/afile", "--gt", "{d}/gt"], "{d}/afile is not a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--protocol", "bogus"], "'bogus'"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/r.txt"], "{d}/r.txt"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/afile/r.json"], "{d}/afile is not a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--out", "{d}/dir.json"], "{d}/dir.json: is a folder"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", ""], "--sequences ''"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", " , "], "--sequences ' , '"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", "yak"], "sequence yak"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--sequences", "../gt"], "sequence ../gt"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "bogus"], "--device bogus"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "meta"], "--device meta"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--device", "cuda:99"], "--device cuda:99"),
    (["--pred", "{d}/pred", "--gt", "{d}/gt", "--missing-as-empty=1"], "--missing-as-empty"),
]


@pytest.mark.parametrize(
    "command,args,needle", [("synth", a, n) for a, n in SYNTH_BAD] + [("evaluate", a, n) for a, n in EVAL_BAD]
)
def test_bad_flag_values_are_one_line_errors(flag_dirs, command, args, needle):
    d = str(flag_dirs)
    code, err = _cli([command, *(a.replace("{d}", d) for a in args)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"pdnet {command}: error: ") and needle.replace("{d}", d) in lines[0], lines[0]
    assert not (flag_dirs / "new").exists()


def test_good_flags_still_work(flag_dirs):
    code, err = _cli(["evaluate", "--pred", str(flag_dirs / "pred"), "--gt", str(flag_dirs / "gt"), "--device", "cpu",
                      "--sequences", "s", "--protocol", "mvps", "--out", str(flag_dirs / "new_out/r.csv")])
    assert code == 0, err
    assert (flag_dirs / "new_out/r.csv").is_file()


def test_evaluate_linked_sequence_folders(tmp_path):
    """Sequence folders may be symbolic links (followed, each folder once: no loop)."""
    for t in range(2):
        _save(tmp_path / "store/bear" / f"{t}.png", Image.fromarray((_box(t) * 255).astype(np.uint8)))
    for root in ("gt", "pred"):
        (tmp_path / root).mkdir()
        os.symlink(tmp_path / "store/bear", tmp_path / root / "bear")
    os.symlink(tmp_path / "gt", tmp_path / "store/bear/loop")  # a cycle
    assert list(evaluate(tmp_path / "pred", tmp_path / "gt").sequences) == ["bear"]
