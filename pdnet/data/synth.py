"""``pdnet synth``: a synthetic video portrait dataset in the DAVIS-2016 layout.

Clips follow the fake-motion recipe of "Temporally coherent person matting trained on
fake-motion dataset" (Molodetskikh et al.): each layer (background, every person) is
moved by its own random smooth warp, the sum of a global similarity (translation,
scale, rotation) and random smooth optical flow at three scales (coarse, medium, fine
control grids, interpolated smoothly in time), and with probability 1/3 a person is
shifted half out of the frame and back over the clip. The people are

- articulated figures whose torso, head and each arm (upper arm, forearm, hand) follow
  independent trajectories of different speeds: arms fast, head medium, torso slow (the
  imbalanced part motion PDNet is built for);
- real people cut out of ``skimage.data.astronaut()`` / ``camera()`` with the exact
  masks shipped in ``pdnet/assets``;

composited onto photos that scikit-image ships (no download). Some clips hold two
people, some carry subtitle-like text over the person.

Masks are exact: a pixel is 255 where the frame shows a person pixel and 0 elsewhere.
Layers are composited with binary alpha (resampled premultiplied, alpha >= 1/2), and the
mask is that alpha; subtitle text is drawn in front of the person, so its glyph pixels
are 0 in the mask. JPEG frames are lossy; the PNG masks are not.

Same seed, same bytes: everything is drawn from ``numpy.random.default_rng([seed, clip])``
and rendered with deterministic CPU operations, so the output does not depend on the
number of worker processes or threads (on one machine and software stack).

Output::

    OUT/JPEGImages/480p/<seq>/00000.jpg       frames (the 480p folder name is the layout's)
    OUT/Annotations/480p/<seq>/00000.png      masks, 0/255 greyscale
    OUT/ImageSets/480p/{train,val,trainval}.txt  "/JPEGImages/... /Annotations/..." pairs
    OUT/ImageSets/2016/{train,val}.txt        sequence names
    OUT/synth.json                            parameters and what each clip holds (the manifest)

``synth.json`` is written first (marked ``"in_progress"``) and completed at the end, so
``--force`` (:func:`remove_previous`) can delete exactly the files of a previous run,
finished or interrupted, before writing a new one: two seeds are never mixed, and a
folder without that manifest is never deleted from.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .synth_cli import MAX_SIDE, add_parser, parse_size, run  # noqa: F401  (the CLI)

#: real backgrounds: scikit-image photos that ship with the package (no download)
BACKGROUNDS = (
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "stereo_motorcycle",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
    "coins",
    "clock",
)
#: real people: scikit-image photo -> exact mask in pdnet/assets
PEOPLE = {"astronaut": "astronaut_mask.png", "camera": "camera_mask.png"}

P_TWO_PEOPLE = 0.3
P_TEXT = 0.3
P_OUT_OF_FRAME = 1.0 / 3.0
P_FIGURE = 0.5  # else a cut-out real person

_WORDS = (
    "the we you they said never know today here there what when night again maybe "
    "really think about right something believe home tomorrow listen look wait time "
    "people world always together little should would"
).split()

_FLAT_BG = (0.0, 0.0, 255.0)
_FLAT_PERSON = (255.0, 0.0, 0.0)
_FLAT_TEXT = (0.0, 255.0, 0.0)


# --------------------------------------------------------------------------- tracks


def smooth_track(rng: np.random.Generator, frames: int, shape: Tuple[int, ...], spacing: float, low, high) -> np.ndarray:
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

    anchor: Tuple[float, float]
    shift: np.ndarray
    angle: np.ndarray
    scale: np.ndarray
    flows: List[np.ndarray]

    @staticmethod
    def random(
        rng: np.random.Generator,
        frames: int,
        size: Tuple[int, int],
        anchor: Tuple[float, float],
        shift: float,
        angle: float,
        scale: float,
        flow: float,
        zoom_only: bool = False,
    ) -> "Motion":
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

    def coarse(self, t: int, size: Tuple[int, int]) -> torch.Tensor:
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


def dense(coarse: torch.Tensor, src_size: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
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


# --------------------------------------------------------------------------- assets


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as uint8 [H, W, 3] (grey images replicated)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


@lru_cache(maxsize=None)
def person_source(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """A real person: (RGB uint8 [H, W, 3], mask bool [H, W]) cropped to the mask's box."""
    from PIL import Image

    rgb = _photo(name)
    with resources.files("pdnet.assets").joinpath(PEOPLE[name]).open("rb") as f:
        mask = np.asarray(Image.open(f).convert("L")) >= 128
    if mask.shape != rgb.shape[:2]:
        raise RuntimeError(f"pdnet/assets/{PEOPLE[name]} is {mask.shape}, photo is {rgb.shape[:2]}")
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _font(size: int):
    from PIL import ImageFont, features

    if features.check("freetype2"):
        return ImageFont.load_default(size=size)
    return ImageFont.load_default()


# --------------------------------------------------------------------------- people


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape [n, n] (bicubic upsampling of a random grid)."""
    g = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(g, size=(n, n), mode="bicubic", align_corners=True)[0, 0].clamp(-1, 1).numpy()


def _texture(rng: np.random.Generator, color: np.ndarray, var: float, stripes: bool) -> np.ndarray:
    """A 64 x 64 RGB float texture around ``color``."""
    n = 64
    t = color[None, None, :] * (1.0 + var * _smooth_noise(rng, n, 5)[..., None])
    if stripes:
        period = rng.integers(6, 16)
        band = (np.arange(n) // (period // 2)) % 2 == 0
        t[band, :, :] *= rng.uniform(0.55, 0.8)
    return np.clip(t, 0, 255).astype(np.float32)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _ellipse(c: np.ndarray, rx: float, ry: float, a: float, n: int = 36) -> List[Tuple[float, float]]:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(th), ry * np.sin(th)], 1)
    ca, sa = math.cos(a), math.sin(a)
    pts = pts @ np.array([[ca, sa], [-sa, ca]]) + c
    return [tuple(p) for p in pts]


def _capsule(p0: np.ndarray, p1: np.ndarray, r: float, n: int = 10) -> List[Tuple[float, float]]:
    d = p1 - p0
    a = math.atan2(d[1], d[0])
    pts = []
    for th in np.linspace(a + np.pi / 2, a + 3 * np.pi / 2, n):
        pts.append(p0 + r * np.array([math.cos(th), math.sin(th)]))
    for th in np.linspace(a - np.pi / 2, a + np.pi / 2, n):
        pts.append(p1 + r * np.array([math.cos(th), math.sin(th)]))
    return [tuple(p) for p in pts]


class Figure:
    """An articulated upper-body figure whose parts move independently.

    Torso (slow sway about the hips), neck, head (medium: turn and nod), and two arms
    each made of upper arm, forearm and hand, driven by their own fast trajectories of
    shoulder and elbow angles. ``render(t)`` draws frame ``t`` on the canvas.
    """

    def __init__(self, rng: np.random.Generator, frames: int, size: Tuple[int, int], cx: float, height: float, flat: bool):
        h, w = size
        self.size = size
        self.S = height
        self.hip = np.array([cx, h + rng.uniform(0.0, 0.08) * height])
        self.wh = height * rng.uniform(0.30, 0.40)
        self.ws = height * rng.uniform(0.40, 0.52)
        T = frames
        self.torso_angle = smooth_track(rng, T, (), 20, -math.radians(6), math.radians(6))
        self.torso_dx = smooth_track(rng, T, (), 20, -0.03 * height, 0.03 * height)
        self.head_angle = smooth_track(rng, T, (), 9, -math.radians(22), math.radians(22))
        self.head_nod = smooth_track(rng, T, (), 9, -0.02 * height, 0.03 * height)
        # arms: shoulder angle from hanging down (0) to raised outward (~150 deg), elbow bend
        self.shoulder = [smooth_track(rng, T, (), rng.uniform(4, 7), -0.3, 2.6) for _ in range(2)]
        self.elbow = [smooth_track(rng, T, (), rng.uniform(4, 7), 0.0, 2.4) for _ in range(2)]
        self.elbow_sign = [float(rng.choice([-1.0, 1.0])) for _ in range(2)]
        self.long_sleeves = bool(rng.integers(0, 2))
        skin = np.array([rng.uniform(120, 240), rng.uniform(80, 190), rng.uniform(60, 160)])
        skin = np.sort(skin)[::-1]  # r >= g >= b: a plausible skin tone
        hair = _random_color(rng) * rng.uniform(0.2, 0.6)
        self.tex = {
            "shirt": _texture(rng, _random_color(rng), 0.25, bool(rng.integers(0, 2))),
            "skin": _texture(rng, skin, 0.08, False),
            "hair": _texture(rng, hair, 0.2, False),
        }
        if flat:  # same random draws as the textured figure, so the same geometry
            col = np.array(_FLAT_PERSON, dtype=np.float32)
            self.tex = {k: np.broadcast_to(col, v.shape) for k, v in self.tex.items()}
        self.texel = max(self.S / 90.0, 0.5)

    def render(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        """Frame ``t``: (RGB float32 [H, W, 3], alpha bool [H, W]) on the canvas."""
        from PIL import Image, ImageDraw

        h, w = self.size
        S = self.S
        ta = float(self.torso_angle[t])
        hip = self.hip + np.array([self.torso_dx[t], 0.0])
        to_world = lambda v: hip + _rot(np.asarray(v, dtype=np.float64), ta)  # noqa: E731
        parts = []  # (polygon, texture, origin, angle)
        torso = [(-self.wh / 2, 0.15 * S), (self.wh / 2, 0.15 * S)]
        for th in np.linspace(0, np.pi, 13):
            torso.append((self.ws / 2 * math.cos(th), -0.36 * S - 0.07 * S * math.sin(th)))
        parts.append(([tuple(to_world(p)) for p in torso], "shirt", hip, ta))
        neck = [(-0.045 * S, -0.38 * S), (0.045 * S, -0.38 * S), (0.045 * S, -0.49 * S), (-0.045 * S, -0.49 * S)]
        parts.append(([tuple(to_world(p)) for p in neck], "skin", hip, ta))
        neck_top = to_world((0.0, -0.47 * S))
        ha = ta + float(self.head_angle[t])
        head_c = neck_top + _rot(np.array([0.0, -0.12 * S + float(self.head_nod[t])]), ha)
        hair_c = neck_top + _rot(np.array([0.0, -0.145 * S + float(self.head_nod[t])]), ha)
        parts.append((_ellipse(hair_c, 0.105 * S, 0.125 * S, ha), "hair", head_c, ha))
        parts.append((_ellipse(head_c, 0.092 * S, 0.122 * S, ha), "skin", head_c, ha))
        for side, sign in ((0, -1.0), (1, 1.0)):
            sh = to_world((sign * (self.ws / 2 - 0.04 * S), -0.38 * S))
            phi = float(self.shoulder[side][t])
            up_dir = _rot(np.array([sign * math.sin(phi), math.cos(phi)]), ta)
            elbow = sh + 0.26 * S * up_dir
            psi = phi + self.elbow_sign[side] * float(self.elbow[side][t])
            fo_dir = _rot(np.array([sign * math.sin(psi), math.cos(psi)]), ta)
            wrist = elbow + 0.24 * S * fo_dir
            a_up = math.atan2(up_dir[1], up_dir[0])
            a_fo = math.atan2(fo_dir[1], fo_dir[0])
            parts.append((_capsule(sh, elbow, 0.045 * S), "shirt", sh, a_up))
            parts.append((_capsule(elbow, wrist, 0.038 * S), "shirt" if self.long_sleeves else "skin", elbow, a_fo))
            parts.append((_ellipse(wrist + 0.03 * S * fo_dir, 0.042 * S, 0.05 * S, a_fo), "skin", wrist, a_fo))
        label = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(label)
        for k, (poly, *_rest) in enumerate(parts, 1):
            draw.polygon(poly, fill=k)
        lab = np.asarray(label)
        rgb = np.zeros((h, w, 3), dtype=np.float32)
        alpha = lab > 0
        ys, xs = np.nonzero(alpha)
        if ys.size:
            ids = lab[ys, xs]
            for k, (_poly, tex_name, origin, ang) in enumerate(parts, 1):
                sel = ids == k
                if not sel.any():
                    continue
                px = xs[sel] - origin[0]
                py = ys[sel] - origin[1]
                c, s = math.cos(-ang), math.sin(-ang)
                u = np.floor((c * px - s * py) / self.texel).astype(np.int64) % 64
                v = np.floor((s * px + c * py) / self.texel).astype(np.int64) % 64
                rgb[ys[sel], xs[sel]] = self.tex[tex_name][v, u]
        return rgb, alpha


class Person:
    """One person layer: its source (figure or cut-out), placement and fake motion."""

    def __init__(self, rng, kind: str, frames: int, size: Tuple[int, int], cx: float, flat: bool, out_of_frame: bool):
        h, w = size
        self.kind = kind
        self.out_of_frame = out_of_frame
        if kind == "figure":
            height = h * rng.uniform(0.6, 0.95)
            self.figure: Optional[Figure] = Figure(rng, frames, size, cx, height, flat)
            anchor = (cx, h - 0.35 * height)
            half_width = 0.5 * (self.figure.ws + 0.5 * height)
            self.place = None
            self.source = None
            motion_amp = dict(shift=0.04, angle=3.0, scale=0.04, flow=0.012)
        else:
            self.figure = None
            rgb, mask = person_source(kind)
            if rng.integers(0, 2):
                rgb, mask = rgb[:, ::-1], mask[:, ::-1]
            ph, pw = mask.shape
            height = h * rng.uniform(0.65, 1.0)
            k = height / ph
            bottom = h + rng.uniform(0.0, 0.08) * height
            # placement: canvas (x, y) -> source ((x - x0) / k, (y - y0) / k)
            self.place = (cx - 0.5 * pw * k, bottom - ph * k, k)
            colors = np.broadcast_to(np.array(_FLAT_PERSON), rgb.shape) if flat else rgb
            m = torch.from_numpy(mask.astype(np.float32))
            c = torch.from_numpy(np.ascontiguousarray(colors, dtype=np.float32)).permute(2, 0, 1)
            self.source = torch.cat([c * m, m[None]], 0)  # premultiplied [4, ph, pw]
            anchor = (cx, bottom - 0.5 * ph * k)
            half_width = 0.5 * pw * k
            motion_amp = dict(shift=0.06, angle=6.0, scale=0.06, flow=0.02)
        self.motion = Motion.random(rng, frames, size, anchor, **motion_amp)
        self.center_x = cx
        if out_of_frame:
            # centre to the nearer edge at mid-clip (half the person out), then back
            edge = 0.0 if cx < w / 2 else float(w)
            tt = np.arange(frames) / max(frames - 1, 1)
            self.motion.shift[:, 0] += (edge - cx) * np.sin(np.pi * tt)
        self.half_width = half_width

    def layer(self, t: int, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frame ``t``: (RGB Tensor[3, H, W] float, alpha Tensor[H, W] bool) on the canvas."""
        coords = self.motion.coarse(t, size)
        if self.figure is not None:
            rgb, alpha = self.figure.render(t)
            a = torch.from_numpy(alpha.astype(np.float32))
            src = torch.cat([torch.from_numpy(rgb).permute(2, 0, 1) * a, a[None]], 0)
        else:
            x0, y0, k = self.place
            src = self.source
            coords = torch.stack([(coords[..., 0] - x0) / k, (coords[..., 1] - y0) / k], -1)
        out = sample_layer(src, dense(coords, tuple(src.shape[-2:]), size), "zeros")
        a = out[3]
        on = a >= 0.5
        rgb = out[:3] / a.clamp_min(0.5)
        return rgb, on


# --------------------------------------------------------------------------- clips


class Background:
    """A photo, cropped, flipped and resized to 1.3x the canvas, moved by camera motion."""

    def __init__(self, rng: np.random.Generator, name: str, frames: int, size: Tuple[int, int], flat: bool):
        from PIL import Image

        h, w = size
        hb, wb = int(math.ceil(1.3 * h)), int(math.ceil(1.3 * w))
        img = _photo(name)
        ih, iw = img.shape[:2]
        frac = rng.uniform(0.6, 1.0)
        ch = int(min(ih, iw * hb / wb) * frac)
        cw = int(ch * wb / hb)
        y0 = int(rng.integers(0, ih - ch + 1))
        x0 = int(rng.integers(0, iw - cw + 1))
        flip = bool(rng.integers(0, 2))
        grey = np.ptp(img[::4, ::4].astype(np.int16), axis=2).max() == 0
        tint = rng.uniform(0.75, 1.15, size=3) if grey else np.ones(3)
        gain = rng.uniform(0.8, 1.15)
        if flat:  # same random draws as a photo background, so the same motion
            self.source = torch.tensor(_FLAT_BG, dtype=torch.float32).view(3, 1, 1).expand(3, hb, wb).contiguous()
        else:
            crop = img[y0 : y0 + ch, x0 : x0 + cw]
            if flip:
                crop = crop[:, ::-1]
            pil = Image.fromarray(np.ascontiguousarray(crop)).resize((wb, hb), Image.BICUBIC)
            arr = np.clip(np.asarray(pil).astype(np.float32) * (tint * gain).astype(np.float32), 0, 255)
            self.source = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        self.offset = ((wb - w) / 2.0, (hb - h) / 2.0)
        self.motion = Motion.random(
            rng, frames, size, (w / 2.0, h / 2.0), shift=0.05, angle=2.0, scale=0.08, flow=0.006, zoom_only=True
        )

    def frame(self, t: int, size: Tuple[int, int]) -> torch.Tensor:
        coords = self.motion.coarse(t, size) + torch.tensor(self.offset, dtype=torch.float32)
        return sample_layer(self.source, dense(coords, tuple(self.source.shape[-2:]), size), "border")


class Subtitle:
    """Subtitle-like text (one or two successive lines) drawn over a person."""

    def __init__(self, rng: np.random.Generator, frames: int, size: Tuple[int, int], cx: float, flat: bool):
        from PIL import Image, ImageDraw

        h, w = size
        n_lines = 2 if rng.uniform() < 0.5 and frames >= 3 else 1
        self.switch = int(rng.integers(frames // 3, 2 * frames // 3 + 1)) if n_lines == 2 else frames
        self.texts = [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6)))) for _ in range(n_lines)]
        font = _font(max(8, int(h / rng.uniform(11, 16))))
        stroke = max(1, int(round(h / 240)))
        y = h * rng.uniform(0.72, 0.88)
        self.fill = np.array([255.0, 255.0, 255.0]) if rng.uniform() < 0.7 else np.array([250.0, 225.0, 40.0])
        self.edge = np.array([0.0, 0.0, 0.0])
        if flat:
            self.fill, self.edge = np.array(_FLAT_TEXT), np.array(_FLAT_TEXT)
        self.maps = []
        for text in self.texts:
            img = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(img)
            draw.fontmode = "1"  # no antialiasing: every pixel is text or not
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
            tx = min(max(cx - (x1 - x0) / 2.0, 0.0), max(w - (x1 - x0), 0.0)) - x0
            ty = y - (y1 - y0) / 2.0 - y0
            draw.text((tx, ty), text, fill=255, font=font, stroke_width=stroke, stroke_fill=128)
            lab = np.asarray(img)
            self.maps.append((torch.from_numpy(lab == 255), torch.from_numpy(lab == 128)))

    def at(self, t: int):
        return self.maps[0 if t < self.switch else 1]


@dataclass
class ClipPlan:
    """What one clip holds (also written to synth.json)."""

    name: str
    background: str
    people: List[Dict[str, object]] = field(default_factory=list)
    text: Optional[List[str]] = None


class ClipRenderer:
    """Renders clip ``index`` of a dataset with seed ``seed``.

    Args:
        seed, index: the clip's random stream is ``default_rng([seed, index])``.
        frames: T; size: (H, W).
        flat: debug colours (background blue, people red, text green), to check masks.

    ``renderer.frame(t)`` -> (RGB uint8 ndarray [H, W, 3], mask bool ndarray [H, W]).
    """

    def __init__(self, seed: int, index: int, frames: int, size: Tuple[int, int], flat: bool = False):
        rng = np.random.default_rng([int(seed), int(index)])
        h, w = size
        self.size = size
        self.frames = frames
        bg_name = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
        self.background = Background(rng, bg_name, frames, size, flat)
        n_people = 2 if rng.uniform() < P_TWO_PEOPLE else 1
        centres = [w * rng.uniform(0.35, 0.65)] if n_people == 1 else [w * rng.uniform(0.2, 0.4), w * rng.uniform(0.6, 0.8)]
        oof = int(rng.integers(0, n_people)) if rng.uniform() < P_OUT_OF_FRAME else -1
        self.people = []
        for j, cx in enumerate(centres):
            kind = "figure" if rng.uniform() < P_FIGURE else ("astronaut" if rng.uniform() < 0.7 else "camera")
            self.people.append(Person(rng, kind, frames, size, cx, flat, out_of_frame=(j == oof)))
        if n_people == 2 and rng.integers(0, 2):
            self.people.reverse()  # which one is in front
        self.subtitle = None
        if rng.uniform() < P_TEXT:
            self.subtitle = Subtitle(rng, frames, size, self.people[-1].center_x, flat)
        self.plan = ClipPlan(
            name=f"clip{index:04d}",
            background="flat" if flat else bg_name,
            people=[{"kind": p.kind, "out_of_frame": p.out_of_frame} for p in self.people],
            text=None if self.subtitle is None else list(self.subtitle.texts),
        )

    def frame(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        if not 0 <= t < self.frames:
            raise IndexError(f"frame {t} out of range 0..{self.frames - 1}")
        img = self.background.frame(t, self.size)
        mask = torch.zeros(self.size, dtype=torch.bool)
        for person in self.people:  # back to front
            rgb, on = person.layer(t, self.size)
            img = torch.where(on[None], rgb, img)
            mask |= on
        if self.subtitle is not None:
            fill, edge = self.subtitle.at(t)
            img = torch.where(edge[None], torch.tensor(self.subtitle.edge, dtype=img.dtype).view(3, 1, 1), img)
            img = torch.where(fill[None], torch.tensor(self.subtitle.fill, dtype=img.dtype).view(3, 1, 1), img)
            mask &= ~(fill | edge)
        out = img.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        return out, mask.numpy()

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for t in range(self.frames):
            yield self.frame(t)


# --------------------------------------------------------------------------- writing


def split_of(index: int, clips: int, val_fraction: float) -> str:
    """The last ``round(clips * val_fraction)`` clips (at least one when clips >= 2 and
    val_fraction > 0) are "val", the others "train"."""
    n_val = int(round(clips * val_fraction))
    if val_fraction > 0 and clips >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, clips - 1) if clips >= 2 else 0
    return "val" if index >= clips - n_val else "train"


def _write_clip(job) -> Tuple[int, dict]:
    """Renders and writes one clip (worker entry point). Returns (index, plan dict)."""
    out, seed, index, frames, size, quality = job
    from PIL import Image

    torch.set_num_threads(1)
    r = ClipRenderer(seed, index, frames, size)
    name = r.plan.name
    jdir = Path(out) / "JPEGImages" / "480p" / name
    adir = Path(out) / "Annotations" / "480p" / name
    jdir.mkdir(parents=True, exist_ok=True)
    adir.mkdir(parents=True, exist_ok=True)
    for t, (img, mask) in enumerate(r):
        Image.fromarray(img).save(jdir / f"{t:05d}.jpg", quality=quality)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(adir / f"{t:05d}.png")
    return index, r.plan.__dict__


def synthesize(
    out: os.PathLike,
    clips: int = 20,
    frames: int = 30,
    size: Tuple[int, int] = (480, 854),
    seed: int = 0,
    val_fraction: float = 0.2,
    quality: int = 90,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Writes a synthetic dataset (see the module docstring); returns the output folder.

    Deterministic: the same arguments give the same bytes, whatever ``workers``.
    """
    from tqdm import tqdm

    out = Path(out)
    if clips < 1 or frames < 1:
        raise ValueError(f"need at least one clip and one frame, got clips={clips}, frames={frames}")
    h, w = size
    if not (16 <= h <= MAX_SIDE and 16 <= w <= MAX_SIDE):
        raise ValueError(f"size must be HxW with both in 16..{MAX_SIDE}, got {h}x{w}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction must be in [0, 1), got {val_fraction}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": GENERATOR,
        "seed": int(seed),
        "clips": clips,
        "frames": frames,
        "size": [h, w],
        "val_fraction": val_fraction,
        "jpeg_quality": quality,
    }
    # written first, so that an interrupted run is known (and removable) as synth output
    _write_manifest(out, {**meta, "in_progress": True})
    jobs = [(str(out), int(seed), i, int(frames), (int(h), int(w)), int(quality)) for i in range(clips)]
    plans: Dict[int, dict] = {}
    bar = tqdm(total=clips, desc="synth", unit="clip", disable=not progress)
    try:
        if workers > 1 and clips > 1:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(min(workers, clips)) as pool:
                for index, plan in pool.imap_unordered(_write_clip, jobs):
                    plans[index] = plan
                    bar.update(1)
        else:
            threads = torch.get_num_threads()
            try:
                for job in jobs:
                    index, plan = _write_clip(job)
                    plans[index] = plan
                    bar.update(1)
            finally:
                torch.set_num_threads(threads)
    finally:
        bar.close()
    splits: Dict[str, List[str]] = {"train": [], "val": []}
    for i in range(clips):
        splits[split_of(i, clips, val_fraction)].append(plans[i]["name"])
        plans[i]["split"] = split_of(i, clips, val_fraction)
    (out / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2016").mkdir(parents=True, exist_ok=True)

    def pairs(names: Sequence[str]) -> str:
        return "".join(
            f"/JPEGImages/480p/{n}/{t:05d}.jpg /Annotations/480p/{n}/{t:05d}.png\n" for n in names for t in range(frames)
        )

    for split, names in splits.items():
        (out / "ImageSets" / "480p" / f"{split}.txt").write_text(pairs(names))
        (out / "ImageSets" / "2016" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    (out / "ImageSets" / "480p" / "trainval.txt").write_text(pairs(splits["train"] + splits["val"]))
    _write_manifest(out, {**meta, "sequences": [plans[i] for i in range(clips)]})
    return out


GENERATOR = "pdnet synth"
MANIFEST = "synth.json"
_LISTS = ("ImageSets/480p/train.txt", "ImageSets/480p/val.txt", "ImageSets/480p/trainval.txt",
          "ImageSets/2016/train.txt", "ImageSets/2016/val.txt")
_FOLDERS = ("JPEGImages/480p", "JPEGImages", "Annotations/480p", "Annotations", "ImageSets/480p",
            "ImageSets/2016", "ImageSets")


def _write_manifest(out: Path, meta: dict) -> None:
    (out / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


class NotSynthOutput(ValueError):
    """A folder that ``remove_previous`` will not touch: not (provably) synth's output."""


def remove_previous(out: os.PathLike) -> int:
    """Deletes the files a previous ``pdnet synth`` run wrote in ``out`` (finished or
    interrupted), as its manifest ``synth.json`` describes them, and the folders that
    leaves empty; any other file stays. Returns the number of files removed.

    Only files synth writes are removed: ``JPEGImages/480p/clipNNNN/NNNNN.jpg`` and
    ``Annotations/480p/clipNNNN/NNNNN.png`` with clip and frame numbers below the
    manifest's ``clips`` and ``frames``, the five ImageSets lists and the manifest.

    Raises:
        NotSynthOutput: no manifest, one that is not synth's, or a symbolic link where
            synth writes folders (nothing is deleted then).
    """
    import re

    out = Path(out)
    manifest = out / MANIFEST
    if not manifest.is_file() or manifest.is_symlink():
        raise NotSynthOutput(f"{out}: not a previous pdnet synth output (no {MANIFEST})")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotSynthOutput(f"{manifest}: unreadable manifest ({exc})") from None
    ok = isinstance(meta, dict) and meta.get("generator") == GENERATOR
    clips, frames = (meta.get("clips"), meta.get("frames")) if ok else (None, None)
    if not (ok and all(type(v) is int and v >= 1 for v in (clips, frames))):
        raise NotSynthOutput(f"{manifest}: not a pdnet synth manifest")
    for folder in _FOLDERS:
        if (out / folder).is_symlink():
            raise NotSynthOutput(f"{out / folder}: a symbolic link, not a folder synth wrote")
    clip_re, files = re.compile(r"clip(\d{4,})"), []
    for kind, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        base = out / kind / "480p"
        for clip in sorted(base.iterdir()) if base.is_dir() else []:
            m = clip_re.fullmatch(clip.name)
            if not (m and int(m.group(1)) < clips and clip.is_dir() and not clip.is_symlink()):
                continue
            for f in clip.iterdir():
                stem = f.name[: -len(ext)] if f.name.endswith(ext) else ""
                if stem.isdigit() and len(stem) >= 5 and int(stem) < frames and not f.is_dir():
                    files.append(f)
    files += [out / n for n in _LISTS if (out / n).is_file()]
    for f in files:
        f.unlink()
    for clip in {f.parent for f in files if f.parent.name.startswith("clip")}:
        _rmdir_if_empty(clip)
    for folder in _FOLDERS:
        _rmdir_if_empty(out / folder)
    manifest.unlink()
    return len(files) + 1


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or holds files synth did not write
