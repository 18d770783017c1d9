"""Winograd F(4x4, 3x3) against the direct convolution on the CPU (float32, channels_last).

Two parts, each appending JSON rows to ``bench/results/winograd_cpu.jsonl`` (``--out``):

* ``layers``: every distinct eligible 3x3 convolution (stride 1, groups 1, >= 16 channels) of
  the ResNet-50 FastPDNet at each ``--sizes`` and ``--batches``, found by running the model
  with hooks: oneDNN's direct convolution (``F.conv2d``, channels_last) against
  ``torch.ops.pdnet.winograd_conv3x3`` (bias + ReLU fused), timed interleaved (one call of
  each per round, the minimum and the median over rounds);
* ``network``: the whole FastPDNet step (``fast(x, keys, values)``, ResNet-50, float32,
  channels_last) eager against eager after :func:`pdnet.inference.winograd.convert_winograd`,
  interleaved, and with ``--ort`` ONNX Runtime (CPUExecutionProvider, the same thread count)
  on the exported step graph (:func:`pdnet.deploy.export_onnx`) as a reference point.

The machine may be shared: every row carries the load average, and the interleaving makes
the ratios fairer than the absolute times. Usage::

    python bench/bench_winograd.py --threads 2 --sizes 320 480 --batches 1 4 --parts layers network --ort
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pdnet  # noqa: E402
from bench._meta import git_commit  # noqa: E402
from pdnet.inference import FastPDNet  # noqa: E402
from pdnet.inference import winograd as wg  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "winograd_cpu.jsonl"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def base_row(args) -> dict:
    return {
        "bench": "winograd",
        "time": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": cpu_name(),
        "isa": pdnet._C.cpu_isa() if wg.winograd_available() else None,
        "torch": torch.__version__,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": git_commit(),
    }


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict:
    """{name: (min ms, median ms)} with one call of each function per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def build_fast(size: int) -> FastPDNet:
    torch.manual_seed(0)
    model = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet50", input_size=(size, size))).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return FastPDNet(model).to(memory_format=torch.channels_last)


def layer_shapes(fast: FastPDNet, size: int) -> list[tuple[int, int, int, int, int]]:
    """Distinct (count, Cin, Cout, H, W) of the eligible 3x3 convolutions of one step."""
    seen: dict[tuple, int] = {}
    hooks = []
    for m in fast.modules():
        if wg._eligible(m) and m.in_channels >= wg.MIN_CHANNELS and m.out_channels >= wg.MIN_CHANNELS:
            def hook(mod, inputs, _out):
                x = inputs[0]
                k = (mod.in_channels, mod.out_channels, x.shape[-2], x.shape[-1])
                seen[k] = seen.get(k, 0) + 1

            hooks.append(m.register_forward_hook(hook))
    x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        state = fast.encode_reference(x)
        seen.clear()
        fast(x, state.keys, state.values)
    for h in hooks:
        h.remove()
    return sorted(((n, *k) for k, n in seen.items()), key=lambda r: (-r[3], r[1]))


def bench_layers(args, out) -> None:
    for size in args.sizes:
        shapes = layer_shapes(build_fast(size), size)
        for batch in args.batches:
            for count, cin, cout, h, w in shapes:
                x = torch.randn(batch, cin, h, w).contiguous(memory_format=torch.channels_last)
                weight = torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)
                bias = torch.randn(cout)
                U = wg.winograd_weights(weight)
                fns = {
                    "direct": lambda x=x, w=weight, b=bias: F.relu(F.conv2d(x, w, b, padding=1), inplace=True),
                    "winograd": lambda x=x, U=U, b=bias, c=cout: torch.ops.pdnet.winograd_conv3x3(
                        x, U, b, True, c, None
                    ),
                }
                if args.three_pass:  # the whole image in one block: transforms + at::bmm (MKL)
                    fns["three_pass"] = lambda x=x, U=U, b=bias, c=cout: three_pass(x, U, b, c)
                res = interleaved(fns, args.rounds)
                tiles = batch * ((h + 3) // 4) * ((w + 3) // 4)
                gflop = 2 * batch * cin * cout * 9 * h * w / 1e9
                row = {
                    **base_row(args), "part": "layer", "size": size, "batch": batch, "cin": cin, "cout": cout,
                    "h": h, "w": w, "count_per_step": count, "tiles": tiles, "direct_gflop": gflop,
                    "direct_ms": res["direct"][0], "direct_ms_median": res["direct"][1],
                    "winograd_ms": res["winograd"][0], "winograd_ms_median": res["winograd"][1],
                    "speedup": res["direct"][0] / res["winograd"][0],
                    "speedup_median": res["direct"][1] / res["winograd"][1],
                    "rule_uses_winograd": tiles * wg.TILE_CHANNEL_RATIO >= cin * cout,
                }
                if "three_pass" in res:
                    row["three_pass_ms"], row["three_pass_ms_median"] = res["three_pass"]
                print(f"size {size} b{batch} {cin}->{cout} {h}x{w} (x{count}, {tiles} tiles): direct "
                      f"{row['direct_ms']:.2f} ms ({gflop / row['direct_ms'] * 1e3:.0f} GFLOP/s), winograd "
                      f"{row['winograd_ms']:.2f} ms: x{row['speedup']:.2f} (median x{row['speedup_median']:.2f})"
                      + (f"; three passes {row['three_pass_ms']:.2f} ms" if "three_pass_ms" in row else ""),
                      flush=True)
                out.write(json.dumps(row) + "\n")
                out.flush()


def three_pass(x, U, bias, cout):
    """The op with PDNET_WINOGRAD_TILES=0: V of every tile, at::bmm, then the output transform."""
    os.environ["PDNET_WINOGRAD_TILES"] = "0"
    try:
        return torch.ops.pdnet.winograd_conv3x3(x, U, bias, True, cout, None)
    finally:
        del os.environ["PDNET_WINOGRAD_TILES"]


class OrtStep:
    """ONNX Runtime (CPU) on the exported step graph; the reference state from its encoder graph."""

    def __init__(self, fast_model: pdnet.PDNet, size: int, threads: int, folder: Path) -> None:
        import onnxruntime as ort

        from pdnet.deploy import export_onnx

        info = export_onnx(fast_model, folder, input_size=size, overwrite=True, check=False)
        meta = json.loads(Path(info["export_json"]).read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / meta["graphs"]["encode_reference"]["file"]), so,
                                            providers=providers)
        self.step = ort.InferenceSession(str(folder / meta["graphs"]["step"]["file"]), so, providers=providers)
        self.state_names = list(meta.get("state", ["keys", "values"]))

    def feeds(self, x: torch.Tensor) -> dict:
        enc = dict(zip([o.name for o in self.encoder.get_outputs()],
                       self.encoder.run(None, {"reference": x[:1].contiguous().numpy()}), strict=True))
        kv = {n: np.ascontiguousarray(np.repeat(enc[n], x.shape[0], axis=0)) for n in self.state_names}
        return {"target": x.contiguous().numpy(), **kv}

    def __call__(self, feeds: dict):
        return self.step.run(["logits"], feeds)[0]


def bench_network(args, out) -> None:
    for size in args.sizes:
        fast = build_fast(size)
        wino = copy.deepcopy(fast)
        converted = wg.convert_winograd(wino)
        ort_step = None
        if args.ort:
            torch.manual_seed(0)
            plain = pdnet.PDNet(pdnet.PDNetConfig(backbone="resnet50", input_size=(size, size),
                                                  ops_backend="reference")).eval()
            folder = Path(tempfile.mkdtemp(prefix=f"wino_ort_{size}_"))
            ort_step = OrtStep(plain, size, args.threads, folder)
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                state = fast.encode_reference(x[:1])
                ref = fast(x, state.keys, state.values)
                got = wino(x, state.keys, state.values)
            rel = float((got - ref).abs().max() / ref.abs().max())
            fns = {
                "eager": lambda m=fast, x=x, s=state: m(x, s.keys, s.values),
                "winograd": lambda m=wino, x=x, s=state: m(x, s.keys, s.values),
            }
            if ort_step is not None:
                feeds = ort_step.feeds(x)
                fns["ort"] = lambda o=ort_step, f=feeds: o(f)
            with torch.no_grad():
                res = interleaved(fns, args.net_rounds, warmup=1)
            row = {
                **base_row(args), "part": "network", "backbone": "resnet50", "size": size, "batch": batch,
                "precision": "float32", "channels_last": True, "converted_convs": converted,
                "rule": f"tiles * {wg.TILE_CHANNEL_RATIO} >= Cin * Cout", "winograd_vs_eager_max_rel_diff": rel,
                **{f"{k}_ms": v[0] for k, v in res.items()},
                **{f"{k}_ms_median": v[1] for k, v in res.items()},
                "winograd_speedup": res["eager"][0] / res["winograd"][0],
            }
            if "ort" in res:
                row["winograd_vs_ort"] = res["ort"][0] / res["winograd"][0]
                row["eager_vs_ort"] = res["ort"][0] / res["eager"][0]
                row["ort_note"] = "ONNX Runtime CPUExecutionProvider, ORT_ENABLE_ALL, step.onnx of export_onnx " \
                                  "(ops backend reference), numpy inputs"
            print(f"network {size} b{batch}: " + ", ".join(f"{k} {v[0]:.1f} ms" for k, v in res.items())
                  + f"; winograd x{row['winograd_speedup']:.2f} vs eager"
                  + (f", x{row['winograd_vs_ort']:.2f} vs ORT" if "ort" in res else "")
                  + f" ({converted} convs, max rel diff {rel:.1e})", flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 480])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--parts", nargs="+", choices=["layers", "network"], default=["layers", "network"])
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per layer")
    p.add_argument("--net-rounds", type=int, default=6, help="interleaved rounds per network step")
    p.add_argument("--three-pass", action="store_true",
                   help="layers: also time the three-pass variant (whole image, at::bmm)")
    p.add_argument("--ort", action="store_true", help="also time ONNX Runtime on the exported step graph")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not wg.winograd_available():
        raise SystemExit("bench_winograd: pdnet._C with pdnet::winograd_conv3x3 is not built")
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        if "layers" in args.parts:
            bench_layers(args, out)
        if "network" in args.parts:
            bench_network(args, out)


if __name__ == "__main__":
    main()
