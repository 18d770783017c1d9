"""A fast first run: ``pdnet --help``, each command's --help and argument errors import
neither torch nor the model (pdnet/__init__.py is lazy and pdnet.cli imports only the
module of the command being run), while the package's public API works as before.

The checks are on what gets imported, not on time; bench/first_run.py measures the
times and the peak memory.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdnet import cli

#: prints what pdnet.cli.main(argv) returned and whether torch got imported
_PROBE = """
import json, sys
import pdnet.cli
try:
    code = pdnet.cli.main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules,
                  "pdnet": sorted(m for m in sys.modules if m.startswith("pdnet"))}))
"""


def _probe(argv):
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1]), res


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    pytest.param(["--help"], id="--help"),
    pytest.param(["--version"], id="--version"),
    pytest.param([], id="no command"),
    pytest.param(["bogus"], id="unknown command"),
    pytest.param(["demo", "--minutes", "0"], id="demo --minutes 0"),
    pytest.param(["demo", "--clips", "x"], id="demo --clips x"),
    *[pytest.param([name, "--help"], id=f"{name} --help") for name in cli.COMMANDS],
    *[pytest.param([name, "--no-such-flag"], id=f"{name} --no-such-flag") for name in cli.COMMANDS],
])
def test_help_and_argument_errors_do_not_import_torch(argv):
    out, res = _probe(argv)
    assert out["code"] == (0 if argv and argv[-1] in ("--help", "--version") else 2), res.stderr
    assert not out["torch"], f"pdnet {' '.join(argv)} imported torch (pdnet modules: {out['pdnet']})"


def _imports_torch(cmd, env=None):
    """Runs cmd with Python's import trace on; (returncode, whether torch was imported)."""
    env = {**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    return res.returncode, "torch" in imported, res


@pytest.mark.slow
def test_python_m_pdnet_help_does_not_import_torch():
    code, torch_imported, res = _imports_torch([sys.executable, "-m", "pdnet", "--help"])
    assert code == 0 and "segment" in res.stdout and "demo" in res.stdout
    assert not torch_imported


@pytest.mark.slow
def test_console_script_segment_help_does_not_import_torch():
    script = Path(sys.executable).parent / "pdnet"
    code, torch_imported, res = _imports_torch([str(script), "segment", "--help"])
    assert code == 0 and "--out" in res.stdout
    assert not torch_imported


@pytest.mark.slow
def test_lazy_package_api():
    """import pdnet loads nothing heavy; its names, submodules, __all__ and dir() work."""
    script = """
import sys
import pdnet
assert "torch" not in sys.modules and "pdnet.model" not in sys.modules, sorted(sys.modules)
names = dir(pdnet)
assert set(pdnet.__all__) <= set(names), set(pdnet.__all__) - set(names)
assert {"ops", "model", "inference", "data", "train", "evaluation"} <= set(names)
assert pdnet.__version__
from pdnet import ops, PDNetConfig
assert ops is pdnet.ops and callable(pdnet.ops.part_attention)
from pdnet.model import PDNet
assert pdnet.PDNet is PDNet and pdnet.PDNetConfig is PDNetConfig
from pdnet.inference import load, segment_video
assert pdnet.load is load and pdnet.segment_video is segment_video
for name in pdnet.__all__:
    getattr(pdnet, name)
assert pdnet.model.PDNet is PDNet
try:
    pdnet.no_such_name
except AttributeError as exc:
    assert "no_such_name" in str(exc)
else:
    raise AssertionError("pdnet.no_such_name did not raise AttributeError")
assert not hasattr(pdnet, "no_such_name")
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["ok"], res.stderr


def test_command_table_matches_the_command_modules():
    """pdnet --help lists each command with the summary its module registers, and a
    command parsed on its own gets the same parser as when every module is loaded."""
    full = cli.build_parser("all")
    sub = next(a for a in full._actions if a.dest == "command")
    assert list(sub.choices) == list(cli.COMMANDS)
    summaries = {a.dest: a.help for a in sub._choices_actions}
    assert summaries == {name: summary for name, (_, summary) in cli.COMMANDS.items()}
    for name in cli.COMMANDS:
        alone = cli.build_parser(name)
        alone_sub = next(a for a in alone._actions if a.dest == "command")
        assert alone_sub.choices[name].format_help() == sub.choices[name].format_help()
    lazy = cli.build_parser(None).format_help()
    assert lazy == full.format_help()


@pytest.mark.parametrize("argv, command", [
    ([], None),
    (["--help"], None),
    (["segment", "in.mp4", "--out", "x"], "segment"),
    (["--version", "train", "--config", "release"], "train"),
    (["--", "evaluate"], "evaluate"),
    (["--"], None),
])
def test_command_of(argv, command):
    assert cli._command_of(argv) == command


def test_unknown_command_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("module", [
    "pdnet.cli", "pdnet.data", "pdnet.evaluation", "pdnet.inference", "pdnet.losses", "pdnet.model",
    "pdnet.ops", "pdnet.train", "pdnet.kernels",
])
def test_each_subpackage_imports_first(module):
    """With pdnet/__init__.py lazy, no subpackage may rely on another having been imported
    before it (``import pdnet`` used to import ops, model and inference first)."""
    res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, expected", [
    (["segment", "in", "--checkpoint", "c.pt", "--out", "o", "--bogus", "1"],
     "pdnet segment: error: unrecognized arguments: --bogus 1 (see pdnet segment --help)"),
    (["train", "--out", "r", "--nope"], "pdnet train: error: unrecognized arguments: --nope (see pdnet train --help)"),
    (["evaluate", "--pred"], "pdnet evaluate: error: argument --pred: expected one argument"),
    (["synth"], "pdnet synth: error: the following arguments are required: OUT"),
    (["demo", "--minutes"], "pdnet demo: error: argument --minutes: expected one argument"),
    (["bogus"], "pdnet: error: argument COMMAND: invalid choice: 'bogus'"),
    ([], "pdnet: error: the following arguments are required: COMMAND (see pdnet --help)"),
])
def test_command_line_errors_are_one_line(argv, expected, capsys):
    """argparse's own errors (unknown options included, which the top-level parser meets
    first) are one line naming the command, like every other error, exit code 2."""
    from pdnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(expected), err
