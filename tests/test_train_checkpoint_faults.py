"""Training hardening: signals (Ctrl-C, SIGTERM) checkpoint at the step boundary, Ctrl-C and
disk full while checkpointing, stale temporaries, a damaged checkpoint on resume."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from io_faults import FailingFile, enospc
from test_train import synth_data, tiny_cfg  # noqa: F401 - the fixture is used by name
from train_fixtures import no_fsync, one_thread  # noqa: F401 - autouse fixtures
from train_helpers import TINY, assert_one_line_error, run_cli, sets

import pdnet.losses
from pdnet.inference import checkpoint as ck
from pdnet.inference import read_checkpoint
from pdnet.train import Trainer, TrainInterrupted
from pdnet.train.checkpointing import remove_stale_temporaries


def signal_at(monkeypatch, calls, signum):
    real = pdnet.losses.video_step_loss
    count = {"n": 0}

    def loss(*args, **kwargs):
        count["n"] += 1
        if count["n"] in calls:
            signal.raise_signal(signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(pdnet.losses, "video_step_loss", loss)


@pytest.mark.slow  # end to end: several steps and checkpoints
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_at_the_step_boundary_then_exits(synth_data, tmp_path, capsys, monkeypatch, signum, code):  # noqa: F811
    signal_at(monkeypatch, {1}, signum)  # during step 2
    run = tmp_path / "run"
    got, err = run_cli(["train", "--out", str(run), "--data", str(synth_data), "--max-steps", "6"] + sets(TINY), capsys)
    name = signal.Signals(signum).name
    assert got == code, err
    assert err.startswith(f"pdnet train: {'interrupted' if code == 130 else 'terminated'} ({name}) after step 2; ")
    assert f"{run / 'last.pt'} holds step 2; continue with: pdnet train --resume {run}" in err
    assert read_checkpoint(run / "last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_second_signal_stops_at_once_keeping_the_previous_checkpoint(synth_data, tmp_path, monkeypatch):  # noqa: F811
    real = pdnet.losses.video_step_loss
    count = {"n": 0}

    def loss(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 1:  # step 2
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(pdnet.losses, "video_step_loss", loss)
    t = Trainer(tiny_cfg(synth_data, **{"log.checkpoint_every": 1}), tmp_path / "r")
    with pytest.raises(TrainInterrupted, match="at once .*holds step 1"):
        t.fit(4)
    assert read_checkpoint(tmp_path / "r" / "last.pt")["step"] == 1


def fail_checkpoint_writes(monkeypatch, action, after: int):
    """The ``after``-th checkpoint file written runs ``action`` mid-write."""
    real = os.fdopen
    count = {"n": 0}

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        if "b" not in mode:
            return f
        count["n"] += 1
        return FailingFile(f, 3, action) if count["n"] == after else f

    monkeypatch.setattr(ck.os, "fdopen", fdopen)


@pytest.mark.slow  # end to end: several steps and checkpoints
def test_ctrl_c_during_a_checkpoint_write_ends_interrupted_with_last_pt_complete(
        synth_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    fail_checkpoint_writes(monkeypatch, lambda: signal.raise_signal(signal.SIGINT), after=2)  # the step-2 checkpoint
    run = tmp_path / "run"
    code, err = run_cli(["train", "--out", str(run), "--data", str(synth_data), "--max-steps", "6"]
                        + sets(TINY + ["log.checkpoint_every=1"]), capsys)
    assert code == 130 and "interrupted (SIGINT) after step 2" in err and "Traceback" not in err, err
    assert read_checkpoint(run / "last.pt")["step"] == 2
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow  # end to end: several steps and checkpoints
def test_disk_full_during_a_checkpoint_write_is_one_line_error(synth_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    fail_checkpoint_writes(monkeypatch, enospc, after=2)
    run = tmp_path / "run"
    code, err = run_cli(["train", "--out", str(run), "--data", str(synth_data), "--max-steps", "6"]
                        + sets(TINY + ["log.checkpoint_every=1"]), capsys)
    last = run / "last.pt"
    assert_one_line_error(code, err, f"step 2: cannot write checkpoint {last}: No space left on device; "
                                     f"{last} is unchanged; {last} holds step 1")
    assert read_checkpoint(last)["step"] == 1
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_temporaries_are_removed_when_a_run_starts(synth_data, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    Trainer(tiny_cfg(synth_data), run).fit(1)
    stale = [run / ".last.pt.k2j3h4_x.tmp", run / ".config.yaml.tmp", run / ".config.yaml.abc123.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * (1 << 20))
    keep = [run / "notes.tmp", run / ".other.pt.x.tmp", run / "last.pt"]
    for p in keep[:2]:
        p.write_text("mine")
    messages = []
    Trainer(tiny_cfg(synth_data), run, resume=True, echo=messages.append)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)
    assert any("removed 3 temporary file(s) (3.0 MiB)" in m for m in messages), messages
    assert remove_stale_temporaries(tmp_path / "nothing-here") == []


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, workers", [(signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 0)])
def test_signal_to_a_training_process(synth_data, tmp_path, signum, code, workers):  # noqa: F811
    """A real process: the signal arrives whenever it does; the run ends with a
    complete checkpoint at the step it had reached and the signal's exit code. SIGINT
    goes to the whole process group, DataLoader workers included, as Ctrl-C does."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "pdnet", "train", "--out", str(run), "--data", str(synth_data)] + sets(
        TINY + ["train.epochs=50", f"data.workers={workers}"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_thread
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.1)
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("pdnet train: "), err
    step = read_checkpoint(run / "last.pt")["step"]
    assert f"holds step {step}; continue with" in err
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_resume_verifies_the_checkpoint(synth_data, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    t = Trainer(tiny_cfg(synth_data), run)
    t.fit(1)
    weight = t.model.state_dict()["encoder.layer4.1.conv2.weight"]
    data = bytearray((run / "last.pt").read_bytes())
    stored = torch.empty(0, dtype=torch.uint8).set_(weight.untyped_storage())  # channels_last: as stored
    at = data.find(stored.numpy().tobytes()[:256])
    assert at > 0
    data[at + 1000] ^= 0x01  # one flipped bit inside the tensor
    (run / "last.pt").write_bytes(bytes(data))
    code, err = run_cli(["train", "--resume", str(run), "--data", str(synth_data)], capsys)
    assert_one_line_error(code, err, f"cannot resume from {run / 'last.pt'}: checkpoint {run / 'last.pt'} is damaged: "
                                     "tensor model/encoder.layer4.1.conv2.weight does not match its checksum")
