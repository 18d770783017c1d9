"""Multi-process training (DistributedDataParallel) on the CPU with gloo: 2 ranks stay
in step, only rank 0 writes, and a 2-rank run resumes from its checkpoint."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import synth_data  # noqa: F401 - a fixture: pytest passes it by name

from pdnet.inference.checkpoint import read_checkpoint

HERE = Path(__file__).resolve().parent


def _bn_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(data, out, steps, resume=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "ddp_train_script.py"), str(data), str(out), str(steps), "resume" if resume else "new"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_ranks_stay_in_step_and_resume(synth_data, tmp_path):  # noqa: F811 - the fixture imported above
    out = tmp_path / "run"
    torchrun(synth_data, out, 2)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["world"] == r1["world"] == 2 and r0["step"] == r1["step"] == 2
    # weights agree exactly; BatchNorm running statistics are per rank on the CPU (no
    # SyncBatchNorm there; DDP re-broadcasts rank 0's buffers at each forward)
    differ = [k for k in r0["weights"] if not _bn_stat(k) and not torch.equal(r0["weights"][k], r1["weights"][k])]
    assert not differ, f"ranks diverged in {differ[:5]}"
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["step"] == 2
    saved = [k for k, v in ckpt["model"].items() if not torch.equal(v, r0["weights"][k])]
    assert not saved, f"last.pt differs from rank 0 in {saved[:5]}"
    # one metrics writer (rank 0) and one line per step
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"step"' in ln]) == 2

    torchrun(synth_data, out, 4, resume=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["step"] == r1["step"] == 4
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"] if not _bn_stat(k))
    assert read_checkpoint(out / "last.pt")["step"] == 4
