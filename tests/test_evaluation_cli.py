"""``pdnet evaluate`` and evaluate()/evaluate_arrays(): folders of PNGs, protocols, output
formats and every bad-input case (one line naming the file, exit code 2, no traceback)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from pdnet.cli import main
from pdnet.evaluation import EvaluationError, binarize, evaluate, evaluate_arrays
from pdnet.evaluation import reference as ref

H, W, T = 36, 50, 6


def _clip(seed, t=T):
    """(pred probabilities uint8 0..255, gt 0/255) of one clip: a moving, jittering box."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((t, H, W), np.uint8)
    pred = np.zeros((t, H, W), np.uint8)
    for i in range(t):
        gt[i, 5 + i : 25 + i, 10 + 2 * i : 30 + 2 * i] = 255
        dy, dx = rng.integers(-2, 3, size=2)
        pred[i, 5 + i + dy : 25 + i + dy, 10 + 2 * i + dx : 30 + 2 * i + dx] = rng.integers(128, 256)
        pred[i][rng.random((H, W)) < 0.02] = 127  # below the davis threshold, non-zero for mvps
    return pred, gt


def _write(root, name, frames, names=None):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / (names[i] if names else f"{i:05d}.png"))
    return d


@pytest.fixture
def folders(tmp_path):
    clips = {"bear": _clip(0), "cat": _clip(1, t=7)}
    for name, (pred, gt) in clips.items():
        _write(tmp_path / "pred", name, pred)
        _write(tmp_path / "gt", name, gt)
    return tmp_path / "pred", tmp_path / "gt", clips


def _expected(clips, protocol):
    """Per-sequence (J mean, F mean) from the per-frame NumPy transcription."""
    out = {}
    for name, (pred, gt) in clips.items():
        if protocol == "davis":
            p, g = pred >= 128, gt >= 128
        else:
            p, g = (pred != 0)[1:-1], (gt != 0)[1:-1]
        j, f = ref.evaluate_sequence(p, g)
        out[name] = (j.mean(), f.mean(), ref.flicker(p, g))
    return out


def run_cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("protocol", ["davis", "mvps"])
def test_cli_json_matches_reference(folders, capsys, tmp_path, protocol):
    pred, gt, clips = folders
    out = tmp_path / "res" / "scores.json"
    code, stdout, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--protocol", protocol, "--out", out)
    assert code == 0, err
    assert "overall" in stdout and "bear" in stdout and "J&F" in stdout and "flicker" in stdout
    d = json.loads(out.read_text())
    assert d["protocol"] == protocol and set(d) == {"protocol", "overall", "sequences"}
    assert set(d["overall"]["J"]) == set(d["overall"]["F"]) == {"mean", "recall", "decay"}
    want = _expected(clips, protocol)
    for name, (jm, fm, fl) in want.items():
        s = d["sequences"][name]
        assert s["J"]["mean"] == pytest.approx(jm, abs=1e-12)
        assert s["F"]["mean"] == pytest.approx(fm, abs=1e-12)
        assert s["flicker"] == pytest.approx(fl, abs=1e-12)
        assert s["J&F"] == pytest.approx((jm + fm) / 2, abs=1e-12)
        assert s["frames"] == len(clips[name][1]) - (2 if protocol == "mvps" else 0)
    jm = np.mean([v[0] for v in want.values()])
    fm = np.mean([v[1] for v in want.values()])
    assert d["overall"]["J&F"] == pytest.approx((jm + fm) / 2, abs=1e-12)


def test_protocols_differ_and_arrays_agree(folders):
    pred, gt, clips = folders
    davis = evaluate(pred, gt, "davis")
    mvps = evaluate(pred, gt, "mvps")
    assert davis.JF != mvps.JF  # the 127-valued speckles are foreground only under mvps
    arrays = evaluate_arrays(clips, protocol="davis")
    assert arrays.to_dict() == davis.to_dict()
    assert evaluate_arrays(clips, protocol="mvps").to_dict() == mvps.to_dict()
    sub = evaluate(pred, gt, sequences=["cat"])
    assert list(sub.sequences) == ["cat"] and sub.JF == davis.sequences["cat"].JF


def test_csv_output(folders, capsys, tmp_path):
    pred, gt, _ = folders
    out = tmp_path / "scores.csv"
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert [r["sequence"] for r in rows] == ["bear", "cat", "overall"]
    assert rows[-1]["frames"] == str(T + 7)
    d = evaluate(pred, gt).to_dict()
    assert float(rows[0]["J_mean"]) == d["sequences"]["bear"]["J"]["mean"]
    assert float(rows[-1]["F_decay"]) == d["overall"]["F"]["decay"]


def test_label_and_01_masks_read_as_foreground(tmp_path):
    _, gt = _clip(3)
    g = gt >= 128
    _write(tmp_path / "gt", "s", gt)
    # prediction as 0/1 grayscale, as a palette image (index 1), and as RGB
    _write(tmp_path / "p01", "s", g.astype(np.uint8))
    d = tmp_path / "ppal" / "s"
    d.mkdir(parents=True)
    for i, f in enumerate(g):
        im = Image.fromarray(f.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
        im.save(d / f"{i:05d}.png")
    _write(tmp_path / "prgb", "s", np.stack([g * 128, g * 0, g * 0], axis=-1).astype(np.uint8))
    for root in ("p01", "ppal", "prgb"):
        r = evaluate(tmp_path / root, tmp_path / "gt")
        assert r.JF == 1.0 and r.flicker == 0.0, root


def test_binarize_rules():
    x = np.array([[[0, 1, 127, 128, 255]]], np.uint8)
    assert binarize(x, "davis").tolist() == [[[False, False, False, True, True]]]
    assert binarize(x, "mvps").tolist() == [[[False, True, True, True, True]]]
    assert binarize(np.array([[[0, 1, 1]]], np.uint8), "davis").tolist() == [[[False, True, True]]]
    assert binarize(np.array([[[0.2, 0.5, 0.0]]]), "davis").tolist() == [[[False, True, False]]]
    with pytest.raises(ValueError, match="0..255"):
        binarize(np.array([[[0, 300]]]), "davis")
    with pytest.raises(ValueError, match="unknown protocol"):
        binarize(x, "yt-vos")


# ---- bad input: one line naming the file, exit code 2, no traceback -------------------


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("pdnet evaluate: error: ")
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def test_missing_prediction_frame(folders, capsys):
    pred, gt, clips = folders
    missing = pred / "bear" / "00003.png"
    missing.unlink()
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, missing, "missing prediction frame")
    code, out, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--missing-as-empty")
    assert code == 0, err
    r = evaluate(pred, gt, missing_as_empty=True)
    assert r.sequences["bear"].j_frames[3] == 0.0  # scored as an empty mask
    # mvps skips the last frame of a clip, so its prediction may be missing
    (pred / "cat" / "00006.png").unlink()
    evaluate(pred, gt, "mvps", missing_as_empty=True)


def test_size_mismatch(folders, capsys):
    pred, gt, _ = folders
    bad = pred / "cat" / "00002.png"
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(bad)
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, bad, f"{W + 1}x{H}", f"{W}x{H}")


def test_truncated_and_unreadable_png(folders, capsys):
    pred, gt, _ = folders
    bad = pred / "bear" / "00001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, bad, "truncated")
    bad.write_bytes(b"this is not a png")
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, bad, "not an image file")
    # detected even when someone switched Pillow's lenient mode on
    from PIL import ImageFile

    bad.write_bytes(data[: len(data) // 2])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(EvaluationError, match="truncated"):
            evaluate(pred, gt)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_unsupported_png_mode(folders, capsys):
    pred, gt, _ = folders
    bad = pred / "bear" / "00000.png"
    Image.fromarray(np.zeros((H, W), np.uint16) + 300).save(bad)
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, bad, "unsupported PNG mode")


def test_empty_folders(folders, capsys, tmp_path):
    pred, gt, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "--pred", empty, "--gt", gt)
    assert_one_line_error(code, err, empty, "empty")
    for f in (pred / "cat").iterdir():
        f.unlink()
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, pred / "cat", "empty")
    for f in (gt / "cat").iterdir():
        f.unlink()
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, gt / "cat", "empty")
    code, _, err = run_cli(capsys, "--pred", tmp_path / "nope", "--gt", gt)
    assert_one_line_error(code, err, tmp_path / "nope", "does not exist")


def test_sequence_in_one_folder_only(folders, capsys):
    pred, gt, clips = folders
    _write(pred, "dog", clips["bear"][0])
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, "dog", gt / "dog", "in the predictions but")
    _write(gt, "dog", clips["bear"][1])
    _write(gt, "emu", clips["bear"][1])
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt)
    assert_one_line_error(code, err, "emu", pred / "emu", "in the ground truth but")
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--sequences", "bear,dog")
    assert code == 0, err
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--sequences", "yak")
    assert_one_line_error(code, err, "yak", gt / "yak")


def test_bad_options_and_short_clips(folders, capsys, tmp_path):
    pred, gt, _ = folders
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--out", tmp_path / "x.txt")
    assert_one_line_error(code, err, "x.txt", ".json or .csv")
    _write(pred, "fox", _clip(5, t=2)[0])
    _write(gt, "fox", _clip(5, t=2)[1])
    code, _, err = run_cli(capsys, "--pred", pred, "--gt", gt, "--protocol", "mvps")
    assert_one_line_error(code, err, "fox", "2 frame(s)")
    with pytest.raises(EvaluationError, match="same shape"):
        evaluate_arrays({"a": (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))})
