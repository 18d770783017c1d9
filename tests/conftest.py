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


#: tests that take more than ~10 s on 2 loaded CPU cores, marked slow here as well as by
#: @pytest.mark.slow in their files, so that the default run (`make test`) stays a few
#: minutes; CI runs them next (`.ci/run`: pytest --runslow -m slow). "file::test" marks
#: every parametrisation, "file::test[id]" one. Measured with --durations (load 5-7 on
#: 2 cores, 2026-12-03); a test made fast again leaves this list.
SLOW_TESTS = frozenset({
    "test_model.py::test_gradients_reach_every_trainable_parameter",
    "test_model.py::test_train_one_step[1]",
    "test_segment_hardening.py::test_allow_truncated_keeps_the_decoded_frames_with_a_warning",
    "test_segment_hardening.py::test_rerun_into_existing_masks_needs_overwrite",
    "test_segment_hardening.py::test_stale_temporaries_of_a_killed_run_are_removed",
    "test_segment_hardening.py::test_truncated_video_is_an_error_naming_the_last_good_frame[clip.mkv]",
    "test_train.py::test_resume_gives_exactly_the_weights_of_an_uninterrupted_run",
    "test_train_ddp.py::test_two_ranks_stay_in_step_and_resume",
    "test_train_hardening.py::test_ctrl_c_during_a_checkpoint_write_ends_interrupted_with_last_pt_complete",
    "test_train_hardening.py::test_disk_full_during_a_checkpoint_write_is_one_line_error",
    "test_train_hardening.py::test_nonfinite_loss_is_stopped_even_between_log_lines",
    "test_train_hardening.py::test_nonfinite_loss_stops_the_run_keeping_the_last_finite_checkpoint",
    "test_train_hardening.py::test_nonfinite_skip_makes_no_update_and_counts",
    "test_train_hardening.py::test_nonfinite_weights_with_a_finite_loss_are_never_saved",
    "test_train_hardening.py::test_second_signal_stops_at_once_keeping_the_previous_checkpoint",
    "test_train_hardening.py::test_signal_checkpoints_at_the_step_boundary_then_exits",
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
