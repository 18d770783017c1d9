import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (release_fixture, io_faults)

# Without a GPU the Triton kernels (pdnet.kernels) run in Triton's CPU interpreter, so that
# their tests run in CI; Triton reads this when the kernels are defined, i.e. before pdnet is
# imported by any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run the tests marked slow")
    parser.addoption(
        "--machine",
        action="store_true",
        default=False,
        help="also run the tests marked machine (their result depends on this machine)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    skips = {
        "slow": (not config.getoption("--runslow"), "slow: run with --runslow"),
        "machine": (not config.getoption("--machine"), "depends on this machine: run with --machine"),
        "cuda": (not torch.cuda.is_available(), "needs a CUDA device"),
    }
    for item in items:
        for marker, (skip, reason) in skips.items():
            if skip and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def davis(tmp_path):
    """A DAVIS-layout tree of two 3-frame sequences, bear and dog (tests/data_helpers.py)."""
    from data_helpers import make_davis

    return make_davis(tmp_path / "davis")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """``pdnet segment``'s inputs (tests/test_segment_*.py, helpers in segment_helpers.py):
    (folder with frames/, tiny.pt, clip.mp4 and clip.mkv; the tiny model)."""
    import numpy as np
    from PIL import Image
    from segment_helpers import N_FRAMES, write_video

    import pdnet
    from pdnet.inference import save_model_checkpoint

    root = tmp_path_factory.mktemp("hardening")
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(N_FRAMES):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=2, input_size=(64, 64))).eval()
    save_model_checkpoint(root / "tiny.pt", model)
    write_video(root / "clip.mp4", options={"movflags": "faststart"})  # the index first: a cut file still opens
    write_video(root / "clip.mkv")
    return root, model


@pytest.fixture
def quick_load(assets, monkeypatch):
    """``pdnet segment`` gets a copy of the tiny model instead of reading and verifying tiny.pt on every run."""
    import copy

    from pdnet.inference import loading

    root, model = assets
    real = loading.load

    def load(path, *a, **k):
        return copy.deepcopy(model) if Path(path) == root / "tiny.pt" else real(path, *a, **k)

    monkeypatch.setattr(loading, "load", load)
