"""Training hardening: non-finite losses stop the run (or are skipped) keeping the last
finite checkpoint; non-finite weights are never saved."""
import json

import pytest
import torch
from test_train import synth_data, tiny_cfg  # noqa: F401 - the fixture is used by name
from train_fixtures import no_fsync, one_thread  # noqa: F401 - autouse fixtures
from train_helpers import TINY, run_cli, sets

import pdnet.losses
from pdnet.inference import read_checkpoint
from pdnet.train import NonFiniteLoss, Trainer, TrainError


def poison(monkeypatch, calls, image=False):
    """Make the video (or image) step loss NaN on the given 1-based calls."""
    name = "image_step_loss" if image else "video_step_loss"
    real = getattr(pdnet.losses, name)
    count = {"n": 0}

    def loss(*args, **kwargs):
        count["n"] += 1
        terms = dict(real(*args, **kwargs))
        if calls == "all" or count["n"] in calls:
            key = next(k for k in terms if k != "total")
            terms[key] = terms[key] * float("nan")
            terms["total"] = terms["total"] + terms[key]
        return terms

    monkeypatch.setattr(pdnet.losses, name, loss)


@pytest.mark.slow  # end to end: several steps and checkpoints
def test_nonfinite_loss_stops_the_run_keeping_the_last_finite_checkpoint(synth_data, tmp_path, capsys, monkeypatch):  # noqa: F811
    # steps: 1 image, 2 video, 3 video, 4 image ...: the 2nd video loss is step 3
    poison(monkeypatch, {2})
    run = tmp_path / "run"
    code, err = run_cli(["train", "--out", str(run), "--data", str(synth_data), "--max-steps", "6"]
                        + sets(TINY + ["log.checkpoint_every=1"]), capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "step 3 (video step): the loss is not finite (video.pred" in err and "=nan" in err, err
    assert f"{run / 'last.pt'} holds step 2" in err, err
    ckpt = read_checkpoint(run / "last.pt")  # verifies: finite, checksum
    assert ckpt["step"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_nonfinite_loss_is_stopped_even_between_log_lines(synth_data, tmp_path, monkeypatch):  # noqa: F811
    poison(monkeypatch, {1})  # step 2
    t = Trainer(tiny_cfg(synth_data, **{"log.every": 1000, "log.checkpoint_every": 1}), tmp_path / "r")
    with pytest.raises(NonFiniteLoss, match="step 2 \\(video step\\)"):
        t.fit(4)
    assert read_checkpoint(tmp_path / "r" / "last.pt")["step"] == 1


@pytest.mark.slow  # end to end: several steps and checkpoints
def test_nonfinite_skip_makes_no_update_and_counts(synth_data, tmp_path, monkeypatch):  # noqa: F811
    poison(monkeypatch, {1, 2})  # steps 2 and 3
    messages = []
    t = Trainer(tiny_cfg(synth_data, **{"train.nonfinite": "skip"}), tmp_path / "r", echo=messages.append)
    t.fit(1)
    before = {k: v.clone() for k, v in t.module.state_dict().items()}
    momentum = [t.optimizer.state[p]["momentum_buffer"].clone() for p in t.module.parameters()
                if p in t.optimizer.state]
    t.fit(2)  # step 2: skipped
    after = t.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the weights"
    assert all(torch.equal(m, t.optimizer.state[p]["momentum_buffer"])
               for m, p in zip(momentum, [p for p in t.module.parameters() if p in t.optimizer.state], strict=True))
    result = t.fit(4)
    assert result["skipped_steps"] == 2 and result["step"] == 4
    assert [m.split(":")[0] for m in messages if "skipped" in m] == ["step 2", "step 3"]
    assert "2 in a row" in messages[-1]
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["skipped_steps"] == 2 and all(v == v for line in lines for v in line.values())
    ckpt = read_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["nonfinite_skipped"] == 2
    resumed = Trainer(tiny_cfg(synth_data, **{"train.nonfinite": "skip"}), tmp_path / "r", resume=True)
    assert resumed.skipped_steps == 2


def test_nonfinite_skip_gives_up_after_max_skips_in_a_row(synth_data, tmp_path, monkeypatch):  # noqa: F811
    poison(monkeypatch, "all")
    poison(monkeypatch, "all", image=True)
    t = Trainer(tiny_cfg(synth_data, **{"train.nonfinite": "skip", "train.max_skips": 2}), tmp_path / "r",
                echo=lambda m: None)
    with pytest.raises(NonFiniteLoss,
                       match="step 2: the loss was not finite for 2 steps in a row .*no checkpoint was written"):
        t.fit(4)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_nonfinite_weights_with_a_finite_loss_are_never_saved(synth_data, tmp_path):  # noqa: F811
    t = Trainer(tiny_cfg(synth_data), tmp_path / "r")
    t.fit(1)
    with torch.no_grad():
        t.model.head.weight.fill_(float("inf"))
    with pytest.raises(TrainError, match="step 1: refusing to write checkpoint "
                                         ".*tensor model/head.weight holds NaN or inf.*holds step 1"):
        t.save()
    assert read_checkpoint(tmp_path / "r" / "last.pt")["step"] == 1


def test_no_steps_report_no_checkpoint(synth_data, tmp_path):  # noqa: F811
    result = Trainer(tiny_cfg(synth_data), tmp_path / "r").fit(0)
    assert result["step"] == 0 and result["checkpoint"] is None and not (tmp_path / "r" / "last.pt").exists()
