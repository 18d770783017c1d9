"""``pdnet segment`` hardening: truncated videos are an error naming the last good frame (or,
with --allow-truncated, a warning); which containers' frame counts can be checked."""
from pathlib import Path

import pytest
from segment_helpers import VIDEO_FRAMES, one_line_error, segment, write_video

from pdnet.inference import FrameSource, SourceError
from pdnet.inference.video import TruncatedVideoWarning

pytest.importorskip("av")

def truncate(src, dst, fraction):
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


def good_frames(path):
    """The number of frames a video decodes to before it ends (early)."""
    with pytest.warns(TruncatedVideoWarning):
        return len(list(FrameSource(path, allow_truncated=True)))


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_truncated_video_is_an_error_naming_the_last_good_frame(assets, tmp_path, capsys, quick_load, name):
    root, _ = assets
    cut = truncate(root / name, tmp_path / f"cut{Path(name).suffix}", 0.6)
    good = good_frames(cut)
    assert 0 < good < VIDEO_FRAMES
    out = tmp_path / "out"
    err = one_line_error(capsys, str(cut), "--checkpoint", str(root / "tiny.pt"), "--out", str(out))
    assert str(cut) in err and f"last good frame {good - 1}" in err and f"{good} of {VIDEO_FRAMES} frames" in err
    assert "--allow-truncated" in err
    assert not out.exists()  # the masks of the good frames were removed with the folder this run created


def test_allow_truncated_keeps_the_decoded_frames_with_a_warning(assets, tmp_path, capsys, quick_load):
    root, _ = assets
    cut = truncate(root / "clip.mkv", tmp_path / "cut.mkv", 0.6)
    good = good_frames(cut)
    out = tmp_path / "out"
    rc, lines = segment(capsys, str(cut), "--checkpoint", str(root / "tiny.pt"), "--out", str(out),
                        "--allow-truncated")
    assert rc == 0 and len(lines) == 1 and lines[0].startswith(f"pdnet segment: warning: {cut}: the video ends early")
    assert f"last good frame {good - 1}" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(good)]


@pytest.mark.parametrize("options,suffix", [({"movflags": "faststart"}, ".mp4"), ({}, ".mkv"), ({}, ".avi"),
                                            ({"movflags": "frag_keyframe+empty_moov"}, ".mp4"), ({}, ".mov")])
def test_complete_videos_pass_the_frame_count_check(tmp_path, options, suffix):
    path = tmp_path / f"v{suffix}"
    write_video(path, n=7, size=32, options=options)
    src = FrameSource(path)
    assert src.num_frames == 7 and src.count_rule
    assert len(list(src)) == 7 and src.truncated is None


def test_frame_count_from_the_duration_when_the_header_has_none(tmp_path):
    """Fragmented mp4 and Matroska files give no frame count: duration x rate is the rule."""
    frag = tmp_path / "frag.mp4"
    write_video(frag, options={"movflags": "frag_keyframe+empty_moov"})
    for path in (frag,):
        src = FrameSource(truncate(path, tmp_path / "cut.mp4", 0.6))
        assert src.num_frames == VIDEO_FRAMES and "duration" in src.count_rule
        with pytest.raises(SourceError, match=r"cut\.mp4: the video ends early \(\d+ of 20 frames decoded, "
                                              r"the stream's duration 2\.000 s x 10 fps; last good frame \d+\)"):
            list(src)


def test_mpeg_ts_is_not_checked(tmp_path):
    """MPEG-TS records no length: its duration comes from the data present, so it is not checked."""
    path = tmp_path / "v.ts"
    write_video(path, n=10, size=32)
    cut = FrameSource(truncate(path, tmp_path / "cut.ts", 0.5))
    assert cut.num_frames is None and cut.count_rule is None
    assert 0 < len(list(cut)) < 10
