"""Training hardening: every config key and flag checked up front, non-finite losses,
signals, stale temporaries, disk full while checkpointing."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from io_faults import FailingFile, enospc
from test_train import synth_data, tiny_cfg  # noqa: F401 - the fixture is used by name

import pdnet.losses
from pdnet.cli import main
from pdnet.inference import checkpoint as ck
from pdnet.inference import read_checkpoint
from pdnet.train import NonFiniteLoss, Trainer, TrainError, TrainInterrupted, load_config
from pdnet.train import cli as train_cli
from pdnet.train import config as C
from pdnet.train.checkpointing import remove_stale_temporaries

TINY = [
    "model.backbone=resnet18", "model.parts=2", "model.imagenet=null", "data.size=64", "data.workers=0",
    "train.batch_size=2", "train.epochs=2", "train.lr=0.01", "train.amp=off", "train.semantic_features=null",
    "log.every=1", "log.checkpoint_every=2", "log.val_every=null", "log.tensorboard=false", "log.progress=false",
]


def sets(items):
    return [a for item in items for a in ("--set", item)]


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


# ----------------------------------------------------------------------------- the sweep

#: (--set item, what the one-line error must contain): every config key, bad values
BAD_SETTINGS = [
    ("model.backbone=resnet9", "model.backbone must be one of resnet18, resnet34, resnet50, resnet101, got 'resnet9'"),
    ("model.parts=0", "model.parts must be an integer in 1..8, got 0"),
    ("model.parts=9", "model.parts must be an integer in 1..8, got 9"),
    ("model.parts=2.5", "model.parts must be an integer in 1..8, got 2.5"),
    ("model.attention_scale=.nan", "model.attention_scale must be a finite number > 0, got nan"),
    ("model.attention_scale=0", "model.attention_scale must be a finite number > 0, got 0"),
    ("model.ipda_stride=0", "model.ipda_stride must be an integer >= 1, got 0"),
    ("model.loss_variant=paper2", "model.loss_variant must be one of release, paper, got 'paper2'"),
    ("model.ops_backend=bogus",
     "model.ops_backend must be one of auto, reference, triton, cpp, cuda, torch, got 'bogus'"),
    ("model.imagenet=/no/such/resnet18.pth",
     "model.imagenet must be an existing weights file, cache or null (no such file), got '/no/such/resnet18.pth'"),
    ("model.imagenet=5", "model.imagenet must be a weights file, cache or null, got 5"),
    ("data.video=5", "data.video must be a list of {kind, root[, split]} mappings"),
    ("data.video=[{kind: nope, root: /x}]",
     "data.video must be a list of {kind, root[, split]} mappings, kind one of auto, davis"),
    ("data.image=[{root: 3}]", "data.image must be a list of {kind, root[, split]} mappings"),
    ("data.size=100", "data.size must be an int or [H, W], multiples of 32, got 100"),
    ("data.size=[64]", "data.size must be an int or [H, W], multiples of 32, got [64]"),
    ("data.size=true", "data.size must be an int or [H, W], multiples of 32, got True"),
    ("data.workers=-1", "data.workers must be an integer >= 0, got -1"),
    ("data.output=half", "data.output must be one of uint8, float, raw, got 'half'"),
    ("data.val_split=", "data.val_split must be a non-empty string, got None"),
    ("data.skip_bad=maybe", "data.skip_bad must be true or false, got 'maybe'"),
    ("data.seed=-1", "data.seed must be an integer in 0..2147483647, got -1"),
    ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be an integer >= 1, got 0"),
    ("train.batch_size=true", "train.batch_size must be an integer >= 1, got True"),
    ("train.lr=.nan", "train.lr must be a finite number > 0, got nan"),
    ("train.lr=.inf", "train.lr must be a finite number > 0, got inf"),
    ("train.lr=-1e-3", "train.lr must be a finite number > 0, got '-1e-3'"),
    ("train.lr=0", "train.lr must be a finite number > 0, got 0"),
    ("train.momentum=abc", "train.momentum must be a finite number in [0, 1), got 'abc'"),
    ("train.momentum=1", "train.momentum must be a finite number in [0, 1), got 1"),
    ("train.momentum=-0.1", "train.momentum must be a finite number in [0, 1), got -0.1"),
    ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0, got -1"),
    ("train.weight_decay=.inf", "train.weight_decay must be a finite number >= 0, got inf"),
    ("train.poly_power=.nan", "train.poly_power must be a finite number >= 0, got nan"),
    ("train.halve_lr_from_epoch=-1", "train.halve_lr_from_epoch must be an integer >= 0 or null, got -1"),
    ("train.image_every=-1", "train.image_every must be an integer >= 0, got -1"),
    ("train.video_backbone_lr=.nan", "train.video_backbone_lr must be a finite number >= 0, got nan"),
    ("train.video_head_lr=-1", "train.video_head_lr must be a finite number >= 0, got -1"),
    ("train.image_head_lr=.inf", "train.image_head_lr must be a finite number >= 0, got inf"),
    ("train.amp=fp8", "train.amp must be one of auto, bf16, fp16, off, got 'fp8'"),
    ("train.channels_last=maybe", "train.channels_last must be true or false, got 'maybe'"),
    ("train.keep_freed_memory=sometimes", "train.keep_freed_memory must be true or false, got 'sometimes'"),
    ("train.compile=2", "train.compile must be true or false, got 2"),
    ("train.seed=-5", "train.seed must be an integer in 0..2147483647, got -5"),
    ("train.semantic_features=/no/such/r18.pth", "train.semantic_features must be an existing weights file"),
    ("train.semantic_impl=sparse", "train.semantic_impl must be one of factored, dense, got 'sparse'"),
    ("train.nonfinite=ignore", "train.nonfinite must be one of stop, skip, got 'ignore'"),
    ("train.max_skips=0", "train.max_skips must be an integer >= 1, got 0"),
    ("log.every=0", "log.every must be an integer >= 1, got 0"),
    ("log.checkpoint_every=0", "log.checkpoint_every must be an integer >= 1, got 0"),
    ("log.val_every=-1", "log.val_every must be an integer >= 0 or null, got -1"),
    ("log.val_clips=-1", "log.val_clips must be an integer >= 0, got -1"),
    ("log.tensorboard=maybe", "log.tensorboard must be true or false, got 'maybe'"),
    ("log.progress=2", "log.progress must be true or false, got 2"),
    # keys and sections that do not exist
    ("train.lrr=1", "unknown key train.lrr (did you mean train.lr?)"),
    ("train.size=64", "unknown key train.size (did you mean data.size?)"),
    ("optim.lr=1", "unknown section 'optim'"),
    ("train.lr", "--set expects section.key=value, got 'train.lr'"),
    (".lr=1", "--set expects section.key=value, got '.lr=1'"),
    ("train.lr=[1", "--set 'train.lr=[1': value is not valid YAML"),
]


def bad_flags(tmp: Path, synth: Path):
    """(argv after "train", what the one-line error must contain): every flag."""
    afile = tmp / "afile"
    afile.write_text("x")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "broken.yaml").write_text("train: {lr: [1\n")
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    (tmp / "junk.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp / "badrun").mkdir()
    (tmp / "badrun" / "config.yaml").write_text("train: {lr: .nan}\n")
    out = ["--out", str(tmp / "run"), "--data", str(synth)] + sets(TINY)
    rows = [
        (["--config", "demo-cpu"], "give --out RUN"),
        (["--config", str(tmp / "nope.yaml"), "--out", str(tmp / "r")], "config file not found"),
        (["--config", str(tmp), "--out", str(tmp / "r")], "is a folder, not a YAML file"),
        (["--config", str(tmp / "list.yaml"), "--out", str(tmp / "r")],
         "list.yaml: expected a mapping of sections, got list"),
        (["--config", str(tmp / "broken.yaml"), "--out", str(tmp / "r")], "broken.yaml: not valid YAML at line"),
        (["--config", str(tmp / "binary.yaml"), "--out", str(tmp / "r")], "cannot read"),
        (["--out", str(afile), "--data", str(synth)], f"--out {afile} is a file, not a run folder"),
        (["--out", str(afile / "run"), "--data", str(synth)], f"{afile} is a file, not a folder"),
        (["--resume", str(tmp / "missing")], "config.yaml not found"),
        (["--resume", str(afile)], "is a file, not a run folder"),
        (["--resume", str(tmp / "badrun")], "badrun/config.yaml: train.lr must be a finite number > 0, got nan"),
        (["--out", str(tmp / "a"), "--resume", str(tmp / "b")], "name different runs"),
        (["--out", str(tmp / "r"), "--data", str(tmp / "missing")], "folder not found"),
        (["--out", str(tmp / "r"), "--data", str(afile)], "not a folder"),
        (out + ["--max-steps", "0"], "--max-steps must be an integer >= 1, got '0'"),
        (out + ["--max-steps", "-3"], "--max-steps must be an integer >= 1, got '-3'"),
        (out + ["--max-steps", "abc"], "--max-steps must be an integer >= 1, got 'abc'"),
        (out + ["--max-minutes", "0"], "--max-minutes must be a finite number > 0, got '0'"),
        (out + ["--max-minutes", "nan"], "--max-minutes must be a finite number > 0, got 'nan'"),
        (out + ["--max-minutes", "inf"], "--max-minutes must be a finite number > 0, got 'inf'"),
        (out + ["--max-minutes", "-1"], "--max-minutes must be a finite number > 0, got '-1'"),
        (out + ["--set", "garbage"], "--set expects section.key=value, got 'garbage'"),
        (out + ["--device", "bogus"], "--device bogus: not a device this engine runs on; expected auto, cpu, cuda"),
        (out + ["--device", "meta"], "--device meta: not a device this engine runs on"),
        (out + ["--set", f"train.semantic_features={tmp / 'junk.pth'}"],
         f"train.semantic_features: cannot read ImageNet weights {tmp / 'junk.pth'}"),
        (out + ["--set", "model.backbone=resnet18", "--set", f"model.imagenet={tmp / 'junk.pth'}"],
         f"model.imagenet: cannot read ImageNet weights {tmp / 'junk.pth'}"),
    ]
    if not torch.cuda.is_available():
        rows.append((out + ["--device", "cuda"], "--device cuda: CUDA is not available on this machine"))
    return rows


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code, err, expected):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("pdnet train: error: "), err
    assert expected in err, err


def test_every_config_key_and_train_flag_is_checked_before_training(synth_data, tmp_path, capsys):  # noqa: F811
    covered = {item.split("=", 1)[0] for item, _ in BAD_SETTINGS}
    every_key = {f"{s}.{k}" for s, keys in C.DEFAULTS.items() for k in keys}
    assert every_key <= covered, f"keys without a bad-value case: {sorted(every_key - covered)}"
    assert set(C.RULES) == set(C.DEFAULTS) and all(set(C.RULES[s]) == set(C.DEFAULTS[s]) for s in C.DEFAULTS)

    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {o for a in train._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    rows = bad_flags(tmp_path, synth_data)
    assert flags <= {a for argv, _ in rows for a in argv if a.startswith("--")}, "a flag without a bad-value case"

    for item, expected in BAD_SETTINGS:
        code, err = run_cli(["train", "--out", str(tmp_path / "run"), "--data", str(synth_data)]
                            + sets(TINY) + ["--set", item], capsys)
        assert_one_line_error(code, err, expected)
        assert item in err  # the error names the --set item
    started = time.perf_counter()
    for argv, expected in rows:
        code, err = run_cli(["train"] + argv, capsys)
        assert_one_line_error(code, err, expected)
    assert not (tmp_path / "run").exists()  # nothing written by a refused run
    assert time.perf_counter() - started < 60


def test_config_lists_match_the_model_and_data():
    from pdnet.data.layouts import LAYOUTS
    from pdnet.model.config import BACKBONE_CHANNELS, LOSS_VARIANTS, OPS_BACKENDS
    from pdnet.ops._dispatch import ALIASES, KNOWN_BACKENDS

    assert C.BACKBONES == tuple(BACKBONE_CHANNELS)
    assert C.LOSS_VARIANTS == LOSS_VARIANTS
    assert set(C.OPS_BACKENDS) == set(OPS_BACKENDS) == {"auto", *KNOWN_BACKENDS, *ALIASES}
    assert set(C.DATA_KINDS) == {"auto", *LAYOUTS}


def test_yaml_exponents_without_a_dot_are_numbers():
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=5e-4"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["weight_decay"] == 5e-4


def test_errors_name_the_config_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  momentum: 1.5\n")
    with pytest.raises(C.ConfigError, match=f"{f}: train.momentum must be a finite number in \\[0, 1\\), got 1.5"):
        load_config(str(f))


def test_resumed_config_may_name_an_imagenet_file_that_is_gone(tmp_path):
    with pytest.raises(C.ConfigError, match="model.imagenet"):
        load_config(None, base={"model": {"imagenet": str(tmp_path / "gone.pth")}})
    cfg = load_config(None, base={"model": {"imagenet": str(tmp_path / "gone.pth")}}, resume=True)
    assert cfg["model"]["imagenet"] == str(tmp_path / "gone.pth")


# ----------------------------------------------------------------------------- non-finite losses


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


# ----------------------------------------------------------------------------- signals, temporaries, disk full


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


def test_imagenet_weights_missing_or_corrupt_are_errors_naming_the_file(tmp_path):
    from pdnet.losses import SemanticFeatures
    from pdnet.model.layers import ResNetEncoder

    with pytest.raises(FileNotFoundError, match="ImageNet weights .*nope.pth not found"):
        ResNetEncoder("resnet18").load_imagenet(str(tmp_path / "nope.pth"))
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="other.pth is not a torchvision resnet18 checkpoint"):
        SemanticFeatures(str(tmp_path / "other.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(RuntimeError, match="list.pth is not a torchvision resnet18 state_dict"):
        ResNetEncoder("resnet18").load_imagenet(str(tmp_path / "list.pth"))
    with pytest.warns(UserWarning, match="no ImageNet weights"):
        assert ResNetEncoder("resnet18").load_imagenet(None) is False


def test_trainer_checks_a_config_edited_in_code(synth_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(synth_data)
    cfg["train"]["lr"] = float("nan")
    with pytest.raises(TrainError, match="train.lr must be a finite number > 0, got nan"):
        Trainer(cfg, tmp_path / "r")
