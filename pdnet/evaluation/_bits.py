"""Bit-packed binary masks in torch: the engine behind the fast DAVIS metrics.

A binary mask ``[..., H, W]`` is stored as ``int64`` words ``[..., H, Wp]``, 64 pixels a
word along the width: pixel ``x`` of a row is bit ``x % 64`` of word ``x // 64``; the
padding bits after the image (``x >= W``) are 0. Horizontal shifts work on the
flattened (contiguous) words, carrying bits between neighbouring words; a bit carried
past the end of a row lands in the next row's padding, or in this row's padding from
the next row, and never reaches an image pixel as long as every row has at least
``radius`` padding bits (:func:`packed_width`): the shifts of one dilation move a bit
by ``radius`` pixels at most. Row shifts are slices along ``H``.

torch has no logical right shift for signed integers: ``>>`` of int64 is arithmetic, so
it is followed by a mask; ``<<`` wraps. Every function here works on any device and
never synchronises; on the CPU, packing and popcounts go through NumPy's
``packbits`` / ``bitwise_count`` (same results, one pass in C instead of several torch ops).
"""
from __future__ import annotations

import sys

import numpy as np
import torch

if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("pdnet.evaluation._bits assumes a little-endian machine")

# (v * _GATHER) >> 56 collects bit 8k of v (k = 0..7) into bit 56 + k: the eight partial
# products occupy distinct bits, so there are no carries.
_GATHER = 0x0102040810204080
_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_BYTES = 0x0101010101010101


def _low(n: int) -> int:
    """int64 constant with the low ``n`` bits set (n = 0..64)."""
    return -1 if n >= 64 else (1 << n) - 1


def packed_width(w: int, radius: int = 0) -> int:
    """Words per row for an image ``w`` pixels wide: at least ``max(radius, 1)`` padding bits."""
    return (w + max(radius, 1) + 63) // 64


def pack(m: torch.Tensor, wp: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor[..., H, W] bool -> Tensor[..., H, wp] int64 (zero padding), contiguous.

    ``out`` (Tensor[..., H, wp] int64, contiguous), when given, receives the result.
    """
    *lead, h, w = m.shape
    if out is None:
        out = torch.empty((*lead, h, wp), dtype=torch.int64, device=m.device)
    if m.device.type != "cpu":
        return out.copy_(pack_torch(m, wp))
    byte = np.packbits(m.numpy(), axis=-1, bitorder="little")  # [..., H, ceil(W / 8)]
    o = out.numpy().view(np.uint8)  # [..., H, 8 wp]
    o[..., : byte.shape[-1]] = byte
    o[..., byte.shape[-1] :] = 0
    return out


def pack_torch(m: torch.Tensor, wp: int) -> torch.Tensor:
    """:func:`pack` with torch ops only (any device; the path used on CUDA)."""
    *lead, h, w = m.shape
    buf = torch.zeros((*lead, h, wp * 64), dtype=torch.uint8, device=m.device)  # [..., H, 64 wp]
    buf[..., :w] = m
    v = buf.view(torch.int64)  # [..., H, 8 wp]: byte k of a word = pixel 8i + k (0 or 1)
    byte = ((v * _GATHER) >> 56).to(torch.uint8)  # [..., H, 8 wp]: 8 pixels a byte
    return byte.view(torch.int64)  # [..., H, wp]


def row_mask(w: int, wp: int, device, n: int | None = None) -> torch.Tensor:
    """Tensor[wp] int64 with the bits of pixels ``x < n`` set (``n`` defaults to ``w``)."""
    n = w if n is None else n
    words = [_low(min(64, max(0, n - 64 * j))) for j in range(wp)]
    return torch.tensor(words, dtype=torch.int64, device=device)


def popcount(x: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Set bits over the last ``dims`` dimensions: Tensor[..., H, Wp] int64 -> Tensor[...] int64."""
    if x.device.type != "cpu" or not hasattr(np, "bitwise_count"):  # NumPy < 2.0 has no bitwise_count
        return popcount_torch(x, dims)
    c = np.bitwise_count(x.contiguous().numpy().view(np.uint64))  # uint8 per word
    return torch.from_numpy(c.sum(axis=tuple(range(-dims, 0)), dtype=np.int64))


def popcount_torch(x: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """:func:`popcount` with torch ops only (SWAR; the path used on CUDA)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # each byte holds its own count
    return ((x * _BYTES) >> 56).sum(dim=tuple(range(-dims, 0)))


def _shift_lo(x: torch.Tensor, b: int, out: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """out = pixels moved ``b`` towards lower x (pixel x takes pixel x + b), flat words, 0 < b < 64."""
    torch.bitwise_right_shift(x, b, out=out)
    out &= _low(64 - b)
    torch.bitwise_left_shift(x[1:], 64 - b, out=tmp[:-1])
    out[:-1] |= tmp[:-1]
    return out


def _widen(x: torch.Tensor, b: int, out: torch.Tensor, tmp: torch.Tensor, tmp2: torch.Tensor) -> torch.Tensor:
    """out = x | x moved b towards lower x | x moved b towards higher x, flat words, 0 < b < 64."""
    torch.bitwise_right_shift(x, b, out=out)  # within words
    out &= _low(64 - b)
    out |= x
    torch.bitwise_left_shift(x, b, out=tmp)
    out |= tmp
    torch.bitwise_left_shift(x[1:], 64 - b, out=tmp[:-1])  # carries from the next word
    out[:-1] |= tmp[:-1]
    torch.bitwise_right_shift(x[:-1], 64 - b, out=tmp2[1:])  # carries from the previous word
    tmp2[1:] &= _low(b)
    out[1:] |= tmp2[1:]
    return out


def boundary(p: torch.Tensor, w: int) -> torch.Tensor:
    """DAVIS ``seg2bmap`` of packed masks: Tensor[N, H, Wp] -> Tensor[N, H, Wp].

    A pixel is on the boundary when it differs from its right (E), lower (V) or
    lower-right neighbour; neighbours outside the image do not count. With E = 0 in the
    last column, "differs from the lower-right" is V xor E_down (E of the next row), and
    E | V | (V ^ E_down) = E | V | E_down; the last row has only E.
    """
    n, h, wp = p.shape
    flat = p.reshape(-1)
    e = torch.empty_like(flat)
    _shift_lo(flat, 1, e, torch.empty_like(flat))
    e ^= flat
    e = e.view(n, h, wp)
    e &= row_mask(w, wp, p.device, w - 1)  # no right neighbour in the last column
    b = torch.empty_like(p)
    torch.bitwise_xor(p[:, :-1], p[:, 1:], out=b[:, :-1])  # V
    b[:, :-1] |= e[:, 1:]
    b[:, -1] = 0
    b |= e
    return b


def disk_widths(radius: int) -> list[int]:
    """Half-widths of the disk's rows: w[dy] = max{w : w^2 + dy^2 <= r^2}, dy = 0..r."""
    r = int(radius)
    out = []
    for dy in range(r + 1):
        k = int((r * r - dy * dy) ** 0.5)
        while k * k > r * r - dy * dy:
            k -= 1
        while (k + 1) * (k + 1) <= r * r - dy * dy:
            k += 1
        out.append(k)
    return out


def _widen_plan(widths: list[int]) -> list[tuple[int, int]]:
    """Steps (a, k): widen the map of half-width a by k - a. A step is exact when k - a <= 2a + 1."""
    done = [0]
    plan = []
    for k in sorted(set(widths) - {0}):
        while True:
            a = max(done)
            if k - a <= 2 * a + 1 and k - a < 64:
                break
            nxt = min(3 * a + 1, a + 63)  # an intermediate half-width
            plan.append((a, nxt))
            done.append(nxt)
        plan.append((a, k))
        done.append(k)
    return plan


def dilate_disk(b: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of packed maps by the disk x^2 + y^2 <= r^2, zero outside the image.

    Tensor[N, H, Wp] -> Tensor[N, H, Wp]; rows need ``radius`` zero bits after their
    last set bit (:func:`packed_width`). The disk is the union of its rows, row dy a
    horizontal segment of half-width ``disk_widths(r)[|dy|]``: the dilation is the OR
    over dy of the horizontally widened map moved by dy rows. Widening by s from
    half-width a (s <= 2a + 1) is x | x moved s left | x moved s right. Every shift works
    on the flattened words, the maps being laid out with ``radius`` zero rows after each
    one so that no row shift reaches the next map. Bits dilated into the row padding
    are kept; callers AND with an unpadded map.
    """
    n, h, wp = b.shape
    x = torch.zeros((n, h + radius, wp), dtype=b.dtype, device=b.device)  # [N, H + r, Wp]
    x[:, :h] = b
    x = x.view(-1)
    widths = disk_widths(radius)
    wide = {0: x}
    tmp, tmp2 = torch.empty_like(x), torch.empty_like(x)
    for a, k in _widen_plan(widths):
        wide[k] = _widen(wide[a], k - a, torch.empty_like(x), tmp, tmp2)
    out = wide[widths[0]].clone()  # row dy = 0
    for dy in range(1, radius + 1):
        src, o = wide[widths[dy]], dy * wp
        out[:-o] |= src[o:]
        out[o:] |= src[:-o]
    return out.view(n, h + radius, wp)[:, :h]


def crop_box(b: torch.Tensor, radius: int) -> tuple[int, int, int, int]:
    """Rows [y0, y1) and words [j0, j1) of Tensor[N, H, Wp] holding every set bit, plus
    enough zero words after them for :func:`dilate_disk` (one host sync); y1 == y0 when empty."""
    n, h, wp = b.shape
    nz = b != 0  # [N, H, Wp]
    rows = nz.any(dim=2).any(dim=0).nonzero()
    if rows.numel() == 0:
        return 0, 0, 0, 0
    cols = nz.any(dim=1).any(dim=0).nonzero()
    j1 = min(wp, int(cols[-1]) + 1 + (radius + 63) // 64)  # zero words after the last set bit, or the row padding
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), j1


def boundary_matches(b: torch.Tensor, radius: int) -> torch.Tensor:
    """Boundary pixels of each map within the disk of radius ``radius`` of the other's.

    Args:
        b (Tensor[2C, H, Wp] int64): packed boundaries (:func:`boundary`), predictions
            and ground truth interleaved (``b[2k]``, ``b[2k + 1]`` for frame k), zero in
            the padding, rows with at least ``radius`` padding bits (:func:`packed_width`).
    Returns:
        Tensor[2, C] int64: ``[|pred_b & dilate(gt_b)|, |gt_b & dilate(pred_b)|]`` per frame.

    Only the rows and word columns that hold boundary pixels are dilated; the answer
    does not depend on that cropping (a bit outside it has nothing to match).
    """
    n, h, wp = b.shape
    y0, y1, j0, j1 = crop_box(b, radius)
    if y1 == y0:
        return torch.zeros(2, n // 2, dtype=torch.int64, device=b.device)
    b = b[:, y0:y1, j0:j1]  # [2C, h', w'] (dilate_disk copies it)
    d = dilate_disk(b, radius)
    return popcount(torch.stack([b[0::2] & d[1::2], b[1::2] & d[0::2]]))  # [2, C]
