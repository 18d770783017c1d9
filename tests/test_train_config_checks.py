"""Training hardening: every config key and flag checked up front, with a one-line error,
before anything is written; ImageNet weights files."""
import argparse
import time
from pathlib import Path

import pytest
import torch
from test_train import synth_data, tiny_cfg  # noqa: F401 - the fixture is used by name
from train_fixtures import no_fsync, one_thread  # noqa: F401 - autouse fixtures
from train_helpers import TINY, assert_one_line_error, run_cli, sets

from pdnet.train import Trainer, TrainError, load_config
from pdnet.train import cli as train_cli
from pdnet.train import config as C

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
