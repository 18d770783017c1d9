"""Streaming and batched segmentation of one clip: :class:`VideoSegmenter`.

Test-time protocol of the release (DESIGN.md section 3): each frame is resized to the
model input size (bilinear, half-pixel centres, no antialiasing: what the release's
``cv2.resize`` does), ImageNet-normalised, segmented against the clip's first frame as
the reference; the stride-4 logits are upsampled straight to the frame's size (bilinear,
align_corners=True) and passed through a sigmoid. ``round(p * 255)`` is the saved mask.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._device import parse_device
from ..model import PDNet, ReferenceState
from ..model.layers import upsample
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD
from .cpu import check_cpu_bf16
from .fused import FastPDNet

FrameLike = torch.Tensor | np.ndarray

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` / ``"auto"``: bfloat16 on CUDA devices that support it, float16 on older ones, float32 elsewhere.

    An explicit bfloat16 on a CUDA device without bfloat16 support is a ValueError, and so
    is bfloat16 on a CPU without native bf16 (:func:`pdnet.inference.cpu.cpu_bf16_supported`:
    AVX-512 BF16 or AMX on x86), where oneDNN would emulate it, slower than float32.
    """
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif dtype is None or dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif isinstance(dtype, str) and dtype in _DTYPES:
        out = _DTYPES[dtype]
    else:
        raise ValueError(f"dtype must be one of auto, {', '.join(sorted(_DTYPES))} or a torch.dtype, got {dtype!r}")
    if out not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {out}")
    if out == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype bfloat16 is not supported by {device} ({torch.cuda.get_device_name(device)}); "
                         "use float16 or float32")
    if out == torch.bfloat16 and device.type == "cpu":
        check_cpu_bf16(device)
    return out


def as_frame_batch(frames: FrameLike) -> torch.Tensor:
    """RGB frames in the usual layouts -> Tensor[B, 3, H, W] (uint8, or float in [0, 1]).

    Accepts numpy arrays [H, W, 3] / [B, H, W, 3] (as decoders produce them) and tensors
    [3, H, W] / [B, 3, H, W]; uint8 in 0..255 or floating point in [0, 1].
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim not in (3, 4) or frames.shape[-1] != 3:
            raise ValueError(f"frames as a numpy array must be [H, W, 3] or [B, H, W, 3] RGB, got shape {frames.shape}")
        if not frames.flags.writeable:  # e.g. np.asarray(PIL image): torch wants writable memory
            frames = frames.copy()
        t = torch.from_numpy(np.ascontiguousarray(frames))
        t = t.unsqueeze(0) if t.dim() == 3 else t
        t = t.permute(0, 3, 1, 2)  # [B, 3, H, W], channels_last memory
    elif isinstance(frames, torch.Tensor):
        if frames.dim() not in (3, 4) or frames.shape[-3] != 3:
            raise ValueError(
                f"frames as a tensor must be [3, H, W] or [B, 3, H, W] RGB, got shape {tuple(frames.shape)}"
            )
        t = frames.unsqueeze(0) if frames.dim() == 3 else frames
    else:
        raise TypeError(f"frames must be a numpy array or a torch.Tensor, got {type(frames).__name__}")
    if t.dtype != torch.uint8 and not t.is_floating_point():
        raise TypeError(f"frames must be uint8 (0..255) or floating point (0..1), got {t.dtype}")
    if t.shape[0] == 0 or t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"frames must be non-empty, got shape {tuple(t.shape)}")
    return t


def preprocess(frames: torch.Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frames [B, 3, H, W] (uint8 or float in [0, 1]) -> model input [B, 3, size] ImageNet-normalised.

    The resize is bilinear with half-pixel centres and no antialiasing, as the release's
    ``cv2.resize`` (it resizes after normalising; the two commute since the
    normalisation is affine per channel).
    """
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)
    mean, std = _imagenet_constants(x.device)
    return ((x - mean) / std).to(dtype)  # pdnet.preprocess.normalize, with constants made once per device


_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean / std as Tensor[1, 3, 1, 1] float32 on ``device``, created once.

    (Creating them from Python lists inside a CUDA graph capture would be a host-to-device
    copy, which capture forbids; the graph runner's warm-up calls create them first.)
    """
    if device not in _CONSTANTS:
        _CONSTANTS[device] = (
            torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1),
        )
    return _CONSTANTS[device]


def to_uint8(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities in [0, 1] -> uint8 masks ``round(p * 255)`` (same shape)."""
    return torch.round(probs.float() * 255.0).clamp_(0, 255).to(torch.uint8)


class CudaGraphRunner:
    """Replays ``fn(*tensors)`` as a CUDA graph, one graph per input signature.

    The inputs are copied into static buffers and the outputs are static buffers too:
    they are overwritten by the next call, so callers copy what they keep.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = max(1, int(warmup))  # at least one eager call before capture (lazy initialisation)
        self._graphs: dict[tuple, tuple] = {}

    def _capture(self, args: Sequence[torch.Tensor]):
        static = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: cuDNN / Triton autotuning, lazy inits
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static)
        return graph, static, out

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(a.shape), a.dtype) for a in args)  # copy_ below adapts any memory layout
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        graph, static, out = self._graphs[key]
        for s, a in zip(static, args, strict=True):
            s.copy_(a)
        graph.replay()
        return out


class VideoSegmenter:
    """Segments the frames of one clip against a reference frame encoded once.

    Streaming (Cutie's ``InferenceCore.step`` style)::

        seg = VideoSegmenter(model, device="cuda")
        for frame in frames:                 # numpy [H, W, 3] uint8 or Tensor[3, H, W]
            prob = seg.step(frame)           # Tensor[1, H, W] float in [0, 1] on the device
        seg.reset()                          # next clip

    The first frame given to :meth:`step` becomes the reference (the release's protocol)
    unless :meth:`set_reference` was called. Batched / explicit-state use::

        state = seg.encode_reference(first_frame)
        probs = seg.predict(frames, state)   # frames [B, 3, H, W] -> Tensor[B, 1, H, W]

    Args:
        model: a PDNet (eval mode is set). With ``fast=True`` it is copied into a
            :class:`FastPDNet`; with ``fast=False`` it is used (and moved to ``device``) as is.
        device: ``"auto"`` (default: CUDA when available), ``"cpu"``, ``"cuda:1"`` ...
        dtype: compute precision, ``"auto"`` (bf16 on CUDA, else fp32), ``float32``,
            ``bfloat16``, ``float16``. The fast path casts its folded weights; the
            reference path uses autocast for low precision.
        fast: the fast path (folded BatchNorm, batched parts, channels_last, CUDA graphs).
        channels_last: NHWC memory format for the fast path (default: True).
        cuda_graphs: capture the whole step (preprocessing, network, upsampling, sigmoid)
            as a CUDA graph per frame size and batch (default: True on CUDA with ``fast``).
        input_size: (H, W) the frames are resized to (default: the model config's
            ``input_size``, 480x480 for the release).
        compile: CPU only, with ``fast``: the per-frame step and the reference encoder run
            through ``torch.compile`` (Inductor) with frozen weights, compiled at the
            first call of each batch size (see :mod:`pdnet.inference.cpu`). The weights
            are constants of the compiled code: changing the model's weights later needs
            a new segmenter. On CUDA the fast path replays CUDA graphs instead (refused).
        quantize: ``None`` or ``"int8"`` (CPU only, with ``fast`` and float32): the
            per-frame step is quantised after training with torchao's PT2E flow
            (X86InductorQuantizer), calibrated on ``calibration`` at construction, and
            compiled with Inductor (oneDNN int8 kernels); the reference encoder (once per
            clip) stays float32: eager, or compiled with ``compile=True``. Needs torchao
            (the ``deploy`` extra).
        calibration: with ``quantize``: an iterable of clips, each uint8 numpy array or
            tensor [T, H, W, 3] or [T, 3, H, W], its first frame the reference; a few
            clips of the kind of video to segment (e.g. 4 clips of 8 frames).
        winograd: 3x3 stride-1 convolutions as Winograd F(4x4, 3x3) with bias, residual
            and ReLU fused (:mod:`pdnet.inference.winograd`; about 2x fewer multiplications
            on those layers, logits within ~1e-4 of their range of the direct
            convolution's). ``None`` (default): on for the CPU float32 fast path without
            ``quantize`` when the C++ extension is built; ``True`` elsewhere is a ValueError.
    """

    def __init__(
        self,
        model: PDNet,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        fast: bool = True,
        channels_last: bool | None = None,
        cuda_graphs: bool | None = None,
        input_size: int | tuple[int, int] | None = None,
        compile: bool = False,
        quantize: str | None = None,
        calibration=None,
        winograd: bool | None = None,
    ) -> None:
        if not isinstance(model, PDNet):
            raise TypeError(f"VideoSegmenter: model must be a pdnet.PDNet, got {type(model).__name__}")
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.fast = bool(fast)
        if input_size is None:
            input_size = model.config.input_size
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != 2 or any(s <= 0 or s % 32 for s in input_size):
            raise ValueError(f"input_size must be (H, W) with positive multiples of 32, got {input_size}")
        self.input_size: tuple[int, int] = input_size  # type: ignore[assignment]
        self.channels_last = self.fast if channels_last is None else bool(channels_last) and self.fast
        use_graphs = self.fast and self.device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs)
        if use_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        if use_graphs and not self.fast:
            raise ValueError("cuda_graphs=True needs fast=True")
        self.cuda_graphs = use_graphs
        calibration = self._check_cpu_options(bool(compile), quantize, calibration)
        self.quantize: str | None = quantize
        self.compile = bool(compile)
        self.winograd = self._check_winograd(winograd)
        model.eval()
        if self.fast:
            net = FastPDNet(model).to(device=self.device, dtype=self.dtype)
            if self.channels_last:
                net = net.to(memory_format=torch.channels_last)
            if self.winograd:
                from .winograd import convert_winograd

                convert_winograd(net)
            self.net: torch.nn.Module = net.eval()
        else:
            self.net = model.to(self.device).eval()
        self.model_dtype = next(self.net.parameters()).dtype
        self.state: ReferenceState | None = None
        self._graphed = CudaGraphRunner(self._infer) if self.cuda_graphs else None
        self._step = self._encode = None  # compiled graphs (compile / quantize)
        self.calibration_frames = 0
        if self.compile:
            from .cpu import compile_fast

            self._step, self._encode = compile_fast(self.net, self.input_size)
        if quantize == "int8":
            from .cpu import quantize_step_int8

            self._step, self.calibration_frames = quantize_step_int8(
                self.net, self.input_size, calibration, self._input, self._encode_eager
            )

    def _check_winograd(self, winograd: bool | None) -> bool:
        """None: Winograd 3x3 convolutions wherever they apply (CPU float32 fast path, not int8, op built)."""
        from .winograd import winograd_available

        applies = self.device.type == "cpu" and self.fast and self.dtype == torch.float32 and self.quantize is None
        if winograd is None:
            return applies and winograd_available()
        if winograd and not applies:
            raise ValueError(f"winograd=True is for the CPU float32 fast path without quantize, got device "
                             f"{self.device}, dtype {str(self.dtype).removeprefix('torch.')}, fast={self.fast}, "
                             f"quantize={self.quantize!r}")
        if winograd and not winograd_available():
            raise RuntimeError("winograd=True needs the C++ extension's pdnet::winograd_conv3x3 "
                               "(pdnet._C did not load)")
        return bool(winograd)

    def _check_cpu_options(self, compile: bool, quantize: str | None, calibration) -> list[torch.Tensor] | None:
        """Validate compile / quantize / calibration; returns the calibration clips, checked."""
        if quantize is not None:
            if quantize != "int8":
                raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
            if self.device.type != "cpu":
                raise ValueError(f"quantize='int8' runs on the CPU only (oneDNN int8 kernels), got {self.device}")
            if not self.fast:
                raise ValueError("quantize='int8' needs fast=True")
            if self.dtype != torch.float32:
                raise ValueError(f"quantize='int8' keeps the non-quantised ops in float32: use dtype float32, "
                                 f"got {str(self.dtype).removeprefix('torch.')}")
            if calibration is None:
                raise ValueError("quantize='int8' needs calibration clips: calibration=[clip, ...], "
                                 "each uint8 [T, H, W, 3] or [T, 3, H, W]")
            from .cpu import check_torchao, checked_clips

            check_torchao()
            calibration = checked_clips(calibration, "calibration clip")
        elif calibration is not None:
            raise ValueError("calibration is only used with quantize='int8'")
        if compile:
            if self.device.type != "cpu":
                raise ValueError(f"compile=True is for the CPU (Inductor with frozen weights), got "
                                 f"{self.device}; on CUDA the fast path replays CUDA graphs (cuda_graphs=True)")
            if not self.fast:
                raise ValueError("compile=True needs fast=True")
        return calibration

    # ------------------------------------------------------------------ internals
    def _autocast(self):
        low = self.dtype != torch.float32 and not self.fast and self.model_dtype != self.dtype
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=low)

    def _input(self, frames: torch.Tensor) -> torch.Tensor:
        x = preprocess(frames, self.input_size, self.model_dtype)  # [B, 3, h, w]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _infer(self, frames: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, H, W] on the device -> probabilities Tensor[B, 1, H, W] float32."""
        x = self._input(frames)
        size = tuple(frames.shape[-2:])
        if self._step is not None:  # compiled: logits at stride 4, upsampled as FastPDNet.forward does
            return torch.sigmoid(upsample(self._step(x, keys, values), size).float())
        with self._autocast():
            if self.fast:
                logits = self.net(x, keys, values, size)
            else:
                logits = self.net(x, ReferenceState(keys, values, self.input_size), size=size)
        return torch.sigmoid(logits.float())  # [B, 1, H, W]

    def to_device(self, frames: FrameLike) -> torch.Tensor:
        """Frames (see :func:`as_frame_batch`) -> Tensor[B, 3, H, W] on the segmenter's device.

        Host frames go through pinned memory and an asynchronous copy on CUDA.
        """
        t = as_frame_batch(frames)
        if t.device != self.device:
            if self.device.type == "cuda" and t.device.type == "cpu":
                t = t.pin_memory().to(self.device, non_blocking=True)
            else:
                t = t.to(self.device)
        return t

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def encode_reference(self, frame: FrameLike) -> ReferenceState:
        """Encode a reference frame ([H, W, 3] / [3, H, W] / batch of one) once for a clip."""
        t = self.to_device(frame)
        if t.shape[0] != 1:
            raise ValueError(f"encode_reference takes one frame, got a batch of {t.shape[0]}")
        x = self._input(t)
        if self._encode is not None:
            keys, values = self._encode(x)
            return ReferenceState(keys, values, self.input_size)
        with self._autocast():
            state = self.net.encode_reference(x)  # FastPDNet and PDNet share this method
        return ReferenceState(state.keys, state.values, self.input_size)

    def _encode_eager(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input [1, 3, H, W] -> (keys, values) with the uncompiled net."""
        state = self.net.encode_reference(x)
        return state.keys, state.values

    def set_reference(self, frame: FrameLike) -> ReferenceState:
        """Encode ``frame`` and keep it as the reference of the following :meth:`step` calls."""
        self.state = self.encode_reference(frame)
        return self.state

    @torch.inference_mode()
    def predict(self, frames: FrameLike, state: ReferenceState | None = None) -> torch.Tensor:
        """Foreground probabilities of a batch of frames of one clip.

        Args:
            frames: [B, 3, H, W] tensor or [B, H, W, 3] numpy array (or a single frame).
            state: the clip's reference (default: the one set by :meth:`set_reference` /
                the first :meth:`step`).

        Returns:
            Tensor[B, 1, H, W] float32 in [0, 1] on the segmenter's device (with CUDA
            graphs: a buffer overwritten by the next call; copy it to keep it).
        """
        state = self.state if state is None else state
        if state is None:
            raise RuntimeError("VideoSegmenter.predict: no reference frame; call set_reference(frame) first")
        if tuple(state.size) != self.input_size:
            raise ValueError(
                f"the reference state was encoded at {state.size}, this segmenter runs at {self.input_size}"
            )
        t = self.to_device(frames)
        if self._graphed is not None:
            return self._graphed(t, state.keys, state.values)
        return self._infer(t, state.keys, state.values)

    def step(self, frame: FrameLike) -> torch.Tensor:
        """Segment the next frame of the clip: Tensor[1, H, W] float in [0, 1] on the device.

        The first frame after construction or :meth:`reset` becomes the reference.
        """
        if self.state is None:
            self.set_reference(frame)
        prob = self.predict(frame)[0]
        return prob.clone() if self._graphed is not None else prob

    def reset(self) -> None:
        """Forget the reference frame (start a new clip)."""
        self.state = None
