"""The command line: entry points and the demo."""
import subprocess
import sys

from pdnet.cli import main


def test_python_m_pdnet_help():
    r = subprocess.run([sys.executable, "-m", "pdnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_demo_runs(capsys):
    assert main(["demo", "--quick", "--steps", "1", "--size", "64", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "parts_t.area_gt" in out and "total time" in out


def test_console_script_installed():
    from pathlib import Path

    script = Path(sys.executable).parent / "pdnet"
    assert script.exists(), "the pdnet console script is not installed in this environment"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("pdnet ")
