"""Fake motion of a synthetic layer: random smooth trajectories, the per-frame backward
map of a layer (a global similarity plus smooth optical flow at three scales) and the
sampling of a layer through it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def smooth_track(
    rng: np.random.Generator, frames: int, shape: tuple[int, ...], spacing: float, low, high
) -> np.ndarray:
    """A random smooth trajectory: knots uniform in [low, high] every ``spacing`` frames,
    Catmull-Rom interpolated (C1-smooth), with a random phase.

    Returns:
        ndarray[frames, *shape] float64.
    """
    k = int(math.ceil(max(frames - 1, 1) / spacing)) + 5
    knots = rng.uniform(low, high, size=(k,) + tuple(shape))
    u = 1.0 + rng.uniform(0.0, 1.0) + np.arange(frames) / float(spacing)
    i = np.floor(u).astype(np.int64)
    s = (u - i).reshape((frames,) + (1,) * len(shape))
    p0, p1, p2, p3 = knots[i - 1], knots[i], knots[i + 1], knots[i + 2]
    return 0.5 * (
        2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2 + (3 * p1 - p0 - 3 * p2 + p3) * s**3
    )


@dataclass
class Motion:
    """A layer's fake motion: similarity about ``anchor`` plus three-scale smooth flow.

    Arrays are per frame: ``shift`` [T, 2] px, ``angle`` [T] rad, ``scale`` [T];
    ``flows``: per scale, control displacements [T, 2, gh, gw] in px.
    """

    anchor: tuple[float, float]
    shift: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    flows: list[np.ndarray]

    @staticmethod
    def random(
        rng: np.random.Generator,
        frames: int,
        size: tuple[int, int],
        anchor: tuple[float, float],
        shift: float,
        angle: float,
        scale: float,
        flow: float,
        zoom_only: bool = False,
    ) -> Motion:
        """``shift``, ``flow``: amplitudes as fractions of min(H, W); ``angle`` in degrees;
        ``scale``: log-scale amplitude (``zoom_only``: scales >= 1)."""
        h, w = size
        m = float(min(h, w))
        sh = smooth_track(rng, frames, (2,), 14, -shift * m, shift * m)
        an = smooth_track(rng, frames, (), 16, -math.radians(angle), math.radians(angle))
        lo = 0.0 if zoom_only else -scale
        sc = np.exp(smooth_track(rng, frames, (), 16, lo, scale))
        flows = []
        # three scales: coarse / medium / fine control grids, decreasing amplitude, faster change
        for cells, amp, spacing in ((2, 1.0, 12), (4, 0.4, 8), (8, 0.15, 5)):
            gh = cells + 1
            gw = max(2, int(round(cells * w / h))) + 1
            flows.append(smooth_track(rng, frames, (2, gh, gw), spacing, -flow * amp * m, flow * amp * m))
        return Motion(anchor, sh, an, sc, flows)

    def coarse(self, t: int, size: tuple[int, int]) -> torch.Tensor:
        """Backward map of frame ``t`` (canvas pixel -> layer pixel) on a coarse grid.

        Returns:
            Tensor[hc, wc, 2] (x, y) layer coordinates of the canvas pixels
            ``linspace(0, H-1, hc) x linspace(0, W-1, wc)``, hc = ceil(H/8) + 1. The map
            is smooth (an affine map of bilinearly upsampled flow), so :func:`dense`
            upsamples it to every pixel.
        """
        h, w = size
        hc, wc = (h + 7) // 8 + 1, (w + 7) // 8 + 1
        flow = torch.zeros(1, 2, hc, wc, dtype=torch.float32)
        for f in self.flows:
            ctrl = torch.from_numpy(f[t].astype(np.float32))[None]
            flow += F.interpolate(ctrl, size=(hc, wc), mode="bicubic", align_corners=True)
        ys = torch.linspace(0.0, h - 1.0, hc)
        xs = torch.linspace(0.0, w - 1.0, wc)
        qx = xs[None, :] + flow[0, 0]  # [hc, wc]
        qy = ys[:, None] + flow[0, 1]
        ax, ay = self.anchor
        dx = qx - ax - float(self.shift[t, 0])
        dy = qy - ay - float(self.shift[t, 1])
        c, s = math.cos(-float(self.angle[t])), math.sin(-float(self.angle[t]))
        k = 1.0 / float(self.scale[t])
        return torch.stack([(c * dx - s * dy) * k + ax, (s * dx + c * dy) * k + ay], dim=-1)


def dense(coarse: torch.Tensor, src_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Coarse layer coordinates (Tensor[hc, wc, 2], pixels of a ``src_size`` source) ->
    the ``grid_sample`` grid of every canvas pixel, Tensor[1, H, W, 2] in [-1, 1]
    (``align_corners=False`` convention)."""
    hs, ws = src_size
    g = torch.empty_like(coarse)
    g[..., 0] = (2.0 * coarse[..., 0] + 1.0) / ws - 1.0
    g[..., 1] = (2.0 * coarse[..., 1] + 1.0) / hs - 1.0
    g = F.interpolate(g.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=True)
    return g.permute(0, 2, 3, 1)


def sample_layer(src: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear sampling of ``src`` (Tensor[C, Hs, Ws]) at ``grid`` (from :func:`dense`)
    -> Tensor[C, H, W]."""
    return F.grid_sample(src[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]
