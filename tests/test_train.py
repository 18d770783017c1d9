"""Trainer: schedule, resumable exactness, checkpoints, configs and CLI errors."""
import math
from pathlib import Path

import pytest
import torch

from pdnet.cli import main
from pdnet.train import ResumableSampler, Trainer, TrainError, load_config
from pdnet.train.config import ConfigError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny steps: a second intra-op thread gains nothing and, on a loaded 2-core
    machine, its barrier waits made these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(root), "--clips", "3", "--frames", "4", "--size", "64x64", "--seed", "3"]) == 0
    return root


def tiny_cfg(data, **over):
    sets = [
        "model.backbone=resnet18",
        "model.parts=2",
        "model.imagenet=null",
        "data.size=64",
        "data.workers=0",
        "train.batch_size=2",
        "train.epochs=2",
        "train.lr=0.01",
        "train.amp=off",
        "train.semantic_features=null",
        "log.every=1",
        "log.checkpoint_every=1000",
        "log.val_every=null",
        "log.tensorboard=false",
        "log.progress=false",
    ] + [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(None, sets)
    cfg["data"]["video"] = [{"kind": "davis", "root": str(data)}]
    return cfg


def weights(trainer):
    sd = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    sd["basis"] = trainer.basis.weight.detach().clone()
    return sd


@pytest.mark.slow
def test_resume_gives_exactly_the_weights_of_an_uninterrupted_run(synth_data, tmp_path):
    straight = Trainer(tiny_cfg(synth_data), tmp_path / "a")
    straight.fit(6)
    split = Trainer(tiny_cfg(synth_data), tmp_path / "b")
    split.fit(3)
    del split
    resumed = Trainer(tiny_cfg(synth_data), tmp_path / "b", resume=True)
    assert resumed.step == 3
    resumed.fit(6)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the straight run: {different[:5]}"
    # and training did change the weights
    fresh = Trainer(tiny_cfg(synth_data), tmp_path / "c")
    assert not torch.equal(weights(fresh)["head.weight"], a["head.weight"])


def test_schedule_alternates_and_sets_group_lrs(synth_data, tmp_path):
    t = Trainer(tiny_cfg(synth_data, **{"train.halve_lr_from_epoch": 1}), tmp_path / "s")
    assert [t.is_image_step(s) for s in range(6)] == [True, False, False, True, False, False]
    v = t.video.batches_per_epoch()
    assert t.steps_per_epoch == math.ceil(v * 3 / 2)
    assert t.total_steps == 2 * t.steps_per_epoch
    lr0 = t._set_lr(0, image=True)
    assert lr0 == pytest.approx(0.01)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # backbone
    assert t.optimizer.param_groups[1]["lr"] == 0.0  # rest, image step
    lr1 = t._set_lr(1, image=False)
    assert lr1 == pytest.approx(0.01 * (1 - 1 / t.total_steps) ** 0.9)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * lr1)
    assert t.optimizer.param_groups[1]["lr"] == pytest.approx(10 * lr1)
    s = t.steps_per_epoch  # first step of epoch 1: halved
    assert t.lr_at(s) == pytest.approx(0.5 * 0.01 * (1 - s / t.total_steps) ** 0.9)
    basis_in_head = any(p is t.basis.weight for p in t.optimizer.param_groups[1]["params"])
    assert basis_in_head


def test_corrupt_checkpoint_is_reported_and_kept(synth_data, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_cfg(synth_data), run).fit(1)
    ckpt = run / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    with pytest.raises(TrainError, match="cannot resume from .*last.pt"):
        Trainer(tiny_cfg(synth_data), run, resume=True)
    assert ckpt.stat().st_size == 1000  # not overwritten
    with pytest.raises(TrainError, match="already holds a run"):
        Trainer(tiny_cfg(synth_data), run)


def test_incompatible_checkpoint(synth_data, tmp_path):
    run = tmp_path / "r"
    Trainer(tiny_cfg(synth_data), run).fit(1)
    with pytest.raises(TrainError, match="parts: checkpoint 2 vs config 3"):
        Trainer(tiny_cfg(synth_data, **{"model.parts": 3}), run, resume=True)


def test_sampler_shards_and_resumes():
    full = ResumableSampler(10, seed=1)
    full.set_epoch(2)
    order = list(full)
    assert sorted(order) == list(range(10))
    full.set_epoch(2, start=4)
    assert list(full) == order[4:]
    full.set_epoch(3)
    assert list(full) != order
    shards = [ResumableSampler(10, 1, rank=r, world=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    got = [i for s in shards for i in s]
    assert len(got) == 12 and set(got) == set(range(10))


@pytest.mark.parametrize(
    "sets,msg",
    [
        (["train.lrr=1"], "unknown key train.lrr"),
        (["optim.lr=1"], "unknown section 'optim'"),
        (["train.lr"], "section.key=value"),
        (["data.size=100"], "multiples of 32"),
        (["train.amp=fp8"], "train.amp"),
        (["data.output=half"], "data.output"),
        (["train.keep_freed_memory=sometimes"], "train.keep_freed_memory"),
    ],
)
def test_config_errors(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, sets)


def test_keep_freed_memory_auto_reads_as_false():
    # a run whose saved config.yaml still says auto resumes, without keeping freed memory
    with pytest.warns(UserWarning, match="keep_freed_memory=auto is read as false"):
        cfg = load_config(None, ["train.keep_freed_memory=auto"])
    assert cfg["train"]["keep_freed_memory"] is False


def test_shipped_configs_load():
    rel = load_config("release")
    assert rel["model"]["backbone"] == "resnet50" and rel["data"]["size"] == 480
    demo = load_config("demo-cpu")
    assert demo["model"]["backbone"] == "resnet18" and demo["train"]["amp"] == "off"
    # freed memory is kept on request only: the CPU recipe asks, the GPU one and the defaults do not
    assert demo["train"]["keep_freed_memory"] is True
    assert rel["train"]["keep_freed_memory"] is False and load_config(None)["train"]["keep_freed_memory"] is False


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--config", "demo-cpu"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["train", "--config", "nope.yaml", "--out", str(tmp_path / "x")]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    assert main(["train", "--config", "demo-cpu", "--out", str(tmp_path / "x"), "--data", missing]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "norun")]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


_FAULTS_SCRIPT = r"""
import resource, sys
import torch
if sys.argv[1] == "keep":
    from pdnet._malloc import keep_freed_memory
    assert keep_freed_memory(trim_threshold=(1 << 31) - 1, use_mmap=False)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
# 64 MB: above every mmap threshold. Kept, the heap still grows over the first few
# blocks (an aligned block does not fit the exact hole its predecessor left) and then
# settles: 10 blocks are enough here in every run, 3 were not
for _ in range(10):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
f0 = faults()
for _ in range(5):
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
print(faults() - f0)
"""


@pytest.mark.slow
@pytest.mark.machine
@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists() and not Path("/usr/lib64/libc.so.6").exists(),
                    reason="glibc only")
def test_keep_freed_memory_stops_refaulting_large_blocks():
    """A freed 64 MB block is page-faulted afresh on every allocation by default (glibc
    mmaps it), and not at all once freed memory is kept (a fresh process for each: the
    setting is process-wide)."""
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], check=True, text=True,
                             capture_output=True).stdout
        return int(out.split()[-1])

    default, kept = run("default"), run("keep")
    assert default > 5 * 1000, default  # 16384 4 KB pages per block (fewer with huge pages)
    assert kept < 1000, kept


def test_keep_freed_memory_rejects_values_mallopt_cannot_take():
    from pdnet._malloc import keep_freed_memory

    with pytest.raises(ValueError, match="C int"):
        keep_freed_memory(trim_threshold=1 << 40)


def test_trainer_keeps_freed_memory_only_when_asked(synth_data, tmp_path, monkeypatch):
    """Opt-in (train.keep_freed_memory=true), on any device; the default leaves malloc alone.
    The setting is process-wide, so the call is recorded here rather than made."""
    import pdnet._malloc

    calls = []
    monkeypatch.setattr(pdnet._malloc, "keep_freed_memory", lambda **kw: calls.append(kw) or True)
    default = Trainer(tiny_cfg(synth_data), tmp_path / "default", device="cpu")
    assert default.keeps_freed_memory is False and calls == []
    asked = Trainer(tiny_cfg(synth_data, **{"train.keep_freed_memory": "true"}), tmp_path / "asked", device="cpu")
    assert asked.keeps_freed_memory is True
    assert calls == [{"trim_threshold": (1 << 31) - 1, "use_mmap": False}]
    # and so do the DataLoader workers
    for trainer, keep in ((default, False), (asked, True)):
        for stream in (trainer.video, trainer.image):
            assert stream.loader.worker_init_fn.keywords == {"keep_freed_memory": keep}


def test_validation_segments_the_held_out_clips_as_the_model_does(synth_data, tmp_path, monkeypatch):
    """Validation goes through the inference path (VideoSegmenter on the decoded frames);
    at the model's input size its masks are those of the model run on the evaluation
    samples against the clip's first frame, at each frame's size, and the J&F is theirs."""
    import pdnet.evaluation
    from pdnet.data import build_dataset

    t = Trainer(tiny_cfg(synth_data, **{"log.val_every": 0}), tmp_path / "v", device="cpu")
    real, seen = pdnet.evaluation.evaluate_arrays, {}
    monkeypatch.setattr(pdnet.evaluation, "evaluate_arrays",
                        lambda preds, **kw: seen.update(preds) or real(preds, **kw))
    got = t.validate()
    assert t.model.training  # left as it was
    ds = build_dataset("davis", synth_data, split="val", size=64, augment=False, output="float")
    assert list(seen) == ds.sequences and ds.sequences
    t.model.eval()
    with torch.no_grad():
        for c, clip in enumerate(ds.clips):
            masks, truth = seen[clip.name]
            samples = [ds[ds.clip_start(c) + pos] for pos in range(len(clip))]
            state = t.model.encode_reference(samples[0]["reference"][None])
            logits = torch.cat([t.model(s["target"][None], state, size=tuple(s["size"].tolist()))[:, 0]
                                for s in samples])
            assert masks.shape == truth.shape == logits.shape == (len(clip), 64, 64)
            clear = logits.abs() > 1e-4  # rounding of the two preprocessings aside
            assert clear.float().mean() > 0.99
            assert torch.equal(masks[clear], (logits > 0)[clear]), clip.name
            assert torch.equal(truth, torch.stack([s["target_mask"][0] >= 0.5 for s in samples]))
    summary = real(seen, protocol="davis").to_dict()["overall"]
    assert got == {"J&F": summary["J&F"], "J": summary["J"]["mean"], "F": summary["F"]["mean"]}
    assert 0 < got["J&F"] < 1  # an untrained model: some foreground, far from the truth
