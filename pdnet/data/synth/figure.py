"""The articulated figure of ``pdnet synth``: an upper body drawn as textured polygons
whose torso, head and arms follow independent trajectories of different speeds."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .motion import smooth_track

#: the colour of every person pixel with ``flat=True`` (debug colours that check the masks)
FLAT_PERSON = (255.0, 0.0, 0.0)


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


def _ellipse(c: np.ndarray, rx: float, ry: float, a: float, n: int = 36) -> list[tuple[float, float]]:
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(th), ry * np.sin(th)], 1)
    ca, sa = math.cos(a), math.sin(a)
    pts = pts @ np.array([[ca, sa], [-sa, ca]]) + c
    return [tuple(p) for p in pts]


def _capsule(p0: np.ndarray, p1: np.ndarray, r: float, n: int = 10) -> list[tuple[float, float]]:
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

    def __init__(
        self, rng: np.random.Generator, frames: int, size: tuple[int, int], cx: float, height: float, flat: bool
    ):
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
            col = np.array(FLAT_PERSON, dtype=np.float32)
            self.tex = {k: np.broadcast_to(col, v.shape) for k, v in self.tex.items()}
        self.texel = max(self.S / 90.0, 0.5)

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
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

