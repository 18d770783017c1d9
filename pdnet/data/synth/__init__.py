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

The package: :mod:`.motion` (smooth trajectories, a layer's fake motion),
:mod:`.figure` (the articulated figure), :mod:`.layers` (background, people, subtitles
and :class:`ClipRenderer`, which composites them), :mod:`.writer` (:func:`synthesize`,
the manifest, :func:`remove_previous`) and :mod:`.cli` (the command line). Names import
on first use, so ``pdnet synth --help`` does not import torch.
"""
from ..._lazy import lazy_attributes as _lazy_attributes

#: public name -> the submodule that defines it
_EXPORTS = {
    **dict.fromkeys(("MAX_SIDE", "add_parser", "parse_size", "run"), "cli"),
    **dict.fromkeys(("FLAT_PERSON", "Figure"), "figure"),
    **dict.fromkeys(
        ("BACKGROUNDS", "PEOPLE", "Background", "ClipPlan", "ClipRenderer", "Person", "Subtitle", "person_source"),
        "layers",
    ),
    **dict.fromkeys(("Motion", "dense", "sample_layer", "smooth_track"), "motion"),
    **dict.fromkeys(("GENERATOR", "MANIFEST", "NotSynthOutput", "remove_previous", "split_of", "synthesize"), "writer"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)
