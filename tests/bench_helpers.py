"""Loading a benchmark script of bench/ as a module and running its main() into a temporary folder."""
import importlib.util
import json
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """bench/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main_runner(bench, out: Path, rows_file: str):
    """A generator for a pytest fixture: yields run(*argv) -> (exit code, rows written to out/rows_file),
    each call bench.main([*argv, "--out", out]); restores torch's thread count afterwards."""
    threads = torch.get_num_threads()

    def run(*argv):
        code = bench.main([*argv, "--out", str(out)])
        path = out / rows_file
        return code, [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    yield run
    torch.set_num_threads(threads)
