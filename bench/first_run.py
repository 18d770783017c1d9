"""Time and peak memory of pdnet's quick commands: ``pdnet --help``, each command's
``--help`` and an argument error, each in a fresh process, as a first-time user runs
them.

    python bench/first_run.py                 # 5 runs of each, median and max
    python bench/first_run.py --runs 3 --json bench/results/first_run.jsonl

Each command runs in a fresh wrapper process that starts it, times it (wall clock,
from start to exit) and reads its peak resident memory (``ru_maxrss`` of the finished
child), so neither the wrapper's start-up nor other runs leak into a figure. The
machine's load average is printed with the results: on a shared machine it inflates
the times. ``python -c pass`` and ``python -c "import torch"`` are the floor and the
cost that the lazy imports avoid.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: measures one command in a fresh process: prints {"seconds", "max_rss_kb", "code"}
_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "code": code}))
"""


def commands(pdnet: str):
    py = sys.executable
    out = [
        ("python -c pass", [py, "-c", "pass"]),
        ("python -c 'import torch'", [py, "-c", "import torch"]),
        ("pdnet --help", [pdnet, "--help"]),
        ("python -m pdnet --help", [py, "-m", "pdnet", "--help"]),
        ("pdnet bogus (argument error)", [pdnet, "bogus"]),
    ]
    for name in ("demo", "segment", "synth", "train", "evaluate"):
        out.append((f"pdnet {name} --help", [pdnet, name, "--help"]))
    out.append(("pdnet segment (argument error)", [pdnet, "segment"]))
    out.append(("pdnet demo --minutes 0 (argument error)", [pdnet, "demo", "--minutes", "0"]))
    return out


def measure(cmd, runs: int):
    rows = []
    for _ in range(runs):
        res = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(cmd)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(res.stdout))
    return rows


def git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    ap.add_argument("--pdnet", default=shutil.which("pdnet", path=str(Path(sys.executable).parent)) or "pdnet",
                    help="the pdnet console script (default: the one beside this Python)")
    ap.add_argument("--json", type=Path, help="append one JSON row per command to this file")
    args = ap.parse_args()
    load_before = os.getloadavg()
    print(f"{'command':42s} {'median s':>9s} {'max s':>7s} {'peak MB':>8s}  exit")
    results = []
    for label, cmd in commands(args.pdnet):
        rows = measure(cmd, args.runs)
        secs = [r["seconds"] for r in rows]
        row = {
            "command": label,
            "median_s": round(statistics.median(secs), 3),
            "max_s": round(max(secs), 3),
            "peak_rss_mb": round(max(r["max_rss_kb"] for r in rows) / 1024, 1),
            "exit_code": rows[-1]["code"],
        }
        results.append(row)
        print(f"{label:42s} {row['median_s']:9.2f} {row['max_s']:7.2f} {row['peak_rss_mb']:8.0f}  {row['exit_code']}")
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs; "
          f"commit {git_head()}")
    if args.json:
        meta = {"commit": git_head(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after, "runs": args.runs}
        with open(args.json, "a") as f:
            for row in results:
                f.write(json.dumps({**meta, **row}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
