"""What an op benchmark case costs (bench/bench_ops.py).

FLOPs: attention forward 4*B*p*Nq*Nk*d (the other ops: 0, they are memory-bound), backward
2.5x the forward. Bytes: what the op must read and write at least, the same for every
backend.
"""
from __future__ import annotations

from ops import cases as C  # tests/ops/cases.py (bench_ops.py puts tests/ on sys.path)
from ops_baselines import ATTENTION_ASSEMBLY, parts

#: multiple of the forward's FLOPs per mode
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "grad": 3.5, "full": 3.5}


def min_bytes(case: C.Case, element_size: int) -> tuple[float, float]:
    """Bytes the forward and the backward must read and write at least, every backend alike."""
    d, es = case.dims, element_size
    if case.op == "part_attention":
        B, p, Nq, Nk, hd = (d[n] for n in ("B", "p", "Nq", "Nk", "d"))
        io = es * (2 * B * p * Nq * hd + 2 * B * p * Nk * hd) + 4 * B * p * Nq  # q, k, v, out; fp32 log-sum-exp
        if case.options.get("key_mask") is not None:
            io += es * B * p * Nk
        return io, 2 * io
    n = d["B"] * d["h"] * d["w"]
    p = d["p"]
    if case.op == "part_masks":
        return es * n * (2 * p + 1), es * n * (3 * p + 2)  # read D, S; write M / read dM, D, S; write dD, dS
    if case.op == "part_masks_gt":
        return es * n * (2 * p + 1), es * n * (3 * p + 1 + bool(case.options.get("mask_grad")))
    if case.op == "assemble_parts":
        c = d["C"]
        # read P, Y, R; write out / read dout, P, Y, R; write dP (= dY, one tensor), dR
        return es * n * (2 * p * c + p + c), es * n * (3 * p * c + 2 * p + c)
    return es * n * p, 0.0  # area_variance: its backward is one coefficient per (batch, part), broadcast


def case_cost(case: C.Case, element_size: int) -> tuple[float, float, float]:
    """(forward FLOPs, forward bytes, backward bytes) of ``case``; see :func:`min_bytes`."""
    if case.op == ATTENTION_ASSEMBLY:
        attention, assembly = parts(case)
        costs = [min_bytes(attention, element_size), min_bytes(assembly, element_size)]
        return C.flops(attention), costs[0][0] + costs[1][0], costs[0][1] + costs[1][1]
    return (C.flops(case), *min_bytes(case, element_size))
