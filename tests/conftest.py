import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (release_fixture, ...)

# Without a GPU the Triton kernels (pdnet.kernels) run in Triton's CPU interpreter, so that
# their tests run in CI; Triton reads this when the kernels are defined, i.e. before pdnet is
# imported by any test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


#: tests that take more than ~5 s on 2 idle CPU cores, marked slow here (their files do
#: not), so that the default run (`make test`) stays short; CI runs them next
#: (`.ci/run`: pytest --runslow -m slow). "file::test" marks every parametrisation,
#: "file::test[id]" one. Measured with --durations on a fresh clone (2026-12-03: the
#: default run 95 s; these 15 s and 9 s); a test made fast leaves this list.
SLOW_TESTS = frozenset({
    "test_train_ddp.py::test_two_ranks_stay_in_step_and_resume",
    "test_triton_compile.py::test_compile_fullgraph_matches_eager",
})


def _listed_slow(item) -> bool:
    name = f"{Path(str(item.fspath)).name}::{item.name}"
    return name in SLOW_TESTS or name.split("[", 1)[0] in SLOW_TESTS


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if _listed_slow(item) and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
