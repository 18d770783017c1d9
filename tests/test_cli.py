"""The command line's entry points: ``python -m pdnet`` and the ``pdnet`` console script.
The commands themselves are tested beside their modules (tests/test_demo.py, ...)."""
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # a subprocess
def test_python_m_pdnet_help():
    r = subprocess.run([sys.executable, "-m", "pdnet", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


@pytest.mark.slow  # a subprocess
def test_console_script_installed():
    import pdnet

    script = Path(sys.executable).parent / "pdnet"
    assert script.exists(), "the pdnet console script is not installed in this environment"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"pdnet {pdnet.__version__}"
