"""Run an exported PDNet folder with ONNX Runtime and numpy only: :class:`OnnxSegmenter`.

The folder is what :func:`pdnet.deploy.export_onnx` (``pdnet export --format onnx``)
writes: ``export.json``, ``encode_reference.onnx`` and ``step.onnx``. This module
imports numpy and onnxruntime and nothing else (no torch, no OpenCV, no pdnet module
that imports torch), so a deployment needs neither PyTorch nor the pdnet model code.

The test-time protocol is the torch engine's (:class:`pdnet.inference.VideoSegmenter`):

1. each frame (RGB, uint8 or float in [0, 1]) becomes float32 in [0, 1] (``uint8 / 255``),
   is resized to the export's input size, bilinear with half-pixel centres and no
   antialiasing (PyTorch's ``F.interpolate(..., align_corners=False)``, OpenCV's
   ``cv2.resize`` INTER_LINEAR when upscaling), and is normalised ``(x - mean) / std``;
2. the clip's first frame is the reference: ``encode_reference.onnx`` gives its keys and
   values once;
3. ``step.onnx`` gives each frame's stride-4 logits (``logits_stride4``), which are
   upsampled straight to the frame's own size (bilinear, ``align_corners=True``) and
   passed through a sigmoid; ``round(p * 255)`` is the saved mask.

Both resizes are separable: along each axis an output sample is a weighted sum of two
neighbouring input samples, i.e. a row of an interpolation matrix with two non-zero
entries (:func:`interpolation_matrix`), whose weights are computed as PyTorch's kernels
compute them (float32). The frame is resized in that sparse form (two gathers and a
blend per axis, channels last), so that downscaling a large frame costs about as much as
reading it; the small logits map is upsampled by two matrix products (BLAS).
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"pdnet.deploy.runtime needs onnxruntime ({_exc}); install it with: pip install -e \".[deploy]\""
    ) from None

FORMAT = "pdnet-onnx"
FORMAT_VERSION = 1
META_FILE = "export.json"
#: the graphs the engine runs: name -> (input names, output names) it relies on
GRAPHS = {
    "encode_reference": (("reference",), ("keys", "values")),
    "step": (("target", "keys", "values"), ("logits_stride4",)),
}

PathLike = str | os.PathLike


class OnnxFolderError(ValueError):
    """An exported folder that cannot be run: wrong format or version, graphs that do not
    match ``export.json``, a file ONNX Runtime cannot load (one-line message naming it)."""


# ---------------------------------------------------------------------------- resizing
def _source_positions(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """Where each output sample of a bilinear resize reads the input: float32 [out_size],
    computed in float32 as PyTorch's CPU kernels do (so the weights are theirs, bit for bit)."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0.0)
        return scale * dst
    scale = np.float32(in_size) / np.float32(out_size)
    # scale * (dst + 0.5) - 0.5 rounded once, as a fused multiply-add does (PyTorch's kernels are compiled with
    # FMA contraction): the float64 product of two float32 numbers is exact, the difference too at these sizes
    src = (np.float64(scale) * (dst.astype(np.float64) + 0.5) - 0.5).astype(np.float32)
    return np.maximum(src, np.float32(0.0))  # half-pixel centres, clamped at the first sample


def bilinear_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of a 1-D bilinear resize ``in_size -> out_size``.

    Args:
        in_size, out_size: positive lengths.
        align_corners: False: half-pixel centres (``F.interpolate(..., align_corners=False)``,
            no antialiasing); True: the first and last samples of input and output coincide.

    Returns:
        (lo, hi, frac): int64 [out_size] indices of the two input samples and float32
        [out_size] weights; output ``j`` is ``in[lo[j]] * (1 - frac[j]) + in[hi[j]] * frac[j]``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear resize: sizes must be positive, got {in_size} -> {out_size}")
    src = _source_positions(in_size, out_size, align_corners)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = np.clip(src - lo.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return lo, hi, frac.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """The 1-D bilinear resize ``in_size -> out_size`` as a float32 matrix [out_size, in_size]
    (two non-zero entries per row; see :func:`bilinear_taps`). Cached: do not modify it."""
    lo, hi, frac = bilinear_taps(in_size, out_size, align_corners)
    m = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, lo), np.float32(1.0) - frac)
    np.add.at(m, (rows, hi), frac)
    m.flags.writeable = False
    return m


def _resize_axis(x: np.ndarray, axis: int, out_size: int, align_corners: bool, scale: float | None) -> np.ndarray:
    """Bilinear resize of ``x`` along ``axis`` to ``out_size`` samples by two gathers and a
    blend, float32 (any layout; the cost is that of reading the two gathered arrays).

    ``scale``: the samples are divided by it after gathering (uint8 frames: 255), which
    gives the same values as converting the whole array first (the conversion is per element).
    """
    in_size = x.shape[axis]
    if in_size == out_size and x.dtype == np.float32 and scale is None:
        return x
    lo, hi, frac = bilinear_taps(in_size, out_size, align_corners)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = frac.reshape(shape)
    a = np.take(x, lo, axis=axis).astype(np.float32, copy=False)
    b = np.take(x, hi, axis=axis).astype(np.float32, copy=False)
    if scale is not None:
        a /= np.float32(scale)
        b /= np.float32(scale)
    # PyTorch's a * (1 - frac) + b * frac (a + (b - a) * frac would round differently)
    a *= np.float32(1.0) - frac
    b *= frac
    a += b
    return a


def resize_bilinear(
    x: np.ndarray, size: tuple[int, int], *, align_corners: bool, axes: tuple[int, int] = (-2, -1)
) -> np.ndarray:
    """Separable bilinear resize of the two ``axes`` of ``x`` to ``size`` (float32 result).

    Equals ``F.interpolate(x, size, mode="bilinear", align_corners=align_corners,
    antialias=False)`` on the same axes, to float32 rounding (the interpolation weights are
    PyTorch's, bit for bit). On the last two axes it is two matrix products with the
    :func:`interpolation_matrix` es (BLAS: the fastest way to upsample a small map to a
    large frame; a non-finite input spreads along its row and column there); on other
    axes (channels-last images) two gather-and-blend passes, the axis that shrinks most first.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear: expected an array of at least 2 dimensions, got shape {x.shape}")
    ah, aw = (a % x.ndim for a in axes)
    if ah == aw:
        raise ValueError(f"resize_bilinear: axes must be two different axes, got {axes}")
    (h, w), (ho, wo) = (x.shape[ah], x.shape[aw]), (int(size[0]), int(size[1]))
    if (ah, aw) == (x.ndim - 2, x.ndim - 1):
        rh = interpolation_matrix(h, ho, align_corners)  # [ho, h]
        rw = interpolation_matrix(w, wo, align_corners).T  # [w, wo]
        if ho * h * w + ho * w * wo <= h * w * wo + ho * h * wo:
            return np.matmul(np.matmul(rh, x), rw)
        return np.matmul(rh, np.matmul(x, rw))
    order = sorted(((ah, ho), (aw, wo)), key=lambda t: t[1] / x.shape[t[0]])
    for axis, n in order:
        x = _resize_axis(x, axis, n, align_corners, None)
    return x


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function in float32, ``1 / (1 + exp(-x))``, numerically stable: where
    ``exp(-x)`` overflows (x < -88.7) the result is 0 (the true value is below 1e-38),
    without a warning; everywhere else the relative error is a few ulp."""
    t = np.negative(np.asarray(x, dtype=np.float32))  # a new array: computed in place from here
    with np.errstate(over="ignore"):
        np.exp(t, out=t)
    t += np.float32(1.0)
    return np.reciprocal(t, out=t)


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 masks ``round(p * 255)`` (same shape)."""
    return np.clip(np.rint(np.asarray(probs, dtype=np.float32) * np.float32(255.0)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- the folder
def read_export(folder: PathLike) -> dict[str, Any]:
    """``folder/export.json``, checked (format, version, input size, normalisation, the
    graphs the engine runs); no graph is opened.

    Raises:
        FileNotFoundError: no folder or no export.json.
        OnnxFolderError: anything else, in one line naming the file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder (an ONNX export: pdnet export CHECKPOINT --format onnx)")
    if not folder.is_dir():
        raise OnnxFolderError(f"{folder}: not a folder (an ONNX export: pdnet export CHECKPOINT --format onnx)")
    path = folder / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {folder} is not an ONNX export of pdnet")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxFolderError(f"{path}: cannot be read as JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise OnnxFolderError(f"{path}: format {got!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise OnnxFolderError(
            f"{path}: format_version {meta.get('format_version')!r}; this engine reads version {FORMAT_VERSION}"
        )
    size = meta.get("input_size")
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise OnnxFolderError(f"{path}: input_size must be [H, W] with positive integers, got {size!r}")
    norm = meta.get("normalisation")
    for key in ("mean", "std"):
        values = norm.get(key) if isinstance(norm, dict) else None
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise OnnxFolderError(f"{path}: normalisation.{key} must be 3 numbers, got {values!r}")
    if any(v <= 0 for v in norm["std"]):
        raise OnnxFolderError(f"{path}: normalisation.std must be positive, got {norm['std']!r}")
    graphs = meta.get("graphs")
    for name in GRAPHS:
        entry = graphs.get(name) if isinstance(graphs, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise OnnxFolderError(f"{path}: graphs.{name} with its file name is missing")
    return meta


def _names(entry: Mapping[str, Any], key: str) -> list[str]:
    items = entry.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return []
    return [i["name"] for i in items]


def default_providers() -> list[str]:
    """CUDAExecutionProvider first when this onnxruntime has it, then CPUExecutionProvider."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _check_frames(frames: Any, what: str) -> np.ndarray:
    """Frames as numpy [H, W, 3] / [B, H, W, 3] RGB, uint8 or float -> [B, H, W, 3] (not copied)."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{what}: frames must be a numpy array [H, W, 3] or [B, H, W, 3] RGB, "
                        f"got {type(frames).__name__}")
    if frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"{what}: frames must be [H, W, 3] or [B, H, W, 3] RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"{what}: frames must be uint8 (0..255) or floating point (0..1), got {frames.dtype}")
    batch = frames[None] if frames.ndim == 3 else frames
    if 0 in batch.shape:
        raise ValueError(f"{what}: frames must be non-empty, got shape {frames.shape}")
    return batch


class OnnxSegmenter:
    """Segments the frames of one clip against a reference frame, with ONNX Runtime.

    The numpy counterpart of :class:`pdnet.inference.VideoSegmenter` on an exported
    folder. Streaming::

        seg = OnnxSegmenter("export/")
        for frame in frames:                  # numpy [H, W, 3] uint8 RGB
            prob = seg.step(frame)            # float32 [1, H, W] in [0, 1]
        seg.reset()                           # next clip

    Batched / explicit state::

        state = seg.encode_reference(first_frame)   # {"keys": ..., "values": ..., "frame_size": ...}
        probs = seg.predict(frames, state)          # [B, H, W, 3] -> float32 [B, 1, H, W]

    Args:
        folder: the export (``export.json``, ``encode_reference.onnx``, ``step.onnx``).
        providers: ONNX Runtime execution providers, names or (name, options) pairs
            (default: :func:`default_providers`).
        threads: intra-op threads of each session (default: ONNX Runtime's choice).
        session_options: an ``onnxruntime.SessionOptions`` to start from (``threads``
            overrides its intra-op thread count).

    Raises:
        FileNotFoundError: the folder, ``export.json`` or a graph file is missing.
        OnnxFolderError: a wrong format or version, a graph whose inputs or outputs do
            not match ``export.json`` (or whose input size differs), a file ONNX Runtime
            cannot load.
    """

    def __init__(
        self,
        folder: PathLike,
        *,
        providers: Sequence[str | tuple[str, dict]] | None = None,
        threads: int | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        self.folder = Path(folder)
        meta = read_export(self.folder)
        self.meta = meta
        self.input_size: tuple[int, int] = (int(meta["input_size"][0]), int(meta["input_size"][1]))
        self.mean = np.asarray(meta["normalisation"]["mean"], dtype=np.float32)  # [3]
        self.std = np.asarray(meta["normalisation"]["std"], dtype=np.float32)  # [3]
        self.state_names: tuple[str, ...] = tuple(meta.get("state") or ("keys", "values"))
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        opts = session_options if session_options is not None else ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        if providers is None:
            providers = default_providers()
        else:
            providers = list(providers)
            available = ort.get_available_providers()
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            missing = [n for n in names if n not in available]
            if not providers or missing:
                raise ValueError(f"providers {names} not available in this onnxruntime "
                                 f"(it has {', '.join(available)})")
        self.sessions: dict[str, ort.InferenceSession] = {}
        for name in GRAPHS:
            self.sessions[name] = self._open(name, opts, providers)
        self.providers: list[str] = self.sessions["step"].get_providers()
        produced = [o.name for o in self.sessions["encode_reference"].get_outputs()]
        taken = [i.name for i in self.sessions["step"].get_inputs()]
        odd = [n for n in self.state_names if n not in produced or n not in taken]
        if odd:
            raise OnnxFolderError(f"{self.folder / META_FILE}: state {list(self.state_names)}: {', '.join(odd)} is not "
                                  "both an output of encode_reference and an input of step")
        step_inputs = {i.name: i for i in self.sessions["step"].get_inputs()}
        self._state_shape = tuple(step_inputs[self.state_names[0]].shape[1:])  # [p, N, d] (ints when static)
        self.state: dict[str, np.ndarray] | None = None
        self._repeated: tuple | None = None  # (state arrays, batch, repeated arrays): the last repetition

    def _open(self, name: str, opts: ort.SessionOptions, providers: list) -> ort.InferenceSession:
        entry = self.meta["graphs"][name]
        path = self.folder / entry["file"]
        meta_path = self.folder / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (graph {name!r} of {meta_path})")
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types, with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxFolderError(f"{path}: ONNX Runtime cannot load it ({first})") from None
        for key, get in (("inputs", sess.get_inputs), ("outputs", sess.get_outputs)):
            actual = [i.name for i in get()]
            listed = _names(entry, key)
            if actual != listed:
                raise OnnxFolderError(f"{path}: {key} {actual} do not match {meta_path}'s graphs.{name}.{key} {listed}")
        needed_in, needed_out = GRAPHS[name]
        for key, needed, actual in (("input", needed_in, _names(entry, "inputs")),
                                    ("output", needed_out, _names(entry, "outputs"))):
            missing = [n for n in needed if n not in actual]
            if missing:
                raise OnnxFolderError(f"{path}: no {key} named {', '.join(missing)} (has {', '.join(actual)})")
        image = sess.get_inputs()[0] if name == "encode_reference" else {i.name: i for i in sess.get_inputs()}["target"]
        hw = tuple(image.shape[-2:])
        if hw != self.input_size:
            raise OnnxFolderError(f"{path}: input {image.name} is {hw[0]}x{hw[1]}, {meta_path} says input_size "
                                  f"{self.input_size[0]}x{self.input_size[1]}")
        return sess

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """Frames [H, W, 3] / [B, H, W, 3] (uint8, or float in [0, 1]) -> float32
        [B, 3, *input_size], resized and ImageNet-normalised (the torch engine's order:
        ``/ 255``, resize, normalise)."""
        batch = _check_frames(frames, "preprocess")
        h, w = self.input_size
        scale = 255.0 if batch.dtype == np.uint8 else None
        x = batch
        if batch.shape[1:3] == (h, w):
            x = batch.astype(np.float32)
            if scale is not None:
                x /= np.float32(scale)
        else:
            # gather in the frame's own dtype, convert the gathered samples: the axis that shrinks most goes first
            order = sorted(((1, h), (2, w)), key=lambda t: t[1] / batch.shape[t[0]])
            x = _resize_axis(x, order[0][0], order[0][1], False, scale)
            x = _resize_axis(x, order[1][0], order[1][1], False, None)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # [B, 3, h, w], a new array
        x -= self.mean[:, None, None]
        x /= self.std[:, None, None]
        return x

    # ------------------------------------------------------------------ public API
    def encode_reference(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a clip's reference frame ([H, W, 3] or a batch of one) once.

        Returns:
            {"keys": float32 [1, p, N, d], "values": float32 [1, p, N, d],
            "frame_size": int64 [2] (the frame's H, W: the clip's frames must share it)}.
        """
        batch = _check_frames(frame, "encode_reference")
        if batch.shape[0] != 1:
            raise ValueError(f"encode_reference takes one frame, got a batch of {batch.shape[0]}")
        outputs = self.sessions["encode_reference"].run(list(self.state_names), {"reference": self.preprocess(batch)})
        state = dict(zip(self.state_names, outputs, strict=True))
        state["frame_size"] = np.asarray(batch.shape[1:3], dtype=np.int64)
        return state

    def set_reference(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """Encode ``frame`` and keep it as the reference of the following :meth:`step` calls."""
        self.state = self.encode_reference(frame)
        return self.state

    def _state_for(self, state: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """The state arrays fed to step.onnx, checked, a batch-1 state repeated to ``batch``."""
        arrays = []
        for name in self.state_names:
            if name not in state:
                raise ValueError(f"predict: the state has no {name!r} (expected {', '.join(self.state_names)})")
            a = state[name]
            if not isinstance(a, np.ndarray) or a.dtype != np.float32:
                got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(f"predict: state[{name!r}] must be a float32 numpy array, got {got}")
            expected = self._state_shape
            if a.ndim != 1 + len(expected) or any(
                isinstance(e, int) and e != s for e, s in zip(expected, a.shape[1:], strict=True)
            ):
                raise ValueError(f"predict: state[{name!r}] has shape {a.shape}, this export expects "
                                 f"[1 or B, {', '.join(str(e) for e in expected)}] (another export or input size?)")
            if a.shape[0] not in (1, batch):
                raise ValueError(f"predict: state[{name!r}] has batch {a.shape[0]}, the frames {batch} "
                                 "(use a state of one reference frame, or one per frame)")
            arrays.append(a)
        if arrays[0].shape[0] == batch:
            return dict(zip(self.state_names, arrays, strict=True))
        cached = self._repeated
        if cached is not None and cached[1] == batch and all(x is y for x, y in zip(cached[0], arrays, strict=True)):
            return cached[2]
        repeated = {n: np.ascontiguousarray(np.repeat(a, batch, axis=0))
                    for n, a in zip(self.state_names, arrays, strict=True)}
        self._repeated = (arrays, batch, repeated)
        return repeated

    def predict(self, frames: np.ndarray, state: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Foreground probabilities of a batch of frames of one clip.

        Args:
            frames: numpy [B, H, W, 3] (or one frame [H, W, 3]), uint8 or float in [0, 1].
            state: from :meth:`encode_reference` (default: the one set by
                :meth:`set_reference` / the first :meth:`step`); a batch-1 state is
                repeated to the batch.

        Returns:
            float32 [B, 1, H, W] in [0, 1], at the frames' own size.
        """
        state = self.state if state is None else state
        if state is None:
            raise RuntimeError("OnnxSegmenter.predict: no reference frame; call set_reference(frame) first")
        batch = _check_frames(frames, "predict")
        b, hf, wf = batch.shape[:3]
        size = state.get("frame_size") if isinstance(state, Mapping) else None
        if not isinstance(state, Mapping):
            raise TypeError(f"predict: state must be the dict of encode_reference, got {type(state).__name__}")
        if size is not None and tuple(int(s) for s in np.asarray(size).reshape(-1)) != (hf, wf):
            ref = tuple(int(s) for s in np.asarray(size).reshape(-1))
            raise ValueError(f"predict: frames are {hf}x{wf} but the reference frame was "
                             f"{'x'.join(str(s) for s in ref)}; the frames of a clip share one size")
        feeds = {"target": self.preprocess(batch), **self._state_for(state, b)}
        (logits4,) = self.sessions["step"].run(["logits_stride4"], feeds)  # [B, 1, h/4, w/4]
        logits = resize_bilinear(logits4, (hf, wf), align_corners=True)  # [B, 1, Hf, Wf]
        return sigmoid(logits)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Segment the next frame of the clip: float32 [1, H, W] in [0, 1].

        The first frame after construction or :meth:`reset` becomes the reference.
        """
        if self.state is None:
            self.set_reference(frame)
        return self.predict(frame)[0]

    def reset(self) -> None:
        """Forget the reference frame (start a new clip)."""
        self.state = None
        self._repeated = None

    def __repr__(self) -> str:
        return (f"OnnxSegmenter({str(self.folder)!r}, input {self.input_size[0]}x{self.input_size[1]}, "
                f"providers={self.providers})")


def providers_for_device(spec: str | None, name: str = "device") -> list[str | tuple[str, dict]]:
    """ONNX Runtime providers for a device string as ``--device`` takes it.

    ``None`` / ``"auto"``: :func:`default_providers`; ``"cpu"``: CPUExecutionProvider;
    ``"cuda"`` / ``"cuda:N"``: CUDAExecutionProvider (device N), then the CPU for any
    node it lacks. A CUDA device with an onnxruntime without CUDA (the ``onnxruntime``
    wheel rather than ``onnxruntime-gpu``) is a ValueError, as is any other string.
    """
    if spec is None or spec == "auto":
        return default_providers()
    text = str(spec).strip().lower()
    if text in ("cpu", "cpu:0"):
        return ["CPUExecutionProvider"]
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"{name} {spec}: not a device this engine runs on; expected auto, cpu, cuda or cuda:N")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ValueError(f"{name} {spec}: this onnxruntime has no CUDAExecutionProvider (it has "
                         f"{', '.join(available)}; the onnxruntime-gpu package has it)")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
