"""Helpers to rebuild the release parity fixture's weights (see tests/data/official/PARITY.md)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "official"
FIXTURE = DATA / "parity_resnet50_64x64.pt"
KEYS = DATA / "keys_resnet50.tsv"


def read_keys(path: Path = KEYS):
    """[(name, shape, dtype)] in the release's order."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        name, shape, dtype = line.split("\t")
        dims = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        rows.append((name, tuple(dims), dtype))
    return rows


def recipe_state_dict(keys, seed_base: int = 1000):
    """The deterministic weights of PARITY.md for a list of (name, shape, dtype)."""
    state = {}
    for i, (name, shape, _) in enumerate(keys):
        g = torch.Generator().manual_seed(seed_base + i)
        if name.endswith("num_batches_tracked"):
            v = torch.tensor(0, dtype=torch.long)
        elif name.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            v = 0.05 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        state[name] = v
    return state
