"""CPU options of the fast path: Inductor with frozen weights, bfloat16, int8 (PT2E), and their accuracy cost.

:class:`pdnet.inference.VideoSegmenter` uses this module for

* ``compile=True``: the fast net's per-frame step and its reference encoder are compiled
  by ``torch.compile`` (Inductor) with ``torch._inductor.config.freezing`` switched on
  for the compilation only (``config.patch``; the global configuration is left alone).
  Freezing makes the weights constants of the compiled code: BatchNorm-folded
  convolutions are pre-packed for oneDNN and constant-folded. Changing the model's
  weights afterwards does not change the compiled segmenter: build a new one.
  Each graph is compiled for static shapes, one compilation per batch size (a video
  pipeline sees batch 1, or its batch size and one smaller last batch); a batch smaller
  than one already compiled (other than 1) is padded up to it instead of compiled anew,
  see :class:`FrozenCompiled`.
* ``dtype="bfloat16"`` on the CPU: only where the CPU computes bf16 natively
  (:func:`cpu_bf16_supported`: AVX-512 BF16 or AMX on x86, the BF16 extension on Arm);
  elsewhere oneDNN would emulate it, slower than float32.
* ``quantize="int8"``: post-training static quantisation of the per-frame step with
  torchao's PT2E flow (:func:`quantize_step_int8`): ``torch.export`` of the step,
  ``prepare_pt2e`` with ``X86InductorQuantizer`` (its default configuration: int8
  per-channel symmetric weights, uint8 per-tensor affine activations from histogram
  observers, convolutions and the ops between them), calibration on the frames of
  user-given clips, ``convert_pt2e``, then Inductor with freezing, which lowers the
  quantised convolutions to oneDNN's int8 kernels (AMX / AVX-512 VNNI). The reference
  encoder (once per clip) stays float32 (eager, or compiled with ``compile=True``): the
  reference's keys and values enter every frame's attention, so their error would reach
  every frame, while their cost is one frame per clip.

:func:`mask_agreement_jf` measures what bf16 or int8 costs: the DAVIS J&F of one
segmenter's binary masks against another's (e.g. float32), with the probability errors.
"""
from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

#: the optional dependency of ``quantize="int8"`` and the extra that installs it
INT8_EXTRA = "deploy"


# ---------------------------------------------------------------------------- capabilities
def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively, so that bf16 convolutions pay off.

    x86: AVX-512 BF16 or AMX tiles (``torch.cpu._is_avx512_bf16_supported`` /
    ``_is_amx_tile_supported``); Arm: oneDNN's bf16 check, which there tests the BF16
    extension. oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is
    also true on x86 CPUs with plain AVX-512, where it emulates bf16: not counted here.
    """
    if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if torch.cpu._is_avx2_supported():  # x86
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return True  # non-x86: oneDNN's check is the hardware's bf16 extension


def check_cpu_bf16(device: torch.device) -> None:
    """Raise a one-line ValueError when bf16 is asked for on a CPU without native bf16."""
    if device.type == "cpu" and not cpu_bf16_supported():
        raise ValueError(
            "dtype bfloat16 on the CPU needs native bf16 (AVX-512 BF16 or AMX on x86, BF16 on Arm), "
            "which this CPU lacks; use dtype float32"
        )


def torchao_installed() -> bool:
    """Whether torchao (the PT2E quantisation flow of ``quantize="int8"``) is importable."""
    return importlib.util.find_spec("torchao") is not None


def check_torchao() -> None:
    """Raise a one-line ImportError when torchao (the PT2E quantisation flow) is missing."""
    if not torchao_installed():
        raise ImportError(
            f"quantize='int8' needs torchao, which is not installed: pip install 'pdnet[{INT8_EXTRA}]' "
            "(or pip install torchao)"
        )


# ---------------------------------------------------------------------------- clips
def as_clip(clip, what: str) -> torch.Tensor:
    """One clip -> Tensor[T, 3, H, W] uint8 (CPU).

    Args:
        clip: uint8 numpy array or tensor [T, H, W, 3] (decoder layout) or [T, 3, H, W].
        what: how errors name the clip (``"calibration clip 2"``).
    """
    if isinstance(clip, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(clip))
    elif isinstance(clip, torch.Tensor):
        t = clip.detach().cpu()
    else:
        raise TypeError(f"{what}: expected a uint8 numpy array or tensor [T, H, W, 3], got {type(clip).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"{what}: frames must be uint8 (0..255), got {t.dtype}")
    if t.dim() != 4 or 3 not in (t.shape[1], t.shape[-1]):
        raise ValueError(f"{what}: expected frames [T, H, W, 3] or [T, 3, H, W], got shape {tuple(t.shape)}")
    if t.shape[1] != 3:  # [T, H, W, 3]
        t = t.permute(0, 3, 1, 2)
    if 0 in t.shape:
        raise ValueError(f"{what}: empty clip of shape {tuple(t.shape)}")
    return t


def _clips(clips, what: str) -> Iterator[torch.Tensor]:
    if isinstance(clips, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{what}: expected an iterable of clips (a list of [T, H, W, 3] arrays), got one array")
    if not isinstance(clips, Iterable):
        raise TypeError(f"{what}: expected an iterable of clips, got {type(clips).__name__}")
    n = 0
    for i, clip in enumerate(clips):
        yield as_clip(clip, f"{what} {i}")
        n += 1
    if n == 0:
        raise ValueError(f"{what}: no clips")


def checked_clips(clips, what: str) -> list[torch.Tensor]:
    """Every clip of an iterable as Tensor[T, 3, H, W] uint8 (see :func:`as_clip`); errors name the clip."""
    return list(_clips(clips, what))


# ---------------------------------------------------------------------------- compiled graphs
class _Step(nn.Module):
    """The fast net's step without the final upsampling: logits at stride 4 of the input.

    ``FastPDNet.forward`` upsamples the head's output to ``size``; asked for the head's
    own size it returns it unchanged, so the caller's ``upsample`` to the frame size
    gives exactly the eager path's result, and the graph does not depend on frame sizes.
    Keys and values of batch 1 are expanded to the frames' batch.
    """

    def __init__(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.out_size = (input_size[0] // 4, input_size[1] // 4)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        keys = keys.expand(B, *keys.shape[1:])  # [B, p, N, d]
        values = values.expand(B, *values.shape[1:])
        return self.net(x, keys, values, self.out_size)  # [B, 1, H/4, W/4]


class _Encode(nn.Module):
    """The fast net's reference encoder: frame [1, 3, H, W] -> (keys, values) [1, p, N, d]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.net.encode_reference(x)
        return state.keys, state.values


class FrozenCompiled:
    """``torch.compile(module, dynamic=False)`` with Inductor freezing, batch by batch.

    Every call runs under ``torch._inductor.config.patch(freezing=True)``: freezing is
    read when Inductor compiles, which happens at the first call of each input shape.
    Shapes are static (one compilation per batch size): a batch size not compiled yet
    is padded (its last frame repeated) up to the smallest compiled batch size above it,
    unless it is 1, so that a clip's smaller last batch costs a little padding instead
    of a compilation. Pass ``pad=False`` to compile every batch size.

    Args:
        module: takes tensors whose dim 0 is the batch (the first argument's batch sets
            it; arguments of batch 1 are broadcast) and returns a tensor of that batch.
    """

    def __init__(self, module: nn.Module, pad: bool = True) -> None:
        self.module = module
        self.pad = bool(pad)
        self.compiled = torch.compile(module, backend="inductor", dynamic=False)
        self.batch_sizes: set[int] = set()

    def _padded_batch(self, B: int) -> int:
        if not self.pad or B == 1 or B in self.batch_sizes:
            return B
        above = [s for s in self.batch_sizes if s > B]
        return min(above) if above else B

    def __call__(self, *args: torch.Tensor):
        import torch._inductor.config as inductor_config

        B = args[0].shape[0]
        P = self._padded_batch(B)
        if P != B:
            args = tuple(
                torch.cat([a, a[-1:].expand(P - B, *a.shape[1:])]) if a.shape[0] == B else a for a in args
            )
        with inductor_config.patch(freezing=True):
            out = self.compiled(*args)
        self.batch_sizes.add(P)
        return out[:B] if P != B else out


def compile_fast(net: nn.Module, input_size: tuple[int, int]) -> tuple[FrozenCompiled, FrozenCompiled]:
    """(step, encode): the fast net's stride-4 step ``(x, keys, values) -> logits`` and its
    reference encoder ``x -> (keys, values)``, compiled with frozen weights.

    The attention, part masks and assembly run the reference (pure PyTorch) ops inside the
    graphs, which Inductor fuses; the net itself is not changed (a shallow copy carries
    the backend choice).
    """
    graph_net = copy.copy(net)  # shares the parameters; its own ``backend`` attribute
    graph_net.backend = "reference"
    return FrozenCompiled(_Step(graph_net, input_size)), FrozenCompiled(_Encode(graph_net))


# ---------------------------------------------------------------------------- int8
def quantize_step_int8(
    net: nn.Module,
    input_size: tuple[int, int],
    calibration,
    prepare_input: Callable[[torch.Tensor], torch.Tensor],
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4,
) -> tuple[FrozenCompiled, int]:
    """The fast net's stride-4 step quantised to int8 (PT2E, X86InductorQuantizer), calibrated.

    Args:
        net: a float32 :class:`FastPDNet` on the CPU (not changed).
        input_size: (H, W) of the model input.
        calibration: iterable of clips (uint8 [T, H, W, 3] or [T, 3, H, W]); each clip's
            first frame is its reference, and every frame (the first too, as
            :meth:`VideoSegmenter.step` does) is a calibration target.
        prepare_input: uint8 frames [B, 3, H, W] -> model input (resized, normalised).
        encode: model input [1, 3, H, W] -> (keys, values) of the reference.
        batch_size: frames per calibration forward.

    Returns:
        (the compiled int8 step, taking (x, keys, values) like :func:`compile_fast`'s,
        the number of calibration frames).
    """
    check_torchao()
    clips = checked_clips(calibration, "calibration clip")  # every clip checked before the export
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    graph_net = copy.copy(net)
    graph_net.backend = "reference"  # plain aten ops in the exported graph
    step = _Step(graph_net, input_size).eval()
    H, W = input_size
    x = torch.zeros(2, 3, H, W).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        keys, values = encode(x[:1])
    batch = torch.export.Dim("batch", min=1, max=4096)
    # strict (dynamo) export: it records each call of a module that a torchvision block
    # calls twice (its ReLU) as its own source partition, which the quantizer needs
    exported = torch.export.export(step, (x, keys, values), dynamic_shapes=({0: batch}, None, None), strict=True)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    frames = 0
    with torch.no_grad():
        for clip in clips:
            keys, values = encode(prepare_input(clip[:1]))
            for i in range(0, clip.shape[0], batch_size):
                prepared(prepare_input(clip[i : i + batch_size]), keys, values)
            frames += clip.shape[0]
    converted = convert_pt2e(prepared)
    return FrozenCompiled(converted), frames


# ---------------------------------------------------------------------------- accuracy
@torch.inference_mode()
def _clip_probs(seg, clip: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Probabilities Tensor[T, H, W] float32 (CPU) of a clip against its first frame."""
    state = seg.encode_reference(clip[:1])
    chunks = [clip[i : i + batch_size] for i in range(0, clip.shape[0], batch_size)]
    return torch.cat([seg.predict(c, state)[:, 0].float().cpu() for c in chunks])  # [T, H, W]


def mask_agreement_jf(seg, ref_seg, clips, batch_size: int = 1) -> dict:
    """How closely ``seg``'s masks follow ``ref_seg``'s (e.g. int8 or bf16 against float32).

    Both segmenters run every clip, its first frame the reference (the release protocol:
    the first frame is segmented too); ``seg``'s binary masks (p >= 0.5) are scored with
    the DAVIS J and F (:func:`pdnet.evaluation.evaluate_arrays`, bit-identical to the
    toolkit) against ``ref_seg``'s binary masks as the ground truth.

    Args:
        seg, ref_seg: :class:`pdnet.inference.VideoSegmenter` (anything with its
            ``encode_reference`` and ``predict``).
        clips: iterable of clips, uint8 numpy arrays / tensors [T, H, W, 3] or [T, 3, H, W].
        batch_size: frames per ``predict`` call.

    Returns:
        ``{"J", "F", "JF"}`` (DAVIS means over the clips, J&F = (J + F) / 2),
        ``"prob_mae"`` (mean |p - p_ref| over every pixel of every frame), ``"prob_max"``
        (max |p - p_ref|) and ``"frames"`` (frames compared).
    """
    from ..evaluation import evaluate_arrays

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"mask_agreement_jf: batch_size must be a positive integer, got {batch_size!r}")
    pairs, total, abs_sum, abs_max = {}, 0, 0.0, 0.0
    for i, clip in enumerate(_clips(clips, "mask_agreement_jf: clip")):
        p, p_ref = _clip_probs(seg, clip, batch_size), _clip_probs(ref_seg, clip, batch_size)
        if p.shape != p_ref.shape:
            raise ValueError(f"mask_agreement_jf: clip {i}: masks of shape {tuple(p.shape)} vs {tuple(p_ref.shape)}")
        diff = (p.double() - p_ref.double()).abs()
        abs_sum += float(diff.sum())
        abs_max = max(abs_max, float(diff.max()))
        total += diff.numel()
        pairs[f"clip{i:04d}"] = (p >= 0.5, p_ref >= 0.5)
    result = evaluate_arrays(pairs, protocol="davis", device="cpu")
    return {
        "J": result.J.mean,
        "F": result.F.mean,
        "JF": result.JF,
        "prob_mae": abs_sum / total,
        "prob_max": abs_max,
        "frames": sum(s.frames for s in result.sequences.values()),
    }
