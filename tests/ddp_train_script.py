"""Run by tests/test_train_ddp.py under ``torch.distributed.run --nproc_per_node 2``:
trains the tiny config on the CPU (gloo) and saves each rank's final weights."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import tiny_cfg, weights  # noqa: E402

from pdnet.train import Trainer  # noqa: E402


def main(data: str, out: str, steps: int, resume: bool) -> None:
    trainer = Trainer(tiny_cfg(Path(data)), out, resume=resume, device="cpu", echo=lambda *a: None)
    result = trainer.fit(steps)
    rank = dist.get_rank()
    torch.save({"weights": weights(trainer), "step": result["step"], "world": trainer.world},
               Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "resume")
