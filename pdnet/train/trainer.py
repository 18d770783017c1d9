"""The release's training recipe (DESIGN.md section 3), fast and resumable: :class:`Trainer`.

Steps alternate image, video, video, image, ... (:mod:`.schedule`). Image steps feed one
still image as both frames and train with :func:`pdnet.losses.image_step_loss`; video
steps feed (target, first frame of the clip) and train with
:func:`pdnet.losses.video_step_loss`, the part basis included. Data order and
augmentation are functions of (seed, epoch, position) (:mod:`.streams`), so a run
resumed from ``RUN/last.pt`` (:mod:`.checkpointing`) replays exactly the batches the
uninterrupted run would have seen.

Safety: a step whose loss is NaN / inf stops the run or is skipped (:mod:`.nonfinite`);
a checkpoint is never written with NaN / inf tensors. SIGINT (Ctrl-C) and SIGTERM
during :meth:`Trainer.fit` write a checkpoint after the current step and raise
:class:`TrainInterrupted` (a second signal stops at once, leaving the previous
checkpoint). Validation (:mod:`.validation`) segments the held-out clips as inference does.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import losses as L
from ..model import PDNet, PDNetConfig
from . import checkpointing
from .distributed import agree, data_parallel, init_distributed
from .errors import TrainError, TrainInterrupted
from .metrics import MetricLog
from .nonfinite import NonFiniteGuard
from .schedule import Schedule
from .streams import build_datasets, build_stream


class TrainModule(nn.Module):
    """PDNet plus the part basis as one module, so DistributedDataParallel syncs both.

    forward(target, reference) -> (train_outputs dict, basis W = ReLU(w) [p, 512]).
    """

    def __init__(self, model: PDNet, basis: L.PartBasis) -> None:
        super().__init__()
        self.model, self.basis = model, basis

    def forward(self, target: torch.Tensor, reference: torch.Tensor):
        return self.model.train_outputs(target, reference), self.basis()


def _resolve_amp(mode: str, device: torch.device):
    """(autocast dtype or None, use GradScaler)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, False
    return torch.float16, device.type == "cuda"


class Trainer:
    """Runs the recipe of a config (see :mod:`pdnet.train.config`) into a run folder.

    Files in ``out``: ``last.pt`` (always the newest checkpoint, written atomically),
    ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per log or
    validation line), ``tb/`` (TensorBoard events, when tensorboard is installed).
    """

    def __init__(
        self,
        cfg: dict[str, dict[str, Any]],
        out: os.PathLike,
        resume: bool = False,
        device: str | None = None,
        echo=print,
    ) -> None:
        from .config import ConfigError, validate

        try:  # a config built or edited in code gets the checks of load_config
            validate(cfg, resume=resume)
        except ConfigError as exc:
            raise TrainError(str(exc)) from None
        self.cfg, self.out, self.echo = cfg, Path(out), echo
        if self.out.exists() and not self.out.is_dir():
            raise TrainError(f"{self.out} is a file, not a run folder")
        self.world, self.rank, self.device = init_distributed(device)
        self.is_main = self.rank == 0
        tc, dc, mc = cfg["train"], cfg["data"], cfg["model"]
        #: step of the newest checkpoint in ``out`` (None: none written or resumed)
        self.saved_step: int | None = None
        self.nonfinite = NonFiniteGuard(tc["nonfinite"], tc["max_skips"], self.world, self.device, self._on_disk,
                                        echo if self.is_main else None)
        self._signal: int | None = None
        #: whether this process's malloc keeps freed memory (train.keep_freed_memory, opt-in)
        self.keeps_freed_memory = False
        if tc["keep_freed_memory"]:
            from .._malloc import keep_freed_memory

            self.keeps_freed_memory = keep_freed_memory(trim_threshold=(1 << 31) - 1, use_mmap=False)
        ckpt_path = self.out / "last.pt"
        if not resume and ckpt_path.exists():
            raise TrainError(
                f"{self.out} already holds a run ({ckpt_path}); resume it with --resume {self.out} "
                "or choose another --out"
            )
        resume_state = checkpointing.read_training_checkpoint(ckpt_path) if resume else None
        if self.is_main:
            removed = checkpointing.remove_stale_temporaries(self.out)
            if removed:
                mib = sum(size for _, size in removed) / 2**20
                self.echo(f"removed {len(removed)} temporary file(s) ({mib:.1f} MiB) left in {self.out} "
                          "by a killed run")

        torch.manual_seed(tc["seed"] + self.rank)
        random.seed(tc["seed"] + self.rank)
        np.random.seed(tc["seed"] + self.rank)
        size = (dc["size"], dc["size"]) if isinstance(dc["size"], int) else tuple(dc["size"])
        try:
            self.model_config = PDNetConfig(
                backbone=mc["backbone"],
                parts=mc["parts"],
                attention_scale=mc["attention_scale"],
                ipda_stride=mc["ipda_stride"],
                input_size=size,
                loss_variant=mc["loss_variant"],
                ops_backend=mc["ops_backend"],
            )
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        self._check_ops_backend(mc["ops_backend"])
        model = PDNet(self.model_config)
        if mc["imagenet"] and resume_state is None:
            try:
                model.encoder.load_imagenet(mc["imagenet"])
            except (OSError, RuntimeError, ValueError) as exc:
                raise TrainError(f"model.imagenet: {exc}") from None
        basis = L.PartBasis(self.model_config.parts, L.SemanticFeatures.channels)
        try:
            semantic = L.SemanticFeatures(tc["semantic_features"])
        except (OSError, RuntimeError, ValueError) as exc:
            raise TrainError(f"train.semantic_features: {exc}") from None
        self.semantic = semantic.to(self.device)
        self.module = TrainModule(model, basis).to(self.device)
        self.channels_last = bool(tc["channels_last"])
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model = model
        self.basis = basis

        enc = {id(p) for p in model.encoder.parameters()}
        head = [p for p in self.module.parameters() if id(p) not in enc]
        self.optimizer = torch.optim.SGD(
            [
                {"params": list(model.encoder.parameters()), "name": "backbone"},
                {"params": head, "name": "head"},
            ],
            lr=tc["lr"],
            momentum=tc["momentum"],
            weight_decay=tc["weight_decay"],
        )
        self.amp_dtype, use_scaler = _resolve_amp(tc["amp"], self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self._build_data()
        self.step = 0
        if resume_state is not None:
            checkpointing.load_training_state(resume_state, ckpt_path, self.model_config, self.model, self.basis,
                                              self.optimizer, self.scaler)
            self.step = self.saved_step = int(resume_state["step"])
            self.nonfinite.skipped_steps = int(resume_state.get("nonfinite_skipped", 0))
            self.video.load_state(resume_state["streams"]["video"])
            self.image.load_state(resume_state["streams"]["image"])
            checkpointing.set_rng_state(resume_state["rng"])

        self.net = self.module
        if self.world > 1:
            # image steps do not use the part basis (no part losses on still images)
            self.net = data_parallel(self.module, self.device, find_unused_parameters=tc["image_every"] > 0)
        if tc["compile"]:
            self.net = torch.compile(self.net)

    # ------------------------------------------------------------------ setup
    def _check_ops_backend(self, backend: str) -> None:
        """A backend named explicitly must run every op on the training device."""
        if backend == "auto":
            return
        from ..ops._dispatch import OPS, resolve

        for op in OPS:
            try:
                resolve(op, backend, self.device)
            except (RuntimeError, ValueError) as exc:
                raise TrainError(f"model.ops_backend={backend}: {exc}") from None

    def _build_data(self) -> None:
        dc, tc = self.cfg["data"], self.cfg["train"]
        if not dc["video"]:
            raise TrainError("no video data: give --data DIR or data.video in the config")
        video = build_datasets(dc, "video", "train", True)
        image = build_datasets(dc, "image", "train", True) if dc["image"] else video
        loading = (tc["batch_size"], dc["workers"], self.rank, self.world, self.device.type == "cuda",
                   tc["keep_freed_memory"])
        self.video = build_stream(video, dc["seed"], *loading)
        self.image = build_stream(image, dc["seed"] + 1, *loading)
        self.schedule = Schedule(tc, self.video.batches_per_epoch())
        self.steps_per_epoch, self.total_steps = self.schedule.steps_per_epoch, self.schedule.total_steps
        self.val = None
        if self.cfg["log"]["val_every"] is not None:
            try:
                self.val = build_datasets(dc, "video", dc["val_split"], False)
            except Exception as exc:  # no val split in the data: train without validation
                self.echo(f"validation disabled: {exc}")

    # ------------------------------------------------------------------ schedule
    def is_image_step(self, step: int) -> bool:
        return self.schedule.is_image_step(step)

    def epoch_of(self, step: int) -> int:
        return self.schedule.epoch_of(step)

    def lr_at(self, step: int) -> float:
        return self.schedule.lr_at(step)

    def _set_lr(self, step: int, image: bool) -> float:
        lr, backbone, rest = self.schedule.group_lrs(step, image)
        self.optimizer.param_groups[0]["lr"] = backbone
        self.optimizer.param_groups[1]["lr"] = rest
        return lr

    @property
    def skipped_steps(self) -> int:
        """Non-finite steps skipped so far (``train.nonfinite=skip``), resumed runs included."""
        return self.nonfinite.skipped_steps

    # ------------------------------------------------------------------ one step
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_step(self, batch: dict[str, Any], image: bool) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the detached loss terms. With ``train.nonfinite=skip``
        a step whose total loss is NaN / inf (on any rank) changes nothing (no update, the
        BatchNorm statistics of its forward pass undone) and returns terms with
        ``"skipped"`` set."""
        from ..data import prepare_batch

        skip_mode = self.cfg["train"]["nonfinite"] == "skip"
        if skip_mode:  # the forward pass updates BatchNorm statistics: keep them to undo a skipped step
            buffers = list(self.module.buffers())
            kept = [b.clone() for b in buffers]
        # uint8 / raw batches are finished (normalised, resized) on the training device
        batch = prepare_batch(batch, self.device)
        x_t, m_t = self._to_device(batch["target"]), self._to_device(batch["target_mask"])
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            if image:
                outputs, _ = self.net(x_t, x_t)
                terms = L.image_step_loss(outputs, m_t)
            else:
                x_r, m_r = self._to_device(batch["reference"]), self._to_device(batch["reference_mask"])
                outputs, basis = self.net(x_t, x_r)
                f_t, f_r = self.semantic(x_t), self.semantic(x_r)
                terms = L.video_step_loss(
                    outputs, m_t, m_r, f_t, f_r, basis, self.model_config.loss_variant,
                    backend=self.model_config.ops_backend, semantic_impl=self.cfg["train"]["semantic_impl"],
                )
        self.optimizer.zero_grad(set_to_none=True)
        if skip_mode:
            finite = torch.isfinite(terms["total"].detach()).to(torch.int32)
            if self.world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not bool(finite):  # one device sync per step, in this mode only
                with torch.no_grad():
                    for b, k in zip(buffers, kept, strict=True):
                        b.copy_(k)
                out = {k: v.detach() for k, v in terms.items()}
                out["skipped"] = torch.ones((), device=terms["total"].device)
                return out
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in terms.items()}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds beside the model (what a resume restores)."""
        return {
            "basis": self.basis.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch_of(self.step),
            "streams": {"video": self.video.state(), "image": self.image.state()},
            "rng": checkpointing.rng_state(),
            "train_config": self.cfg,
            "nonfinite_skipped": self.skipped_steps,
        }

    def _on_disk(self) -> str:
        return checkpointing.on_disk(self.out / "last.pt", self.saved_step)

    def save(self) -> Path | None:
        """Write ``out/last.pt`` (main process); first checks the pending losses
        (train.nonfinite=stop), so that a checkpoint never follows a non-finite step.

        Raises:
            NonFiniteLoss: a checked loss is NaN / inf.
            TrainError: the weights hold NaN / inf, or the write failed (disk full ...);
                ``last.pt`` is left as it was.
        """
        self.nonfinite.check(self.step)
        path = None
        if self.is_main:
            path = checkpointing.write_checkpoint(self.out / "last.pt", self.model, self.state(), self.saved_step)
        self.saved_step = self.step  # on every rank: they take the same decisions from it
        return path

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float] | None:
        """J&F (DAVIS protocol, predictions at each frame's original size) on the val split,
        segmented by :class:`pdnet.inference.VideoSegmenter`; None without a val split or
        when a signal asks the run to stop."""
        from .validation import validate

        return validate(self.model, self.val, self.device, self.cfg["log"]["val_clips"],
                        stopping=lambda: self._signal is not None)

    # ------------------------------------------------------------------ main loop
    def fit(self, max_steps: int | None = None, max_seconds: float | None = None) -> dict[str, Any]:
        """Train until ``max_steps`` (total, counting resumed steps), ``max_seconds`` of
        wall time (checked after each step; a checkpoint is written at the stop) or the
        end of the recipe.

        Returns:
            ``{"step", "val", "pairs_per_s", "seconds", "checkpoint", "checkpoint_step",
            "skipped_steps", "metrics"}``; ``checkpoint`` is the newest checkpoint of the
            run folder (None when none was written, e.g. ``max_steps`` 0 on a new run).

        Raises:
            NonFiniteLoss: the loss turned NaN / inf (train.nonfinite).
            TrainError: a checkpoint or metrics write failed.
            TrainInterrupted: SIGINT / SIGTERM (after writing a checkpoint at the step
                that was running; a second signal stops at once).
        """
        lc = self.cfg["log"]
        limit = self.total_steps if max_steps is None else max(0, min(max_steps, self.total_steps))
        started = time.perf_counter()
        deadline = None if max_seconds is None else started + max_seconds
        if self.is_main:
            checkpointing.write_run_config(self.out, self.cfg)
        metrics = MetricLog(self.out, self.is_main, lc["tensorboard"], lc["progress"], limit, self.step, self.echo)
        self.module.train()
        last_val = None
        run_pairs = 0
        restore = self._catch_signals()
        try:
            while self.step < limit:
                image = self.is_image_step(self.step)
                lr = self._set_lr(self.step, image)
                batch = (self.image if image else self.video).next()
                terms = self.train_step(batch, image)
                self.step += 1
                pairs = batch["target"].shape[0] * self.world
                run_pairs += pairs
                metrics.add(pairs, None if "skipped" in terms else terms, image)
                self.nonfinite.record(self.step, image, terms)
                end_epoch = self.step % self.steps_per_epoch == 0
                if deadline is not None and time.perf_counter() >= deadline:
                    limit = self.step  # time is up: log, checkpoint and stop after this step
                if self.step % lc["every"] == 0 or self.step == limit:
                    self.nonfinite.check(self.step)
                    metrics.log(self.step, self.epoch_of(self.step - 1), lr, self.skipped_steps)
                metrics.advance()
                stop = self._stop_requested()
                if self.step % lc["checkpoint_every"] == 0 or end_epoch or self.step == limit or stop:
                    self.save()
                stop = stop or self._stop_requested()  # a signal during the checkpoint write
                if stop:
                    if self.saved_step != self.step:
                        self.save()
                    raise TrainInterrupted(stop, f"after step {self.step}; {self._on_disk()}; "
                                                 f"continue with: pdnet train --resume {self.out}")
                val_due = lc["val_every"] is not None and (
                    end_epoch or (lc["val_every"] and self.step % lc["val_every"] == 0)
                )
                if val_due and self.is_main:
                    last_val = self.validate()
                    if last_val is not None:
                        metrics.write({"step": self.step, **{f"val/{k}": v for k, v in last_val.items()}})
            self.nonfinite.check(self.step)
        finally:
            restore()
            metrics.close()
        return {
            "step": self.step,
            "val": last_val,
            "pairs_per_s": run_pairs / max(time.perf_counter() - started, 1e-9),
            "seconds": time.perf_counter() - started,
            "checkpoint": None if self.saved_step is None else str(self.out / "last.pt"),
            "checkpoint_step": self.saved_step,
            "skipped_steps": self.skipped_steps,
            "metrics": str(metrics.path),
        }

    # ------------------------------------------------------------------ signals
    def _catch_signals(self):
        """Make SIGINT / SIGTERM request a stop at the next step boundary (a second one
        raises TrainInterrupted at once); returns the function restoring the handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        self._signal = None

        def handler(signum, frame):
            if self._signal is not None:
                raise TrainInterrupted(signum, f"at once (second signal); {self._on_disk()}")
            self._signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore():
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def _stop_requested(self) -> int:
        """The signal that asks this run to stop (0: none); ranks agree (the largest)."""
        return agree(self._signal or 0, dist.ReduceOp.MAX, self.world, self.device)
