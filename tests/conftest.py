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
