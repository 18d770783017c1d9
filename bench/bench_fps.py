"""Frames per second of PDNet inference: the reference path, the fast path and its peers.

Paths:

* ``reference``: the plain :class:`pdnet.PDNet` in fp32, recomputing the reference frame
  with every target frame, as the release's test script does (``model(img, ref)``);
* ``fast``: :class:`pdnet.inference.VideoSegmenter`: BatchNorm folded, parts batched,
  channels_last, the reference frame encoded once per clip, ``--dtype`` (auto: bf16 on
  CUDA), CUDA graphs on CUDA, the ops' ``auto`` backend (Triton / C++ kernels when built);
  its CPU options, each an extra path timed beside it: ``fast-compile`` (``--compile``:
  the step through Inductor with frozen weights) and ``fast-int8`` (``--int8``: PT2E int8
  quantisation calibrated on ``--calib-clips`` synthetic clips).

Peers (``--peers``), the same network run by other engines on the same frames:

* ``ort``: ONNX Runtime on the exported two-stage graphs (:func:`pdnet.deploy.export_onnx`
  of the same model into a temporary folder): ``encode_reference.onnx`` once per clip,
  ``step.onnx`` per call; CPUExecutionProvider with ``intra_op_num_threads`` = torch's
  thread count and graph optimisation level ALL (CUDAExecutionProvider with I/O binding
  of the torch tensors on CUDA);
* ``compile`` / ``compile-freeze``: ``torch.compile`` (default Inductor settings, static
  shapes) of the plain :class:`pdnet.PDNet` in eval mode with the reference state cached,
  channels_last unless ``--no-channels-last``; ``compile-freeze`` adds Inductor freezing
  (weights as constants: BatchNorm folded, weights pre-packed).

Modes:

* ``streaming``: batch 1, one frame per call (a live video);
* ``batched``: ``--batch`` frames per call (offline throughput);
* ``e2e`` (with ``--e2e``): ``pdnet.segment_video`` on a synthetic H.264 clip of
  ``--e2e-frames`` frames of ``--e2e-size``, decoding, resizing, PNG writing and (with
  ``--overlay``) video encoding included.

"Model compute" (streaming / batched) is timed from uint8 frames already on the device at
the model's input size to probabilities on the device: for every path and peer the same
frames go through the same preprocessing (:func:`pdnet.inference.preprocess`: /255 and
ImageNet normalisation, in torch), the network (with the reference frame's keys and values
computed once, before timing, except on the reference path) and a sigmoid; decoding, host
transfers and encoding are excluded. Each measurement makes one untimed first call (where
``torch.compile`` compiles; its time is ``first_call_s``), runs ``--warmup`` untimed calls,
then ``--iters`` timed calls with a device synchronisation before and after: ``fps`` =
frames / wall time of the timed calls; the per-call latency (median, p20, p80, min) is
measured in a second pass that interleaves the paths and synchronises after every call;
``fps_best`` = frames / fastest call (the least disturbed figure on a shared machine).
The fast rows carry ``fast_vs_<peer>`` (throughput) and ``fast_vs_<peer>_best`` (best call)
ratios; every row carries ``max_prob_diff_vs_fast``, the largest probability difference
from the fp32 fast path on the first call's frames (the same function, computed by each
engine).

The model has random weights; its BatchNorm running statistics are estimated on two
frames of a synthetic clip (``--bn-stats synthetic``, the default: per-channel statistics
far from 0 and 1, so that folding them matters; ResNet-50's logits stay of order 1-10,
so that the probabilities compared above mean something, where uniform random statistics
give logits of 1e5). The timed frames are frames of another
synthetic clip (pdnet's generator, :mod:`pdnet.data.synth`), its first frame the
reference. The bf16 and int8 rows carry ``jf_vs_fp32``, the J&F of their masks against
the fp32 fast path's on ``--accuracy-clips`` synthetic clips held out from the
calibration clips, and ``mean_prob_diff_vs_fp32``.

Usage::

    python bench/bench_fps.py --backbone resnet50 --size 480 --batch 16           # GPU
    python bench/bench_fps.py --backbone resnet18 resnet50 --size 224 --iters 5   # CPU
    python bench/bench_fps.py --backbone resnet50 --size 320 --batch 4 --threads 2 --paths fast \
        --peers ort compile --compile                                             # peers

Every row is appended as one JSON line to bench/results/fps_<device>.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pdnet, installed or not: the imports below follow it (E402)

import pdnet  # noqa: E402
from bench._meta import git_commit  # noqa: E402
from pdnet._device import parse_device  # noqa: E402
from pdnet.inference import VideoSegmenter, VideoWriter, preprocess, segment_video  # noqa: E402
from pdnet.inference.segmenter import parse_dtype  # noqa: E402
from pdnet.model import ReferenceState  # noqa: E402

PEERS = ("ort", "compile", "compile-freeze")
#: what every streaming / batched row times, whatever the engine
SCOPE = ("uint8 frames [B, 3, H, W] at the input size on the device -> probabilities [B, 1, H, W]: "
         "pdnet.inference.preprocess (/255, ImageNet normalisation; torch), the network, sigmoid; "
         "reference keys/values computed once before timing (except path reference)")
#: the synthetic clips (pdnet.data.synth.ClipRenderer), one seed, disjoint clip indices: int8 calibration
#: [0, --calib-clips), accuracy check from ACCURACY_FIRST_INDEX, BatchNorm statistics, timed frames
CLIP_SEED, ACCURACY_FIRST_INDEX, BN_CLIP, FRAMES_CLIP = 18, 1000, 2000, 3000
#: --bn-stats: the BatchNorm running statistics of the random-weight model
BN_STATS = {
    "synthetic": "estimated on 2 frames of a synthetic clip (one training-mode pass, cumulative average), as a "
                 "trained network's are: per-channel means and variances far from 0 and 1; ResNet-50 at 320x320: "
                 "logits of other synthetic frames at most about 20",
    "uniform": "running_mean U(-0.2, 0.2), running_var U(0.5, 2.0), torch seed 0 (a random ResNet-50's logits "
               "then reach 1e5)",
    "init": "PyTorch's initial values (mean 0, variance 1): folding them changes little",
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str | None]:
    """Versions of the engines a row may use (None: not installed)."""
    out: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("onnxruntime", "onnx", "onnxscript", "torchao"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns, device, warmup: int, iters: int):
    """Time each callable of ``fns`` (dict name -> fn).

    Returns {name: (seconds for ``iters`` calls back to back, [per-call seconds])}. The
    per-call times come from a second pass that interleaves the callables (A B A B ...)
    and synchronises after every call, so that a slow phase of a shared machine hits all
    of them alike; their minimum is the least disturbed estimate.
    """
    out = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        out[name] = (time.perf_counter() - t0, [])
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            out[name][1].append(time.perf_counter() - t)
    return out


def quantiles(xs):
    q = statistics.quantiles(xs, n=10) if len(xs) >= 2 else [xs[0]] * 9
    return {"median": statistics.median(xs) * 1e3, "p20": q[1] * 1e3, "p80": q[7] * 1e3, "min": min(xs) * 1e3}


def set_batchnorm_stats(model: pdnet.PDNet, how: str, seed: int = 0) -> int:
    """Non-trivial BatchNorm running statistics for a random-weight model (``BN_STATS[how]``), so that
    folding them matters; returns the number of BatchNorms set. The model is left in eval mode."""
    if how not in BN_STATS:
        raise ValueError(f"set_batchnorm_stats: how must be one of {', '.join(BN_STATS)}, got {how!r}")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if how == "uniform":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in bns:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    elif how == "synthetic":
        size = tuple(model.config.input_size)
        clip = torch.from_numpy(synthetic_clips(1, BN_CLIP, 2, size)[0]).permute(0, 3, 1, 2)  # [2, 3, H, W]
        momentum = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass's calls
        model.train()
        with torch.no_grad():
            model(preprocess(clip[1:], size), preprocess(clip[:1], size))  # target, reference: a trunk pass each
        for m, mom in zip(bns, momentum, strict=True):
            m.momentum = mom
    model.eval()
    return len(bns)


def model_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the state dict (names and bytes): which model an export folder holds."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def onnx_export(model: pdnet.PDNet, size: tuple[int, int], opset: int, cache: str | None):
    """The model exported by :func:`pdnet.deploy.export_onnx` -> (folder, seconds or None when reused, cleanup).

    Without ``cache``, into a temporary folder; with it, into
    ``cache/<backbone>-<H>x<W>-opset<N>-<weights hash>``, reused when already there.
    """
    try:
        from pdnet.deploy import export_onnx
    except ImportError as e:
        raise SystemExit(f"bench_fps.py: --peers ort needs pdnet.deploy.export_onnx and onnxruntime "
                         f"(pip install -e \".[deploy]\"): {e}") from None
    if cache is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_fps_onnx_")
        folder, cleanup = Path(tmp.name), tmp.cleanup
    else:
        name = f"{model.config.backbone}-{size[0]}x{size[1]}-opset{opset}-{model_fingerprint(model)}"
        folder, cleanup = Path(cache) / name, (lambda: None)
        if (folder / "export.json").is_file():
            return folder, None, cleanup
    t0 = time.perf_counter()
    export_onnx(model, folder, input_size=size, opset=opset, overwrite=True, check=False)
    return folder, time.perf_counter() - t0, cleanup


def reference_step(model, frames, ref_frame, size):
    """The release's way: the reference frame goes through the whole network with every target."""
    x = preprocess(frames, size)  # [B, 3, S, S]
    r = preprocess(ref_frame, size).expand_as(x)  # [B, 3, S, S]
    return torch.sigmoid(model(x, r))


class OrtPeer:
    """ONNX Runtime on an exported folder: ``encode_reference.onnx`` once, ``step.onnx`` per call.

    ``state(first, batch)`` encodes the reference frame (uint8 [1, 3, H, W]) and repeats
    its keys / values to the batch (step.onnx's state shares the batch axis); the call
    ``peer(frames, state)`` takes uint8 frames [B, 3, H, W] on the device and returns
    probabilities [B, 1, H, W] like :meth:`VideoSegmenter.predict`. On CUDA the inputs
    and the output are torch tensors bound in place (I/O binding, torch's stream).
    """

    def __init__(self, folder: Path, device: torch.device, size: tuple[int, int], threads: int) -> None:
        import onnxruntime as ort

        self.device, self.size = device, size
        meta = json.loads((folder / "export.json").read_text())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(f"--peers ort on {device} needs onnxruntime-gpu (CUDAExecutionProvider); this "
                                   f"onnxruntime {ort.__version__} has {', '.join(ort.get_available_providers())}")
            cuda = {"device_id": device.index or 0,
                    "user_compute_stream": str(torch.cuda.current_stream(device).cuda_stream)}
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / meta["graphs"]["encode_reference"]["file"]), so,
                                            providers=providers)
        self.step = ort.InferenceSession(str(folder / meta["graphs"]["step"]["file"]), so, providers=providers)
        self.state_names = list(meta.get("state", ["keys", "values"]))
        self.info = {
            "providers": self.step.get_providers(),
            "opset": meta.get("onnx_opset"),
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "io_binding": device.type == "cuda",
            "graphs": "encode_reference.onnx once per clip, step.onnx per call (output logits only)",
        }

    def state(self, first: torch.Tensor, batch: int) -> dict:
        x = preprocess(first, self.size).cpu().numpy()  # [1, 3, H, W] float32
        out = dict(zip([o.name for o in self.encoder.get_outputs()],
                       self.encoder.run(None, {"reference": x}), strict=True))
        kv = {name: np.ascontiguousarray(np.repeat(out[name], batch, axis=0)) for name in self.state_names}
        if self.device.type != "cuda":
            return kv
        kv = {k: torch.from_numpy(v).to(self.device) for k, v in kv.items()}
        binding = self.step.io_binding()
        for name, t in kv.items():
            binding.bind_input(name, "cuda", self.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        H, W = self.size
        outputs = {"logits": torch.empty(batch, 1, H, W, device=self.device),
                   "logits_stride4": torch.empty(batch, 1, H // 4, W // 4, device=self.device)}
        for name, t in outputs.items():  # every output bound: written in place, nothing allocated per call
            binding.bind_output(name, "cuda", self.device.index or 0, np.float32, tuple(t.shape), t.data_ptr())
        return {"tensors": kv, "binding": binding, "logits": outputs["logits"], "outputs": outputs}

    def __call__(self, frames: torch.Tensor, state: dict) -> torch.Tensor:
        x = preprocess(frames, self.size)  # [B, 3, H, W] float32, contiguous
        if self.device.type != "cuda":
            logits = self.step.run(["logits"], {"target": x.numpy(), **state})[0]
            return torch.sigmoid(torch.from_numpy(logits))
        x = x.contiguous()
        binding = state["binding"]
        binding.bind_input("target", "cuda", self.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        self.step.run_with_iobinding(binding)
        return torch.sigmoid(state["logits"])


class CompilePeer:
    """``torch.compile`` of the plain PDNet (eval), the reference state cached: ``model(x, state)``.

    Default Inductor settings with static shapes (one graph per batch size);
    ``freezing=True`` turns Inductor's freezing on for this compile only (``options``).
    """

    def __init__(self, model: pdnet.PDNet, device: torch.device, size: tuple[int, int], channels_last: bool,
                 freezing: bool) -> None:
        self.model = copy.deepcopy(model).to(device).eval()
        self.channels_last, self.size = channels_last, size
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        net = self.model

        def step(x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            return net(x, ReferenceState(keys, values, size))

        self.fn = torch.compile(step, dynamic=False, options={"freezing": True} if freezing else None)
        self.info = {"compile": {"backend": "inductor", "dynamic": False, "freezing": freezing,
                                 "options": "defaults" + (" + freezing" if freezing else "")}}

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        x = preprocess(frames, self.size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state(self, first: torch.Tensor, batch: int) -> ReferenceState:
        return self.model.encode_reference(self._input(first))  # eager, once

    def __call__(self, frames: torch.Tensor, state: ReferenceState) -> torch.Tensor:
        return torch.sigmoid(self.fn(self._input(frames), state.keys, state.values).float())


def synthetic_clips(count: int, first_index: int, frames: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` clips of pdnet's synthetic data generator (clip indices from ``first_index``): uint8 [T, H, W, 3]."""
    from pdnet.data.synth import ClipRenderer

    return [np.stack([img for img, _ in ClipRenderer(CLIP_SEED, first_index + i, frames, size)])
            for i in range(count)]


def synthetic_clip(path: Path, frames: int, size) -> None:
    """A moving gradient with a moving disc: cheap to make, non-trivial to encode."""
    H, W = size
    yy, xx = np.mgrid[:H, :W]
    writer = VideoWriter(path, 25, (H, W))
    for i in range(frames):
        disc = ((yy - H / 2) ** 2 + (xx - (W / 4 + i * W / (2 * frames))) ** 2) < (H / 4) ** 2
        img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, np.where(disc, 220, 40)], -1).astype(np.uint8)
        writer.write(img)
    writer.close()


def key(name: str) -> str:
    """Path name -> a row field suffix (``compile-freeze`` -> ``compile_freeze``)."""
    return name.replace("-", "_")


def add_ratios(rows: list[dict]) -> None:
    """Fast vs reference and fast vs peer ratios (throughput and best call), in the fast rows."""
    for r in rows:
        if not r["path"].startswith("fast") or r["includes_io"]:
            continue
        same = {q["path"]: q for q in rows if q["backbone"] == r["backbone"] and q["mode"] == r["mode"]
                and not q["includes_io"]}
        if "reference" in same:
            r["speedup_vs_reference"] = r["fps"] / same["reference"]["fps"]
            r["speedup_best_vs_reference"] = r["fps_best"] / same["reference"]["fps_best"]
        if r["path"] != "fast" and "fast" in same:
            r["speedup_vs_fast"] = r["fps"] / same["fast"]["fps"]
            r["speedup_best_vs_fast"] = r["fps_best"] / same["fast"]["fps_best"]
        for peer in PEERS:
            if peer in same:
                r[f"fast_vs_{key(peer)}"] = r["fps"] / same[peer]["fps"]
                r[f"fast_vs_{key(peer)}_best"] = r["fps_best"] / same[peer]["fps_best"]


def print_table(rows: list[dict]) -> None:
    """One line per path and mode, then the fast paths' ratios."""
    timed = [r for r in rows if not r["includes_io"]]
    if not timed:
        return
    print("\n| backbone | mode | batch | path | precision | FPS | FPS (best call) | median ms | vs fast |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in timed:
        fast = next((q for q in timed if q["path"] == "fast" and q["backbone"] == r["backbone"]
                     and q["mode"] == r["mode"]), None)
        rel = f"{fast['fps'] / r['fps']:.2f}x" if fast and r["path"] != "fast" else "-"
        print(f"| {r['backbone']} | {r['mode']} | {r['batch']} | {r['path']} | {r['precision']} | {r['fps']:.2f} | "
              f"{r['fps_best']:.2f} | {r['latency_ms']['median']:.1f} | {rel} |")
    for r in timed:
        for peer in ("reference", *PEERS):
            k = "speedup_vs_reference" if peer == "reference" else f"fast_vs_{key(peer)}"
            kb = "speedup_best_vs_reference" if peer == "reference" else f"fast_vs_{key(peer)}_best"
            if k in r:
                print(f"  {r['backbone']} {r['mode']}: {r['path']}/{peer} = {r[k]:.2f}x (throughput), "
                      f"{r[kb]:.2f}x (best call of each)")


def accuracy_fields(seg, ref_seg, clips) -> dict:
    """``jf_vs_fp32`` and the mean probability difference of ``seg`` against the fp32 fast path."""
    from pdnet.inference.cpu import mask_agreement_jf

    res = mask_agreement_jf(seg, ref_seg, clips)  # {"J", "F", "JF", "prob_mae", "prob_max", "frames"}
    return {"jf_vs_fp32": res["JF"], "mean_prob_diff_vs_fp32": res["prob_mae"], "accuracy_vs_fp32": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", nargs="+", default=None, choices=list(pdnet.model.BACKBONE_CHANNELS),
                    help="random-weight models (default resnet50); with --checkpoint: the checkpoint's backbone")
    ap.add_argument("--checkpoint", default=None,
                    help="time this trained model (pdnet.load) instead of random weights (--bn-stats is then unused)")
    ap.add_argument("--size", type=int, default=480, help="model input size (square, multiple of 32)")
    ap.add_argument("--batch", type=int, default=16, help="batch of the batched mode")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="fast path precision (auto: bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--modes", nargs="+", default=["streaming", "batched"], choices=["streaming", "batched"])
    ap.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=["reference", "fast"])
    ap.add_argument("--peers", nargs="+", default=[], choices=PEERS,
                    help="other engines timed with the same frames and work: ONNX Runtime on the exported graphs, "
                         "torch.compile of the plain model (compile-freeze: with Inductor freezing)")
    ap.add_argument("--compile", action="store_true",
                    help="also time path fast-compile: VideoSegmenter(compile=True), Inductor with frozen weights")
    ap.add_argument("--int8", action="store_true",
                    help="also time path fast-int8: VideoSegmenter(quantize='int8') calibrated on --calib-clips")
    ap.add_argument("--calib-clips", type=int, default=4, help="synthetic clips calibrating --int8")
    ap.add_argument("--accuracy-clips", type=int, default=2,
                    help="held-out synthetic clips of the bf16 / int8 rows' jf_vs_fp32 (0: skip)")
    ap.add_argument("--clip-frames", type=int, default=6, help="frames per synthetic clip (at the input size)")
    ap.add_argument("--bn-stats", default="synthetic", choices=list(BN_STATS),
                    help="BatchNorm running statistics of the random-weight model: estimated on synthetic frames "
                         "(default), uniform random, or PyTorch's initial ones")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset of the ort peer's export")
    ap.add_argument("--onnx-cache", default=None,
                    help="keep the ort peer's export in this folder (one subfolder per backbone, size, opset and "
                         "weights hash) and reuse it in later runs (default: a temporary folder)")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--no-winograd", action="store_true",
                    help="fast paths: direct 3x3 convolutions (default: Winograd on the CPU float32 fast path)")
    ap.add_argument("--e2e", action="store_true", help="also time segment_video on a synthetic clip")
    ap.add_argument("--e2e-frames", type=int, default=120)
    ap.add_argument("--e2e-size", default="480x854", help="HxW of the synthetic clip's frames")
    ap.add_argument("--e2e-batch", type=int, default=None, help="batch of the e2e run (default: --batch)")
    ap.add_argument("--overlay", action="store_true", help="e2e: also encode the overlay video")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (and ONNX Runtime's intra-op)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.batch < 1:
        ap.error(f"--iters must be >= 1, --warmup >= 0 and --batch >= 1, got {args.iters}, {args.warmup}, "
                 f"{args.batch}")
    if args.calib_clips < 1 or args.accuracy_clips < 0 or args.clip_frames < 2:
        ap.error(f"--calib-clips must be >= 1, --accuracy-clips >= 0 and --clip-frames >= 2, got "
                 f"{args.calib_clips}, {args.accuracy_clips}, {args.clip_frames}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if args.int8 and device.type != "cpu":
        ap.error(f"--int8 runs on the CPU only, got --device {device}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    size = (args.size, args.size)
    dev_name = device_name(device)
    channels_last = not args.no_channels_last
    variants = (["fast"] if "fast" in args.paths else []) + (["fast-compile"] if args.compile else []) + (
        ["fast-int8"] if args.int8 else [])
    peers = list(dict.fromkeys(args.peers))
    common = {
        "bench": "fps",
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "device": dev_name,
        "commit": git_commit(),
        "torch": torch.__version__,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "size": args.size,
        "ops_backends": pdnet.ops.available_backends(device.type),
        "checkpoint": args.checkpoint,
        "bn_stats": "checkpoint" if args.checkpoint else args.bn_stats,
        "bn_stats_how": "the checkpoint's" if args.checkpoint else BN_STATS[args.bn_stats],
    }
    print(f"device: {dev_name}; torch {torch.__version__}; input {args.size}x{args.size}; "
          f"{torch.get_num_threads()} threads")
    rows = []

    def record(row):
        row = {**common, **row, "loadavg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
        rows.append(row)
        lat = row.get("latency_ms")
        lat_s = (f"  latency median {lat['median']:.2f} ms (p20 {lat['p20']:.2f}, p80 {lat['p80']:.2f}, "
                 f"min {lat['min']:.2f})" if lat else "")
        print(f"  {row['backbone']:<9} {row['path']:<14} {row['mode']:<9} batch {row['batch']:<3} "
              f"{row['precision']:<8} io={str(row['includes_io']).lower():<5} {row['fps']:9.2f} FPS{lat_s}")

    calib = accuracy = None
    if args.int8:
        calib = synthetic_clips(args.calib_clips, 0, args.clip_frames, size)
    if args.checkpoint and args.backbone and len(args.backbone) > 1:
        ap.error(f"--checkpoint holds one model, got --backbone {' '.join(args.backbone)}")
    for backbone in args.backbone or ([None] if args.checkpoint else ["resnet50"]):
        if args.checkpoint:
            model = pdnet.load(args.checkpoint, backbone=backbone, input_size=size).eval()
            backbone = model.config.backbone
        else:
            torch.manual_seed(0)
            model = pdnet.PDNet(pdnet.PDNetConfig(backbone=backbone, input_size=size)).eval()
            set_batchnorm_stats(model, args.bn_stats)
        segs, extras_of = {}, {}
        for v in variants:
            kw = {"compile": True} if v == "fast-compile" else {}
            if v == "fast-int8":
                kw = {"quantize": "int8", "calibration": calib}
            if args.no_winograd:
                kw["winograd"] = False
            try:
                segs[v] = VideoSegmenter(model, device=device, dtype=dtype, fast=True, channels_last=channels_last,
                                         cuda_graphs=False if args.no_cuda_graphs else None, **kw)
            except TypeError as e:
                if kw and "unexpected keyword" in str(e):
                    raise SystemExit(f"bench_fps.py: path {v} needs VideoSegmenter({', '.join(kw)}=...), which this "
                                     f"checkout's pdnet lacks ({e})") from None
                raise
            s = segs[v]
            extras_of[v] = {"engine": "pdnet VideoSegmenter (FastPDNet)",
                            "precision": "int8" if v == "fast-int8" else str(s.dtype).replace("torch.", ""),
                            "channels_last": s.channels_last, "cuda_graphs": s.cuda_graphs,
                            "compile": v == "fast-compile", "quantize": "int8" if v == "fast-int8" else None,
                            "winograd": s.winograd}
            if v == "fast-int8":
                extras_of[v]["calibration"] = {"clips": args.calib_clips, "frames": args.clip_frames,
                                               "generator": "pdnet.data.synth.ClipRenderer", "seed": CLIP_SEED,
                                               "indices": [0, args.calib_clips]}
        # the fp32 fast path: the oracle of max_prob_diff_vs_fast and of the accuracy fields
        fp32_seg = None
        if variants or peers:
            fp32_seg = segs["fast"] if "fast" in segs and segs["fast"].dtype == torch.float32 else VideoSegmenter(
                model, device=device, dtype="float32", fast=True, channels_last=channels_last, cuda_graphs=False)
        for v, s in segs.items():
            if args.accuracy_clips and (extras_of[v]["precision"] != "float32"):
                if accuracy is None:
                    accuracy = synthetic_clips(args.accuracy_clips, ACCURACY_FIRST_INDEX, args.clip_frames, size)
                extras_of[v].update(accuracy_fields(s, fp32_seg, accuracy))
                extras_of[v]["accuracy_clips"] = {
                    "clips": args.accuracy_clips, "frames": args.clip_frames,
                    "generator": "pdnet.data.synth.ClipRenderer", "seed": CLIP_SEED,
                    "indices": [ACCURACY_FIRST_INDEX, ACCURACY_FIRST_INDEX + args.accuracy_clips],
                    "held_out_from_calibration": True}
                print(f"  {backbone} {v}: J&F vs fp32 {extras_of[v]['jf_vs_fp32']}, mean |prob diff| "
                      f"{extras_of[v]['mean_prob_diff_vs_fp32']}")
        peer_objs, cleanup = {}, None
        if "ort" in peers:
            folder, export_s, cleanup = onnx_export(model, size, args.opset, args.onnx_cache)
            peer_objs["ort"] = OrtPeer(folder, device, size, torch.get_num_threads())
            extras_of["ort"] = {"engine": "onnxruntime", "precision": "float32", "channels_last": False,
                                "cuda_graphs": False, "export_s": export_s, "export_reused": export_s is None,
                                **peer_objs["ort"].info}
        for peer in ("compile", "compile-freeze"):
            if peer in peers:
                peer_objs[peer] = CompilePeer(model, device, size, channels_last, freezing=peer == "compile-freeze")
                extras_of[peer] = {"engine": "torch.compile (PDNet)", "precision": "float32",
                                   "channels_last": channels_last, "cuda_graphs": False, **peer_objs[peer].info}
        ref_model = model.to(device) if "reference" in args.paths else None
        if ref_model is not None:
            extras_of["reference"] = {"engine": "torch eager (PDNet)", "precision": "float32",
                                      "channels_last": False, "cuda_graphs": False}
        for mode in args.modes:
            B = 1 if mode == "streaming" else args.batch
            clip = torch.from_numpy(synthetic_clips(1, FRAMES_CLIP, B + 1, size)[0]).permute(0, 3, 1, 2)
            first = clip[:1].contiguous().to(device)  # the reference frame: [1, 3, H, W] uint8
            frames = clip[1:].contiguous().to(device)  # the targets: [B, 3, H, W] uint8
            fns, extras = {}, {}
            with torch.inference_mode():
                if ref_model is not None:
                    fns["reference"] = functools.partial(reference_step, ref_model, frames, first, size)
                    extras["reference"] = {**extras_of["reference"], "reference_cached": False}
                for v, s in segs.items():
                    fns[v] = functools.partial(s.predict, frames, s.encode_reference(first))
                    extras[v] = {**extras_of[v], "reference_cached": True}
                for peer, obj in peer_objs.items():
                    fns[peer] = functools.partial(obj, frames, obj.state(first, B))
                    extras[peer] = {**extras_of[peer], "reference_cached": True}
                oracle = None
                if fp32_seg is not None:
                    oracle = fp32_seg.predict(frames, fp32_seg.encode_reference(first)).float().clone()
                for name, fn in fns.items():  # the first call: compiles, allocates; checks the function
                    t0 = time.perf_counter()
                    out = fn()
                    sync(device)
                    extras[name]["first_call_s"] = time.perf_counter() - t0
                    if oracle is not None:
                        extras[name]["max_prob_diff_vs_fast"] = (out.float() - oracle).abs().max().item()
                timings = measure(fns, device, args.warmup, args.iters)
            for path, (total, lat) in timings.items():
                record({"backbone": backbone, "path": path, "mode": mode, "batch": B, "includes_io": False,
                        "iters": args.iters, "warmup": args.warmup, "fps": B * args.iters / total,
                        "fps_best": B / min(lat), "latency_ms": quantiles(lat), "same_frames": True,
                        "same_preprocess": True, "scope": SCOPE, **extras[path]})
        if args.e2e:
            seg = segs.get("fast") or VideoSegmenter(model, device=device, dtype=dtype, fast=True,
                                                     channels_last=channels_last,
                                                     cuda_graphs=False if args.no_cuda_graphs else None)
            eh, ew = (int(s) for s in args.e2e_size.lower().split("x"))
            eb = args.e2e_batch or args.batch
            with tempfile.TemporaryDirectory() as tdir:
                clip = Path(tdir) / "clip.mp4"
                synthetic_clip(clip, args.e2e_frames, (eh, ew))
                segment_video(seg, clip, Path(tdir) / "warm", batch_size=eb, progress=False, overlay=args.overlay)
                res = segment_video(seg, clip, Path(tdir) / "out", batch_size=eb, progress=False,
                                    overlay=args.overlay)
            record({"backbone": backbone, "path": "fast", "mode": "e2e", "batch": eb, "includes_io": True,
                    "io": f"H.264 decode {eh}x{ew}, resize, mask PNG per frame"
                          + (", overlay H.264 encode" if args.overlay else ""),
                    "iters": res["frames"], "fps": res["fps"], "precision": str(seg.dtype).replace("torch.", ""),
                    "channels_last": seg.channels_last, "cuda_graphs": seg.cuda_graphs, "reference_cached": True})
        if cleanup is not None:
            cleanup()
        del model, segs, ref_model, peer_objs, fp32_seg

    add_ratios(rows)
    print_table(rows)
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", (dev_name if device.type == "cuda" else "cpu").lower()).strip("-")
        path = out / f"fps_{slug}.jsonl"
        command = " ".join(["bench/bench_fps.py", *(argv if argv is not None else sys.argv[1:])])
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "command": command}) + "\n")
        print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
