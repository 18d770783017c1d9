"""Summaries of benchmark rows: the attention target's figures, and a bench/gpu_check.sh run.

Reads only JSON and text (no torch), so that it runs in a fraction of a second after every
step of gpu_check.sh.

* :func:`attention_target_lines`: from bench/bench_ops.py's rows, the CUDA attention's
  figures at the target shape (bf16, d=64, N=3600, B*p=40): forward and forward + backward
  TFLOP/s with their share of the device's peak, and forward + backward of attention +
  assembly against SDPA per part plus the reference assembly; each beside its target.
* ``python bench/results_summary.py gpu-check RESULTS_DIR [--print]``: writes
  RESULTS_DIR/summary.txt and summary.json from the step lines gpu_check.sh wrote
  (steps.tsv: step, status, exit code, seconds, note), the pytest report (logs/pytest*.xml)
  and the rows under RESULTS_DIR/rows/; ``--print`` prints summary.txt.
* ``python bench/results_summary.py copy ROWS_DIR DEST_DIR``: appends every ``*.jsonl`` of
  ROWS_DIR to the file of the same name in DEST_DIR and copies every ``*.json`` (one run per
  file), e.g. a GPU run's rows into bench/results/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: the attention target: case of tests/ops/cases.py, dtype, and the figures asked of the CUDA kernel
TARGET_CASE, TARGET_DTYPE = "N3600_d64", "bfloat16"
TARGET_FWD_TFLOPS = 200.0  # on an H100 / H200, and at least the Triton kernel's
TARGET_FWD_BWD_RATIO = 1.5  # attention + assembly, forward + backward, against SDPA per part + assembly
BACKEND_ORDER = ("cpp", "triton", "sdpa_heads", "sdpa_per_part", "reference")


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a file of one object per line; a line cut short (a run killed while
    writing) is left out."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _row(rows, case, backend, modes):
    """The first row of ``case`` / ``backend`` in the first of ``modes`` that has one."""
    for mode in modes:
        for r in rows:
            if (r.get("case"), r.get("backend"), r.get("mode"), r.get("dtype")) == (case, backend, mode, TARGET_DTYPE):
                return r
    return None


def _rate(row) -> str:
    if not row or not row.get("tflops"):
        return "-"
    frac = row.get("tflops_frac_peak")
    return f"{row['tflops']:.1f} TFLOP/s" + (f" ({frac:.1%} of peak)" if frac else "")


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def attention_target_lines(rows: list[dict]) -> list[str]:
    """The attention target's figures from bench_ops rows ([] when the rows do not hold them)."""
    attention, composite = f"part_attention-{TARGET_CASE}", f"attention_assembly-{TARGET_CASE}"
    backends = [b for b in BACKEND_ORDER if any(_row(rows, case, b, ("fwd", "full", "grad"))
                                                for case in (attention, composite))]
    if not backends:
        return []
    device = next(r["device"] for r in rows if r.get("case") in (attention, composite))
    lines = [f"attention target ({TARGET_DTYPE}, d=64, N=3600, B*p=40) on {device}:"]
    for b in backends:
        both = _row(rows, composite, b, ("full", "grad"))
        ratio = both.get("ratio_to_sdpa_per_part") if both else None
        lines.append(f"  {b:13s} fwd {_rate(_row(rows, attention, b, ('fwd',)))}; "
                     f"fwd+bwd {_rate(_row(rows, attention, b, ('full', 'grad')))}; attention+assembly fwd+bwd "
                     + (f"{ratio:.2f}x SDPA per part + assembly" if ratio else "-"))
    cpp, triton = _row(rows, attention, "cpp", ("fwd",)), _row(rows, attention, "triton", ("fwd",))
    both = _row(rows, composite, "cpp", ("full", "grad"))
    big_gpu = any(name in device for name in ("H100", "H200"))
    fwd = cpp["tflops"] if cpp and cpp.get("tflops") else None
    ratio = both.get("ratio_to_sdpa_per_part") if both else None
    lines.append(
        f"  cpp targets: fwd >= {TARGET_FWD_TFLOPS:.0f} TFLOP/s on an H100/H200: "
        f"{_met(fwd >= TARGET_FWD_TFLOPS if fwd and big_gpu else None)}; fwd >= triton's: "
        f"{_met(fwd >= triton['tflops'] if fwd and triton and triton.get('tflops') else None)}; "
        f"fwd+bwd >= {TARGET_FWD_BWD_RATIO}x SDPA per part + assembly: "
        f"{_met(ratio >= TARGET_FWD_BWD_RATIO if ratio else None)}")
    return lines


# --------------------------------------------------------------------------- other benchmarks
def ops_lines(rows: list[dict], backends=("cpp", "triton")) -> list[str]:
    """Per case of bench_ops rows in their first dtype: each kernel backend's median, ratio to the
    reference and share of the device's peak (TFLOP/s where counted, else GB/s), forward and
    forward + backward."""
    dtype = rows[0]["dtype"] if rows else None
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows if r["dtype"] == dtype):
        parts = []
        for mode in ("fwd", "full"):
            found = [r for b in backends for r in rows
                     if (r["case"], r["dtype"], r["mode"], r["backend"]) == (case, dtype, mode, b)]
            parts += [f"{mode} {r['backend']} {r['ms_median']:.3g} ms"
                      + (f" {r['ratio_to_reference']:.2f}x ref" if r.get("ratio_to_reference") else "")
                      + (f" {share:.0%} of peak" if (share := r.get("tflops_frac_peak") or r.get("gbps_frac_peak"))
                         else "") for r in found]
        if parts:
            lines.append(f"ops {case} {dtype}: " + "; ".join(parts))
    return lines


def fps_lines(rows: list[dict]) -> list[str]:
    """Fast vs reference path per backbone and mode (bench_fps.py rows)."""
    return [f"fps {r['backbone']} {r['size']}x{r['size']} {r['mode']} batch {r['batch']} {r['precision']}: "
            f"fast {r['fps']:.1f} FPS, {r['speedup_vs_reference']:.2f}x the reference path"
            for r in rows if r.get("path") == "fast" and r.get("speedup_vs_reference")]


def train_lines(result: dict) -> list[str]:
    """Fused vs reference training path (one bench_train.py result)."""
    s = result.get("summary", {})
    if "speedup" not in s:
        return []
    return [f"train {result['backbone']} {result['size']}x{result['size']} batch {result['batch']} "
            f"({result['device']}): fused {s['speedup']:.2f}x the reference path's pairs/s, "
            f"peak memory {s['memory_ratio']:.2f}x (GPU target: >= 2x at <= 0.5x)"]


def eval_lines(rows: list[dict]) -> list[str]:
    """J&F engines vs the per-frame baseline (bench_eval.py rows)."""
    out = []
    for r in rows:
        speed = ", ".join(f"{engine} {s['wall']:.1f}x" for engine, s in r.get("speedup", {}).items())
        out.append(f"eval {r['kind']} {r['size']} ({r['frames']} frames): {speed} wall vs {r['baseline']}"
                   f"{'' if r.get('identical') else ', RESULTS DIFFER'}")
    return out


def pytest_report(logs: Path) -> dict:
    """{report name: counts and failed test ids} of the JUnit XML files pytest wrote."""
    out = {}
    for path in sorted(logs.glob("pytest*.xml")):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            out[path.stem] = {"error": f"unreadable: {exc}"}
            continue
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for suite in root.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        out[path.stem] = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
                          - counts["skipped"], "failed": failed}
    return out


# --------------------------------------------------------------------------- gpu_check.sh
def read_steps(path: Path) -> list[dict]:
    """steps.tsv: one line per step, written by gpu_check.sh as it goes (split on newlines only: a
    note may carry a stray carriage return or form feed, which ``splitlines`` would break on)."""
    steps = []
    text = ""
    if path.exists():
        with open(path, encoding="utf-8", newline="") as f:  # no universal newlines: a lone \r stays in its note
            text = f.read()
    for line in text.split("\n"):
        if not line:
            continue
        name, status, rc, seconds, note = (line.split("\t") + [""] * 5)[:5]
        steps.append({"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                      "seconds": int(seconds) if seconds.isdigit() else None, "note": note})
    return steps


def figures(rows_dir: Path) -> list[str]:
    """The headline figure lines of every row file under ``rows_dir``."""
    lines = []
    for path in sorted(rows_dir.glob("ops_*.jsonl")):
        rows = read_jsonl(path)
        lines += ops_lines(rows) + attention_target_lines(rows)
    for path in sorted(rows_dir.glob("fps_*.jsonl")):
        lines += fps_lines(read_jsonl(path))
    for path in sorted(rows_dir.glob("train_*.json")):
        lines += train_lines(json.loads(path.read_text(encoding="utf-8")))
    for path in sorted(rows_dir.glob("eval_*.jsonl")):
        lines += eval_lines(read_jsonl(path))
    return lines


def gpu_check_summary(results: Path) -> str:
    """Writes results/summary.json and summary.txt; returns the text."""
    steps = read_steps(results / "steps.tsv")
    tests = pytest_report(results / "logs")
    rows_dir = results / "rows"
    row_files = {p.name: len(read_jsonl(p)) if p.suffix == ".jsonl" else 1 for p in sorted(rows_dir.glob("*.json*"))}
    lines = figures(rows_dir)
    summary = {"steps": steps, "tests": tests, "row_files": row_files, "figures": lines}
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    text = [f"{'step':12s} {'status':8s} {'rc':>4s} {'s':>5s}  note"]
    text += [f"{s['step']:12s} {s['status']:8s} {'' if s['rc'] is None else s['rc']:>4} "
             f"{'' if s['seconds'] is None else s['seconds']:>5}  {s['note']}" for s in steps]
    for name, t in tests.items():
        text.append(f"{name}: " + (t["error"] if "error" in t else
                                   f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                                   f"{t['skipped']} skipped" + "".join(f"\n  FAILED {f}" for f in t["failed"][:15])))
    text.append("rows: " + (", ".join(f"{n} ({c})" for n, c in row_files.items()) or "none"))
    text += lines
    (results / "summary.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return "\n".join(text)


def copy_rows(rows_dir: Path, dest: Path) -> list[Path]:
    """Appends each ``*.jsonl`` of ``rows_dir`` to ``dest``'s file of that name, copies each
    ``*.json``; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(rows_dir.glob("*.json*")):
        if path.suffix == ".jsonl":
            rows = read_jsonl(path)
            with (dest / path.name).open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        elif path.suffix == ".json":
            shutil.copyfile(path, dest / path.name)
        else:
            continue
        written.append(dest / path.name)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("gpu-check", help="summary.txt / summary.json of a gpu_check.sh results folder")
    check.add_argument("results", type=Path)
    check.add_argument("--print", action="store_true", help="also print summary.txt")
    copy = sub.add_parser("copy", help="append a folder's row files to another's (e.g. bench/results)")
    copy.add_argument("rows", type=Path)
    copy.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if args.command == "gpu-check":
        if not args.results.is_dir():
            ap.error(f"{args.results} is not a folder")
        text = gpu_check_summary(args.results)
        if args.print:
            print(text)
        return 0
    if not args.rows.is_dir():
        ap.error(f"{args.rows} is not a folder")
    for path in copy_rows(args.rows, args.dest):
        print(f"rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
