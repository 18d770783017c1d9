"""The autouse fixtures of the training hardening tests (tests/test_train_*.py): each of those
modules imports them, so that they apply to its tests (and to no others)."""
import pytest
import torch

from pdnet.inference import checkpoint as ck


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """fsync costs seconds on a busy disk and is not what these tests check."""
    monkeypatch.setattr(ck.os, "fsync", lambda fd: None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny steps: a second intra-op thread gains nothing and, on a loaded 2-core
    machine, its barrier waits made some of these tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
