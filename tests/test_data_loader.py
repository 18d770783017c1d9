"""pdnet.data loaders: determinism across worker processes, the uint8 / raw sample formats and
prepare_batch, packed batches, malloc tuning in the workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import MASK_LEVELS, H, W
from PIL import Image

from pdnet.data import build_dataset, make_loader, prepare_batch
from pdnet.preprocess import IMAGENET_STD

# ------------------------------------------------- workers and sample formats


def test_loader_determinism_across_workers(davis):
    ds = build_dataset("davis", davis, "train", size=24, seed=5)

    def run(workers):
        ds.set_epoch(2)
        loader = make_loader(ds, batch_size=2, workers=workers, seed=11, persistent_workers=False)
        return [(b["index"].tolist(), b["target"].clone(), b["reference_mask"].clone()) for b in loader]

    r0, r2 = run(0), run(2)
    assert [x[0] for x in r0] == [x[0] for x in r2]  # same seeded order
    for (_, t0, m0), (_, t2, m2) in zip(r0, r2, strict=True):
        assert torch.equal(t0, t2) and torch.equal(m0, m2)
    assert sorted(i for x in r0 for i in x[0]) == list(range(len(ds)))[: len(r0) * 2]


def test_uint8_output_and_prepare_batch(davis):
    f = build_dataset("davis", davis, "train", size=24, seed=2)
    u = build_dataset("davis", davis, "train", size=24, seed=2, output="uint8")
    loader = make_loader(u, batch_size=3, workers=0, shuffle=False)
    batch = next(iter(loader))
    assert batch["target"].dtype == torch.uint8 and batch["target_mask"].dtype == torch.uint8
    ready = prepare_batch(batch, "cpu")
    for i in range(3):
        s = f[i]
        torch.testing.assert_close(ready["target"][i], s["target"], atol=2e-6, rtol=0)
        torch.testing.assert_close(ready["reference"][i], s["reference"], atol=2e-6, rtol=0)
        assert (ready["target_mask"][i] - s["target_mask"]).abs().max() <= 0.5 / 255 + 1e-6
    assert ready["sequence"] == batch["sequence"]
    fb = prepare_batch(next(iter(make_loader(f, batch_size=3, workers=0, shuffle=False))))
    assert fb["target"].dtype == torch.float32  # float batches pass through


@pytest.mark.parametrize("augment", [True, False])
def test_raw_output_and_prepare_batch(davis, augment):
    """Workers decode only (output="raw"); prepare_batch does the pixels and, on the CPU,
    gives exactly the output="float" samples."""
    f = build_dataset("davis", davis, "train", size=(24, 20), seed=4, augment=augment)
    r = build_dataset("davis", davis, "train", size=(24, 20), seed=4, augment=augment, output="raw")
    f.set_epoch(3)
    r.set_epoch(3)
    s = r[4]
    assert s["target"].dtype == torch.uint8 and s["target"].shape == (3, H, W)  # the decoded frame
    assert s["target_crop"].shape == (5,) and s["out_size"].tolist() == [24, 20]
    if not augment:
        assert s["target_crop"].tolist() == [0, 0, H, W, 0]
    batch = next(iter(make_loader(r, batch_size=6, workers=0, shuffle=False)))
    ready = prepare_batch(batch, "cpu")
    for i in range(6):
        e = f[i]
        for k in ("target", "target_mask", "reference", "reference_mask"):
            assert torch.equal(ready[k][i], e[k]), (i, k)
    assert ready["sequence"] == [f[i]["sequence"] for i in range(6)]
    with pytest.raises(ValueError, match="output must be one of"):
        build_dataset("davis", davis, "train", output="jpeg")


def test_raw_output_mixed_frame_sizes(tmp_path):
    root = tmp_path / "imgs"
    for t, (h, w) in enumerate([(H, W), (W, H), (30, 30)]):
        img = np.random.default_rng(t).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 3:12] = 255
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"img/{t}.png")
        Image.fromarray(mask).save(root / f"mask/{t}.png")
    f = build_dataset("images", root, "train", size=16, seed=1)
    r = build_dataset("images", root, "train", size=16, seed=1, output="raw")
    batch = next(iter(make_loader(r, batch_size=3, workers=0, shuffle=False)))
    assert batch["target"].shape == (3, 3, W, W)  # padded to the largest frame
    ready = prepare_batch(batch)
    for i in range(3):
        assert torch.equal(ready["target"][i], f[i]["target"])
        assert torch.equal(ready["target_mask"][i], f[i]["target_mask"])


# ------------------------------------------------------------- packed batches


@pytest.mark.parametrize("output", ["uint8", "float", "raw"])
def test_packed_batches(davis, output):
    """collate_pairs packs the four pixel entries into one buffer (a PairBatch): batches
    from worker processes equal in-process ones (and stacked samples), small tensors
    travel by value, prepare_batch of the packed buffer equals the per-entry path."""
    import pickle

    from pdnet.data.collate import collate_pairs
    from pdnet.data.transport import PIXEL_KEYS, PairBatch

    ds = build_dataset("davis", davis, "train", size=(24, 20), seed=3, output=output)
    ds.set_epoch(1)
    samples = [ds[i] for i in range(3)]
    batch = collate_pairs(samples)
    assert isinstance(batch, PairBatch) and batch.intact()
    assert batch.layout == ("planes" if output == "float" else "rgba")
    for k in PIXEL_KEYS:
        assert torch.equal(batch[k], torch.stack([s[k] for s in samples])), k
    assert batch["index"].tolist() == [0, 1, 2] and batch["sequence"] == ["bear"] * 3
    back = pickle.loads(pickle.dumps(batch))  # plain pickle (tensors by value)
    assert isinstance(back, PairBatch) and back.intact()
    ready = prepare_batch(batch)
    loose = prepare_batch(dict(batch))  # a plain dict: per-entry path
    for k in PIXEL_KEYS:
        assert ready[k].dtype == torch.float32 and ready[k].is_contiguous(), k
        assert torch.equal(ready[k], loose[k]) and torch.equal(prepare_batch(back)[k], ready[k]), k
    # an entry replaced: the buffer is no longer used
    changed = batch.__copy__()
    changed["target"] = changed["target"].clone()
    assert not changed.intact() and torch.equal(prepare_batch(changed)["target"], ready["target"])

    def run(workers):
        loader = make_loader(ds, batch_size=3, workers=workers, seed=4, persistent_workers=False)
        return list(loader)

    b0, b2 = run(0), run(2)
    assert len(b0) == len(b2) == 2
    for x, y in zip(b0, b2, strict=True):
        assert isinstance(y, PairBatch) and y.intact()
        assert y["size"].dtype == torch.int64 and y["index"].tolist() == x["index"].tolist()
        for k in PIXEL_KEYS:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.cuda
@pytest.mark.parametrize("output", ["uint8", "raw"])
def test_packed_batches_cuda(davis, output):
    """On a GPU: the packed buffer is pinned once (DataLoader pin_memory) and moved once;
    the result matches the CPU one (float resize there for raw: within one grey level)."""
    from pdnet.data.collate import collate_pairs
    from pdnet.data.transport import PIXEL_KEYS

    ds = build_dataset("davis", davis, "train", size=(24, 20), seed=3, output=output)
    batch = collate_pairs([ds[i] for i in range(3)])
    pinned = batch.pin_memory()
    assert pinned.intact() and pinned.pixels.is_pinned()
    cpu = prepare_batch(batch, "cpu")
    gpu = prepare_batch(pinned, "cuda")
    tol = 2e-6 if output == "uint8" else 1.0 / 255 / min(IMAGENET_STD) + 1e-5
    for k in PIXEL_KEYS:
        assert gpu[k].device.type == "cuda" and gpu[k].is_contiguous()
        assert (gpu[k].cpu() - cpu[k]).abs().max() <= (tol if "mask" not in k else MASK_LEVELS / 255), k
    loader = make_loader(ds, batch_size=3, workers=2, pin_memory=True, persistent_workers=False)
    for b in loader:
        assert b.intact() and b.pixels.is_pinned()


# --------------------------------------------------- malloc tuning in workers


def test_tune_worker_malloc_only_in_workers():
    from pdnet.data.datasets import tune_worker_malloc

    assert tune_worker_malloc() is False  # the main process keeps its allocator settings


class _MallocProbe(torch.utils.data.Dataset):
    """Each sample: how often this process asked glibc to keep freed memory."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        import pdnet._malloc

        return torch.tensor(pdnet._malloc.calls)


@pytest.fixture
def count_malloc_tuning(monkeypatch):
    """pdnet._malloc.keep_freed_memory counting its calls in ``pdnet._malloc.calls`` (the
    loader's worker processes are forked: they inherit the counter and the stand-in)."""
    import pdnet._malloc

    monkeypatch.setattr(pdnet._malloc, "calls", 0, raising=False)

    def counting(*args, **kwargs):
        pdnet._malloc.calls += 1
        return True

    monkeypatch.setattr(pdnet._malloc, "keep_freed_memory", counting)
    return pdnet._malloc


@pytest.mark.parametrize("keep", [False, True])
def test_worker_malloc_tuning_is_opt_in(davis, count_malloc_tuning, keep):
    """Reading samples, in this process or in loader workers, leaves malloc alone unless
    make_loader(keep_freed_memory=True) asks for it, and then only in the workers."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs forked workers, which inherit the counting stand-in")
    ds = build_dataset("davis", davis, "train", size=16)
    for i in range(len(ds)):
        ds[i]
    assert count_malloc_tuning.calls == 0
    loader = make_loader(_MallocProbe(), batch_size=1, workers=1, shuffle=False, persistent_workers=False,
                         keep_freed_memory=keep)
    loader.multiprocessing_context = "fork"
    assert [int(b) for b in loader] == [int(keep)] * 2
    assert count_malloc_tuning.calls == 0
