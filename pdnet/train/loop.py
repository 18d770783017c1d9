"""The release's training recipe (DESIGN.md section 3), fast and resumable.

Steps alternate image, video, video, image, ... (``train.image_every``). Image steps feed
one still image as both frames and train with :func:`pdnet.losses.image_step_loss` at lr
for the backbone and ``image_head_lr`` * lr (release: 0) for the rest; video steps feed
(target, first frame of the clip) and train with :func:`pdnet.losses.video_step_loss` at
0.01 * lr for the backbone and 10 * lr for the rest (the part basis included). The lr
follows a poly schedule (power 0.9) over all steps and is halved from epoch 6.

An epoch is one pass over the video data plus the image steps interleaved with it, so
the epoch of a step is a pure function of the step number. Data order and augmentation
are functions of (seed, epoch, position), so a run resumed from ``RUN/last.pt`` replays
exactly the batches the uninterrupted run would have seen.

Safety: a step whose loss is NaN / inf stops the run with :class:`NonFiniteLoss` naming
the step and the loss terms (``train.nonfinite=stop``; checked without a device sync at
each log line, checkpoint and at least every 64 steps; ``RUN/last.pt`` stays the last
checkpoint with finite weights, as a checkpoint is never written with NaN / inf
tensors), or is skipped without an optimizer update (``train.nonfinite=skip``, at most
``train.max_skips`` in a row). SIGINT (Ctrl-C) and SIGTERM during :meth:`Trainer.fit`
write a checkpoint after the current step and raise :class:`TrainInterrupted` (a second
signal stops at once, leaving the previous checkpoint). Temporary files of checkpoint
writes killed midway (``.last.pt.*.tmp``) are removed when a run starts in the folder.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from .. import losses as L
from .._device import parse_device
from ..data.augment import collate_pairs, prepare_batch
from ..model import PDNet, PDNetConfig

# ----------------------------------------------------------------------------- helpers


class ResumableSampler(Sampler[int]):
    """Seeded permutation per epoch, sharded across ranks, starting at any position.

    ``set_epoch(epoch, start)`` selects the epoch's order and skips its first ``start``
    indices of this rank, so a resumed run continues where it stopped.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("ResumableSampler: empty dataset")
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0

    def per_rank(self) -> int:
        return math.ceil(self.size / self.world)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        total = self.per_rank() * self.world
        perm = (perm * math.ceil(total / len(perm)))[:total]  # pad by wrapping, as DistributedSampler
        return perm[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.per_rank() - self.start


class Stream:
    """An endless supply of batches from one DataLoader, with a resumable position."""

    def __init__(self, loader: DataLoader, sampler: ResumableSampler, batch_size: int) -> None:
        self.loader, self.sampler, self.batch_size = loader, sampler, batch_size
        self.epoch, self.consumed = 0, 0  # batches consumed in the current epoch
        self._it: Optional[Iterator] = None

    def batches_per_epoch(self) -> int:
        return self.sampler.per_rank() // self.batch_size

    def _restart(self) -> None:
        self.sampler.set_epoch(self.epoch, self.consumed * self.batch_size)
        for ds in _leaf_datasets(self.loader.dataset):
            ds.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def next(self):
        if self.consumed >= self.batches_per_epoch():
            self.epoch, self.consumed = self.epoch + 1, 0
            self._it = None
        if self._it is None:
            self._restart()
        batch = next(self._it)
        self.consumed += 1
        return batch

    def state(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state(self, s: Dict[str, int]) -> None:
        self.epoch, self.consumed, self._it = int(s["epoch"]), int(s["consumed"]), None


def _leaf_datasets(ds):
    if isinstance(ds, ConcatDataset):
        for d in ds.datasets:
            yield from _leaf_datasets(d)
    elif hasattr(ds, "set_epoch"):
        yield ds


class TrainModule(nn.Module):
    """PDNet plus the part basis as one module, so DistributedDataParallel syncs both.

    forward(target, reference) -> (train_outputs dict, basis W = ReLU(w) [p, 512]).
    """

    def __init__(self, model: PDNet, basis: L.PartBasis) -> None:
        super().__init__()
        self.model, self.basis = model, basis

    def forward(self, target: torch.Tensor, reference: torch.Tensor):
        return self.model.train_outputs(target, reference), self.basis()


def rng_state() -> Dict[str, Any]:
    """Every global generator's state, as tensors and plain numbers (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``.NAME.tmp`` and ``os.replace`` (the file gets
    the umask's mode); the temporary file is removed when the write fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


#: temporary files of the run folder's atomic writes (checkpoints, config.yaml), left
#: behind when a process is killed midway
STALE_TEMPORARY = re.compile(r"^\.(?:last\.pt|best\.pt|config\.yaml)\.(?:[A-Za-z0-9_]+\.)?tmp$")


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Remove the temporary files of killed checkpoint / config writes in ``folder``."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if STALE_TEMPORARY.match(p.name) and p.is_file():
                try:
                    size = p.stat().st_size
                    p.unlink()
                    removed.append((p, size))
                except OSError:
                    pass
    return removed


def resolve_device(spec: Optional[str]) -> Optional[torch.device]:
    """The training device named by ``spec`` (auto, cpu, cuda, cuda:N; None: not chosen).

    Raises:
        TrainError: see :func:`pdnet._device.parse_device`.
    """
    if spec is None:
        return None
    try:
        return parse_device(spec, name="--device")
    except ValueError as exc:
        raise TrainError(str(exc)) from None


# ----------------------------------------------------------------------------- trainer


class TrainError(RuntimeError):
    """A problem that stops training (bad checkpoint, bad run folder, a non-finite loss,
    a failed checkpoint write); one line, naming the file, value or step."""


class NonFiniteLoss(TrainError):
    """The loss turned NaN / inf (``train.nonfinite``); names the step and the terms."""


class TrainInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped :meth:`Trainer.fit`; ``signum`` is the signal, the message
    says which step the run folder's ``last.pt`` holds."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


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
        cfg: Dict[str, Dict[str, Any]],
        out: os.PathLike,
        resume: bool = False,
        device: Optional[str] = None,
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
        self._init_distributed(device)
        tc, dc, mc = cfg["train"], cfg["data"], cfg["model"]
        #: step of the newest checkpoint in ``out`` (None: none written or resumed)
        self.saved_step: Optional[int] = None
        #: non-finite steps skipped so far (train.nonfinite=skip), and in a row
        self.skipped_steps, self._skips_in_row = 0, 0
        self._pending: List[Any] = []  # (step, image, terms) not yet checked for finiteness
        self._signal: Optional[int] = None
        keep = tc.get("keep_freed_memory", "auto")
        #: whether this process's malloc keeps freed memory (train.keep_freed_memory)
        self.keeps_freed_memory = False
        if keep is True or (keep == "auto" and self.device.type == "cpu"):
            from .._malloc import keep_freed_memory

            self.keeps_freed_memory = keep_freed_memory(trim_threshold=(1 << 31) - 1, use_mmap=False)
        ckpt_path = self.out / "last.pt"
        if not resume and ckpt_path.exists():
            raise TrainError(
                f"{self.out} already holds a run ({ckpt_path}); resume it with --resume {self.out} "
                "or choose another --out"
            )
        resume_state = self._read_resume(ckpt_path) if resume else None
        if self.is_main:
            removed = remove_stale_temporaries(self.out)
            if removed:
                mib = sum(size for _, size in removed) / 2**20
                self.echo(f"removed {len(removed)} temporary file(s) ({mib:.1f} MiB) left in {self.out} by a killed run")

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
            self._load_resume(resume_state)

        self.net = self.module
        if self.world > 1:
            # SyncBatchNorm runs on GPUs only; CPU ranks (gloo) keep per-rank BatchNorm
            # statistics, all else (gradients, weights) is synchronised by DDP
            cuda = self.device.type == "cuda"
            self.net = nn.parallel.DistributedDataParallel(
                nn.SyncBatchNorm.convert_sync_batchnorm(self.module) if cuda else self.module,
                device_ids=[self.device.index] if cuda else None,
                # image steps do not use the part basis (no part losses on still images)
                find_unused_parameters=tc["image_every"] > 0,
            )
        if tc["compile"]:
            self.net = torch.compile(self.net)

    # ------------------------------------------------------------------ setup
    def _init_distributed(self, device: Optional[str]) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0

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

    def _datasets(self, group: str, split: str, augment: bool):
        from ..data import build_dataset

        dc = self.cfg["data"]
        out = []
        for entry in dc[group]:
            out.append(
                build_dataset(
                    entry.get("kind", "auto"),
                    entry["root"],
                    split=entry.get("split", split),
                    size=dc["size"],
                    augment=augment,
                    seed=dc["seed"] + (0 if group == "video" else 7919),
                    output=dc["output"] if augment else "float",
                    skip_bad=dc["skip_bad"],
                )
            )
        return out

    def _stream(self, datasets, seed: int) -> Stream:
        ds = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        tc, dc = self.cfg["train"], self.cfg["data"]
        sampler = ResumableSampler(len(ds), seed, self.rank, self.world)
        if sampler.per_rank() < tc["batch_size"]:
            raise TrainError(
                f"the training data has {len(ds)} samples, fewer than one batch of {tc['batch_size']} per process"
            )
        workers = dc["workers"]
        loader = DataLoader(
            ds,
            batch_size=tc["batch_size"],
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=_seed_worker,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            collate_fn=collate_pairs,
        )
        return Stream(loader, sampler, tc["batch_size"])

    def _build_data(self) -> None:
        dc, tc = self.cfg["data"], self.cfg["train"]
        if not dc["video"]:
            raise TrainError("no video data: give --data DIR or data.video in the config")
        video = self._datasets("video", "train", True)
        image = self._datasets("image", "train", True) if dc["image"] else video
        self.video = self._stream(video, dc["seed"])
        self.image = self._stream(image, dc["seed"] + 1)
        k = tc["image_every"]
        v = self.video.batches_per_epoch()
        self.steps_per_epoch = v if k <= 0 else math.ceil(v * k / (k - 1)) if k > 1 else v
        self.total_steps = self.steps_per_epoch * tc["epochs"]
        self.val = None
        if self.cfg["log"]["val_every"] is not None:
            try:
                self.val = self._datasets("video", dc["val_split"], False)
            except Exception as exc:  # no val split in the data: train without validation
                self.echo(f"validation disabled: {exc}")

    # ------------------------------------------------------------------ schedule
    def is_image_step(self, step: int) -> bool:
        k = self.cfg["train"]["image_every"]
        return k > 0 and step % k == 0

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        tc = self.cfg["train"]
        lr = tc["lr"] * (1.0 - min(step, self.total_steps - 1) / self.total_steps) ** tc["poly_power"]
        halve = tc["halve_lr_from_epoch"]
        if halve is not None and self.epoch_of(step) >= halve:
            lr *= 0.5
        return lr

    def _set_lr(self, step: int, image: bool) -> float:
        tc = self.cfg["train"]
        lr = self.lr_at(step)
        bb, hd = (1.0, tc["image_head_lr"]) if image else (tc["video_backbone_lr"], tc["video_head_lr"])
        self.optimizer.param_groups[0]["lr"] = lr * bb
        self.optimizer.param_groups[1]["lr"] = lr * hd
        return lr

    # ------------------------------------------------------------------ one step
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_step(self, batch: Dict[str, Any], image: bool) -> Dict[str, torch.Tensor]:
        """One optimizer step; returns the detached loss terms. With ``train.nonfinite=skip``
        a step whose total loss is NaN / inf (on any rank) changes nothing (no update, the
        BatchNorm statistics of its forward pass undone) and returns terms with
        ``"skipped"`` set."""
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
                    self.model_config.ops_backend, self.cfg["train"]["semantic_impl"],
                )
        self.optimizer.zero_grad(set_to_none=True)
        if skip_mode:
            finite = torch.isfinite(terms["total"].detach()).to(torch.int32)
            if self.world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not bool(finite):  # one device sync per step, in this mode only
                with torch.no_grad():
                    for b, k in zip(buffers, kept):
                        b.copy_(k)
                out = {k: v.detach() for k, v in terms.items()}
                out["skipped"] = torch.ones((), device=terms["total"].device)
                return out
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in terms.items()}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> Dict[str, Any]:
        return {
            "basis": self.basis.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch_of(self.step),
            "streams": {"video": self.video.state(), "image": self.image.state()},
            "rng": rng_state(),
            "train_config": self.cfg,
            "nonfinite_skipped": self.skipped_steps,
        }

    def _on_disk(self) -> str:
        last = self.out / "last.pt"
        return f"{last} holds step {self.saved_step}" if self.saved_step is not None else "no checkpoint was written"

    def save(self) -> Optional[Path]:
        """Write ``out/last.pt`` (main process); first checks the pending losses
        (train.nonfinite=stop), so that a checkpoint never follows a non-finite step.

        Raises:
            NonFiniteLoss: a checked loss is NaN / inf.
            TrainError: the weights hold NaN / inf, or the write failed (disk full ...);
                ``last.pt`` is left as it was.
        """
        self._check_pending()
        path = None
        if self.is_main:
            from ..inference.checkpoint import CheckpointError, save_model_checkpoint

            try:
                path = save_model_checkpoint(self.out / "last.pt", self.model, self.state())
            except CheckpointError as exc:
                raise TrainError(f"step {self.step}: {exc}; {self._on_disk()}") from None
        self.saved_step = self.step  # on every rank: they take the same decisions from it
        return path

    def _read_resume(self, path: Path) -> Dict[str, Any]:
        from ..inference.checkpoint import CheckpointError, read_checkpoint

        if not path.exists():
            raise TrainError(f"cannot resume: {path} does not exist")
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as exc:
            raise TrainError(f"cannot resume from {path}: {exc}") from None
        needed = ("model", "config", "optimizer", "basis", "step", "streams", "rng")
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise TrainError(f"cannot resume from {path}: not a training checkpoint (missing {', '.join(missing)})")
        ckpt["_path"] = str(path)
        return ckpt

    def _load_resume(self, ckpt: Dict[str, Any]) -> None:
        path = ckpt["_path"]
        saved = PDNetConfig.from_dict(ckpt["config"])
        mine = self.model_config
        diff = [
            f"{k}: checkpoint {getattr(saved, k)!r} vs config {getattr(mine, k)!r}"
            for k in ("backbone", "parts", "input_size", "ipda_stride", "attention_dim", "ipda_channels", "decoder_channels")
            if getattr(saved, k) != getattr(mine, k)
        ]
        if diff:
            raise TrainError(f"cannot resume from {path}: the model differs from the config ({'; '.join(diff)})")
        try:
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.basis.load_state_dict(ckpt["basis"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainError(f"cannot resume from {path}: incompatible state ({exc})") from None
        self.step = int(ckpt["step"])
        self.saved_step = self.step
        self.skipped_steps = int(ckpt.get("nonfinite_skipped", 0))
        self.video.load_state(ckpt["streams"]["video"])
        self.image.load_state(ckpt["streams"]["image"])
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Optional[Dict[str, float]]:
        """J&F (DAVIS protocol, predictions at each frame's original size) on the val split."""
        if not self.val:
            return None
        try:
            from ..evaluation import evaluate_arrays
        except ImportError:
            return None
        from ..data.io import read_mask

        model = self.model
        was_training = model.training
        model.eval()
        preds = {}
        limit = self.cfg["log"]["val_clips"] or None
        for ds in self.val:
            for clip_idx, clip in enumerate(ds.clips[:limit]):
                if self._signal is not None:  # stopping: no time for validation
                    model.train(was_training)
                    return None
                start = ds.clip_start(clip_idx)
                state = None
                pred_list, gt_list = [], []
                for pos in range(len(clip)):
                    sample = ds[start + pos]
                    x = self._to_device(sample["target"][None])
                    if state is None:
                        state = model.encode_reference(self._to_device(sample["reference"][None]))
                    size = tuple(int(s) for s in sample["size"])
                    logits = model(x, state, size=size)
                    pred_list.append((logits[0, 0] > 0).cpu())
                    gt_list.append(read_mask(clip.masks[pos], clip.mask_mode)[0] >= 128)
                preds[clip.name] = (torch.stack(pred_list), torch.stack(gt_list))
        if was_training:
            model.train()
        result = evaluate_arrays(preds, protocol="davis")
        return _summary(result)

    # ------------------------------------------------------------------ main loop
    def fit(self, max_steps: Optional[int] = None, max_seconds: Optional[float] = None) -> Dict[str, Any]:
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
            import yaml

            try:
                self.out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg, sort_keys=False))
            except OSError as exc:
                raise TrainError(f"cannot write {self.out / 'config.yaml'}: {exc.strerror or exc}") from None
        writer = self._tensorboard() if self.is_main and lc["tensorboard"] else None
        bar = None
        if self.is_main and lc["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=limit, initial=min(self.step, limit), desc="train", unit="step", dynamic_ncols=True)
        self.module.train()
        sums: Dict[str, torch.Tensor] = {}
        counts: Dict[str, int] = {}
        pairs, t_last = 0, time.perf_counter()
        last_val = None
        pairs_per_s = 0.0
        run_pairs = 0
        restore = self._catch_signals()
        try:
            while self.step < limit:
                image = self.is_image_step(self.step)
                lr = self._set_lr(self.step, image)
                batch = (self.image if image else self.video).next()
                terms = self.train_step(batch, image)
                self.step += 1
                pairs += batch["target"].shape[0] * self.world
                run_pairs += batch["target"].shape[0] * self.world
                skipped = "skipped" in terms
                if skipped:
                    self._skipped(terms, image)
                else:
                    self._skips_in_row = 0
                    if self.cfg["train"]["nonfinite"] == "stop":
                        self._pending.append((self.step, image, terms))
                        if len(self._pending) >= 64:
                            self._check_pending()
                    named = {"total": terms["total"], ("image." if image else "video.") + "total": terms["total"]}
                    if not image:
                        named.update((f"video.{k}", v) for k, v in terms.items() if k != "total")
                    for k, v in named.items():
                        sums[k] = sums.get(k, 0) + v
                        counts[k] = counts.get(k, 0) + 1
                end_epoch = self.step % self.steps_per_epoch == 0
                if deadline is not None and time.perf_counter() >= deadline:
                    limit = self.step  # time is up: log, checkpoint and stop after this step
                if self.step % lc["every"] == 0 or self.step == limit:
                    self._check_pending()
                    now = time.perf_counter()
                    pairs_per_s = pairs / max(now - t_last, 1e-9)
                    line = {k: float(v) / counts[k] for k, v in sums.items()}  # one sync per log line
                    line.update(step=self.step, epoch=self.epoch_of(self.step - 1), lr=lr, pairs_per_s=pairs_per_s)
                    if self.skipped_steps:
                        line["skipped_steps"] = self.skipped_steps
                    self._log(line, writer)
                    if bar is not None and "total" in line:
                        bar.set_postfix(_bar_terms(line, lr, pairs_per_s), refresh=False)
                    sums, counts, pairs, t_last = {}, {}, 0, time.perf_counter()
                if bar is not None:
                    bar.update(1)
                stop = self._stop_requested()
                if self.step % lc["checkpoint_every"] == 0 or end_epoch or self.step == limit or stop:
                    self.save()
                stop = stop or self._stop_requested()  # a signal during the checkpoint write
                if stop:
                    if self.saved_step != self.step:
                        self.save()
                    raise TrainInterrupted(
                        stop, f"after step {self.step}; {self._on_disk()}; continue with: pdnet train --resume {self.out}"
                    )
                val_due = lc["val_every"] is not None and (
                    end_epoch or (lc["val_every"] and self.step % lc["val_every"] == 0)
                )
                if val_due and self.is_main:
                    last_val = self.validate()
                    if last_val is not None:
                        self._log({"step": self.step, **{f"val/{k}": v for k, v in last_val.items()}}, writer)
            self._check_pending()
        finally:
            restore()
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        return {
            "step": self.step,
            "val": last_val,
            "pairs_per_s": run_pairs / max(time.perf_counter() - started, 1e-9),
            "seconds": time.perf_counter() - started,
            "checkpoint": None if self.saved_step is None else str(self.out / "last.pt"),
            "checkpoint_step": self.saved_step,
            "skipped_steps": self.skipped_steps,
            "metrics": str(self.out / "metrics.jsonl"),
        }

    # ------------------------------------------------------------------ safety
    def _bad_terms(self, terms: Dict[str, torch.Tensor], image: bool) -> str:
        """``name=value`` of the non-finite loss terms (the parts before the total)."""
        prefix = "image." if image else "video."
        bad = [(k, v) for k, v in terms.items() if k not in ("total", "skipped") and not bool(torch.isfinite(v).all())]
        bad = bad or [("total", terms["total"])]
        shown = ", ".join(f"{prefix}{k}={float(v)}" for k, v in bad[:6])
        return shown + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")

    def _check_pending(self) -> None:
        """Raise NonFiniteLoss for the first pending step whose total loss is NaN / inf
        (one device sync for all of them)."""
        if not self._pending and self.world == 1:
            return
        pending, self._pending = self._pending, []
        totals = torch.stack([t["total"].float() for _, _, t in pending]) if pending else torch.zeros(0)
        finite = torch.isfinite(totals)
        ok = bool(finite.all())
        if self.world > 1:  # every rank checks at the same steps: they stop together
            flag = torch.tensor([int(ok)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if ok and not int(flag):
                raise NonFiniteLoss(
                    f"step {self.step}: the loss turned non-finite on another process; training stopped, "
                    f"{self._on_disk()}"
                )
        if ok:
            return
        step, image, terms = pending[int((~finite).nonzero()[0, 0])]
        raise NonFiniteLoss(
            f"step {step} ({'image' if image else 'video'} step): the loss is not finite "
            f"({self._bad_terms(terms, image)}); training stopped, {self._on_disk()} "
            "(train.nonfinite=skip skips such steps instead)"
        )

    def _skipped(self, terms: Dict[str, torch.Tensor], image: bool) -> None:
        self.skipped_steps += 1
        self._skips_in_row += 1
        cap = self.cfg["train"]["max_skips"]
        what = self._bad_terms(terms, image)
        if self._skips_in_row >= cap:
            raise NonFiniteLoss(
                f"step {self.step}: the loss was not finite for {self._skips_in_row} steps in a row "
                f"(train.max_skips={cap}; last: {what}); training stopped, {self._on_disk()}"
            )
        if self.is_main:
            self.echo(f"step {self.step}: the loss is not finite ({what}); step skipped "
                      f"({self.skipped_steps} so far, {self._skips_in_row} in a row)")

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
        signum = self._signal or 0
        if self.world > 1:
            flag = torch.tensor([signum], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag)
        return signum

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.echo("tensorboard is not installed: metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(str(self.out / "tb"))

    def _log(self, line: Dict[str, Any], writer) -> None:
        if not self.is_main:
            return
        try:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as exc:
            raise TrainError(f"cannot write {self.out / 'metrics.jsonl'}: {exc.strerror or exc}") from None
        if writer is not None:
            for k, v in line.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, line["step"])


def _bar_terms(line: Dict[str, Any], lr: float, pairs_per_s: float) -> Dict[str, str]:
    """The progress bar's postfix: total loss, the main loss terms of the logged steps
    (segmentation of the final prediction, part losses of the target frame, the image
    steps' total), lr and pairs/s."""
    out = {"loss": f"{line['total']:.3f}"}
    pred = [line[k] for k in ("video.pred.wbce", "video.pred.l1") if k in line]
    if pred:
        out["seg"] = f"{pred[0] + 0.8 * pred[1]:.3f}" if len(pred) == 2 else f"{pred[0]:.3f}"
    if "video.parts_t.total" in line:
        out["parts"] = f"{line['video.parts_t.total']:.3f}"
    if "image.total" in line:
        out["image"] = f"{line['image.total']:.3f}"
    out["lr"] = f"{lr:.2e}"
    out["pairs_s"] = f"{pairs_per_s:.1f}"
    return out


def _seed_worker(worker_id: int) -> None:
    from ..data.datasets import seed_worker

    # Ctrl-C reaches the whole process group: the main process stops the run at a step
    # boundary, so the workers ignore it and keep serving until they are shut down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed_worker(worker_id)


def _summary(result) -> Dict[str, float]:
    """Flatten an evaluation result to {"J&F", "J", "F"} means."""
    d = result.to_dict() if hasattr(result, "to_dict") else result
    o = d["overall"]
    return {"J&F": float(o["J&F"]), "J": float(o["J"]["mean"]), "F": float(o["F"]["mean"])}
