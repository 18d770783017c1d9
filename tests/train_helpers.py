"""Helpers of the training hardening tests (tests/test_train_*.py; their autouse fixtures are in
train_fixtures.py): a tiny run's --set items, ``pdnet train`` in-process and its one-line errors."""
from pdnet.cli import main

TINY = [
    "model.backbone=resnet18", "model.parts=2", "model.imagenet=null", "data.size=64", "data.workers=0",
    "train.batch_size=2", "train.epochs=2", "train.lr=0.01", "train.amp=off", "train.semantic_features=null",
    "log.every=1", "log.checkpoint_every=2", "log.val_every=null", "log.tensorboard=false", "log.progress=false",
]


def sets(items):
    return [a for item in items for a in ("--set", item)]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code, err, expected):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("pdnet train: error: "), err
    assert expected in err, err
