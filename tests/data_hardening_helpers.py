"""Helpers of the hardening tests of the data pipeline, the evaluation reader and ``pdnet synth`` /
``pdnet evaluate`` (tests/test_data_masks.py, test_data_lists.py, test_data_errors.py,
test_synth_evaluate_flags.py): tiny frames, box masks, DAVIS-layout trees, the CLI in-process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

H, W = 24, 32


def _box(t: int = 0) -> np.ndarray:
    """bool [H, W]: a box that moves with t."""
    m = np.zeros((H, W), bool)
    m[4 + t : 14 + t, 6 + 2 * t : 20 + 2 * t] = True
    return m


def _save(path: Path, im: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _frame(path: Path, t: int = 0) -> Path:
    rng = np.random.default_rng(t)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return _save(path, Image.fromarray(img))


def _davis(root: Path, masks, seq="s"):
    for t, m in enumerate(masks):
        _frame(root / "JPEGImages/480p" / seq / f"{t:05d}.jpg", t)
        _save(root / "Annotations/480p" / seq / f"{t:05d}.png", m)
    (root / "ImageSets/2016").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/2016/train.txt").write_text(seq + "\n")
    return root


def _cli(argv):
    """``pdnet.cli.main(argv)`` in-process: (exit code, stderr text)."""
    import contextlib
    import io

    from pdnet.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's (one-line) errors
            code = exc.code
    return code, err.getvalue()
