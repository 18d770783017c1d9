"""The layers of a synthetic clip and their compositing: the background photo under
camera motion, the people (articulated figures or real people cut out of photos), the
subtitle text, and :class:`ClipRenderer`, which draws each frame and its exact mask."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np
import torch

from .figure import FLAT_PERSON, Figure
from .motion import Motion, dense, sample_layer

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

# debug colours of ``flat=True`` (people: figure.FLAT_PERSON)
_FLAT_BG = (0.0, 0.0, 255.0)
_FLAT_TEXT = (0.0, 255.0, 0.0)


@cache
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


@cache
def person_source(name: str) -> tuple[np.ndarray, np.ndarray]:
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


class Person:
    """One person layer: its source (figure or cut-out), placement and fake motion."""

    def __init__(self, rng, kind: str, frames: int, size: tuple[int, int], cx: float, flat: bool, out_of_frame: bool):
        h, w = size
        self.kind = kind
        self.out_of_frame = out_of_frame
        if kind == "figure":
            height = h * rng.uniform(0.6, 0.95)
            self.figure: Figure | None = Figure(rng, frames, size, cx, height, flat)
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
            colors = np.broadcast_to(np.array(FLAT_PERSON), rgb.shape) if flat else rgb
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

    def layer(self, t: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
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


class Background:
    """A photo, cropped, flipped and resized to 1.3x the canvas, moved by camera motion."""

    def __init__(self, rng: np.random.Generator, name: str, frames: int, size: tuple[int, int], flat: bool):
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

    def frame(self, t: int, size: tuple[int, int]) -> torch.Tensor:
        coords = self.motion.coarse(t, size) + torch.tensor(self.offset, dtype=torch.float32)
        return sample_layer(self.source, dense(coords, tuple(self.source.shape[-2:]), size), "border")


class Subtitle:
    """Subtitle-like text (one or two successive lines) drawn over a person."""

    def __init__(self, rng: np.random.Generator, frames: int, size: tuple[int, int], cx: float, flat: bool):
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
    people: list[dict[str, object]] = field(default_factory=list)
    text: list[str] | None = None


class ClipRenderer:
    """Renders clip ``index`` of a dataset with seed ``seed``.

    Args:
        seed, index: the clip's random stream is ``default_rng([seed, index])``.
        frames: T; size: (H, W).
        flat: debug colours (background blue, people red, text green), to check masks.

    ``renderer.frame(t)`` -> (RGB uint8 ndarray [H, W, 3], mask bool ndarray [H, W]).
    """

    def __init__(self, seed: int, index: int, frames: int, size: tuple[int, int], flat: bool = False):
        rng = np.random.default_rng([int(seed), int(index)])
        h, w = size
        self.size = size
        self.frames = frames
        bg_name = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
        self.background = Background(rng, bg_name, frames, size, flat)
        n_people = 2 if rng.uniform() < P_TWO_PEOPLE else 1
        if n_people == 1:
            centres = [w * rng.uniform(0.35, 0.65)]
        else:
            centres = [w * rng.uniform(0.2, 0.4), w * rng.uniform(0.6, 0.8)]
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

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
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

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for t in range(self.frames):
            yield self.frame(t)

