"""Checkpoint integrity and interrupted / failed writes (pdnet.inference.checkpoint)."""
import os
import signal
import time

import pytest
import torch
from io_faults import FailingFile, enospc

import pdnet
from pdnet.inference import CheckpointError, load, read_checkpoint, save_model_checkpoint
from pdnet.inference import checkpoint as ck


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """fsync costs seconds on a busy disk and is not what these tests check."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=2, input_size=(64, 64))).eval()


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def flip_byte_inside(path, tensor: torch.Tensor, offset: int = 100) -> None:
    """Flip one byte of ``tensor``'s stored data inside the file at ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:256])
    assert at > 0, "tensor bytes not found in the file"
    data[at + offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_checkpoint_carries_a_checksum_of_every_tensor(model, tmp_path):
    path = save_model_checkpoint(tmp_path / "a.pt", model, {"optimizer": {"state": {0: {"buf": torch.ones(3)}}}})
    raw = read_checkpoint(path)
    assert raw["checksum"]["algorithm"] == "crc32"
    names = set(raw["checksum"]["tensors"])
    assert {f"model/{k}" for k in model.state_dict()} | {"optimizer/state/0/buf"} == names


def test_flipped_byte_inside_a_tensor_is_refused_naming_file_and_tensor(model, tmp_path):
    path = save_model_checkpoint(tmp_path / "flip.pt", model)
    name = "encoder.layer4.0.conv1.weight"
    flip_byte_inside(path, model.state_dict()[name])
    with pytest.raises(CheckpointError) as info:
        load(path)
    msg = str(info.value)
    assert "flip.pt is damaged" in msg and f"model/{name}" in msg and "\n" not in msg


def test_nan_or_inf_weights_are_refused_in_every_kind_of_file(model, tmp_path):
    good = save_model_checkpoint(tmp_path / "good.pt", model)
    obj = read_checkpoint(good)
    name = "head.weight"
    # an engine file whose checksum was computed over the NaN (bytes intact, weights bad)
    obj["model"][name] = obj["model"][name].clone().fill_(float("nan"))
    obj["checksum"] = ck.checksum({k: v for k, v in obj.items() if k != "checksum"})
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=f"nan.pt: tensor model/{name} holds NaN or inf"):
        load(tmp_path / "nan.pt")
    # a release-style bare state_dict (no checksum)
    sd = pdnet.to_release_state_dict(model)
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 10)
    sd[key] = sd[key].clone()
    sd[key].view(-1)[7] = float("inf")
    torch.save(sd, tmp_path / "release_inf.pth")
    with pytest.raises(CheckpointError, match=f"release_inf.pth: tensor {key} holds NaN or inf"):
        load(tmp_path / "release_inf.pth")
    # an already loaded dict
    with pytest.raises(CheckpointError, match="holds NaN or inf"):
        load(obj)


def test_large_finite_values_are_not_mistaken_for_inf():
    big = torch.full((1000,), 3e38)  # the sum overflows; the values are finite
    assert ck.first_nonfinite({"w": big}) is None
    assert ck.first_nonfinite({"w": big, "x": {"y": torch.tensor([1.0, float("-inf")])}}) == "x/y"


def test_files_without_checksum_still_load(model, tmp_path):
    path = save_model_checkpoint(tmp_path / "old.pt", model)
    obj = read_checkpoint(path)
    del obj["checksum"]  # as written by the engine before checksums
    torch.save(obj, tmp_path / "old.pt")
    assert isinstance(load(tmp_path / "old.pt"), pdnet.PDNet)


def test_unknown_checksum_algorithm_is_refused(model, tmp_path):
    obj = read_checkpoint(save_model_checkpoint(tmp_path / "x.pt", model))
    obj["checksum"]["algorithm"] = "sha3"
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="x.pt: unknown checksum entry"):
        read_checkpoint(tmp_path / "x.pt")


def test_saving_nan_weights_is_refused_and_writes_nothing(tmp_path):
    net = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet18", parts=2, input_size=(64, 64)))
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="refusing to write .*n.pt: tensor model/head.bias holds NaN"):
        save_model_checkpoint(tmp_path / "n.pt", net)
    assert list(tmp_path.iterdir()) == []


def patch_fdopen(monkeypatch, at, action):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FailingFile(real(fd, mode), at, action))


def test_disk_full_during_write_is_one_line_error_and_keeps_the_previous_file(model, tmp_path, monkeypatch):
    path = save_model_checkpoint(tmp_path / "last.pt", model, {"step": 1})
    before = path.read_bytes()
    patch_fdopen(monkeypatch, 3, enospc)
    with pytest.raises(CheckpointError) as info:
        save_model_checkpoint(path, model, {"step": 2})
    msg = str(info.value)
    assert f"cannot write checkpoint {path}: No space left on device; {path} is unchanged" == msg
    assert path.read_bytes() == before and temporaries(tmp_path) == []


def test_disk_full_at_fsync_is_reported_too(model, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: enospc())
    with pytest.raises(CheckpointError, match="new.pt: No space left on device; .*new.pt was not created"):
        save_model_checkpoint(tmp_path / "new.pt", model)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_write_is_deferred_until_the_file_is_complete(model, tmp_path, monkeypatch):
    """Without deferral, the KeyboardInterrupt raised inside torch.save's writer comes out
    as an opaque RuntimeError (a traceback, not "interrupted")."""
    path = save_model_checkpoint(tmp_path / "last.pt", model, {"step": 1})
    patch_fdopen(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        save_model_checkpoint(path, model, {"step": 2})
    assert read_checkpoint(path)["step"] == 2  # the write finished before the interrupt
    assert temporaries(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_during_write_reaches_its_handler_after_the_write(model, tmp_path, monkeypatch):
    seen = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append((signum, (tmp_path / "t.pt").exists())))
    try:
        patch_fdopen(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
        save_model_checkpoint(tmp_path / "t.pt", model)
        time.sleep(0)  # let a pending handler run
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [(signal.SIGTERM, True)]
    read_checkpoint(tmp_path / "t.pt")
