"""Helpers of the ``pdnet segment`` hardening tests (tests/test_segment_*.py; their fixtures
``assets`` and ``quick_load`` are in conftest.py): videos, folder snapshots, the CLI in-process."""
from pathlib import Path

import numpy as np

from pdnet.cli import main

N_FRAMES = 4
VIDEO_FRAMES = 20


def write_video(path, n=VIDEO_FRAMES, size=64, options=None):
    """n frames size x size, H.264 at 10 fps, written with PyAV (``options``: muxer options)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def snapshot(folder):
    """{relative path: bytes} of every file under folder (hidden ones too)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def segment(capsys, *argv):
    """Run ``pdnet segment`` in-process (on the CPU unless argv names a device): (exit code, stderr lines)."""
    device = [] if "--device" in argv else ["--device", "cpu"]
    rc = main(["segment", *argv, *device, "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()


def one_line_error(capsys, *argv):
    rc, lines = segment(capsys, *argv)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("pdnet segment: error: "), lines
    return lines[0]
