"""Data: dataset readers, the release's joint augmentation, and a synthetic video generator.

- :func:`build_dataset` (``kind`` = "davis" | "mvps" | "pphumanseg" | "images" | "auto")
  returns a :class:`VideoPairDataset` / :class:`ImagePairDataset` whose samples are dicts
  ``target``, ``target_mask``, ``reference``, ``reference_mask``, ``sequence``,
  ``frame``, ``size``, ``index`` (see :mod:`pdnet.data.datasets`).
- :func:`make_loader` / :func:`seed_worker`: a DataLoader with deterministic seeding;
  :func:`prepare_batch` moves a batch to the device, finishing ``output="uint8"`` and
  ``output="raw"`` batches there (the fast formats for GPU training on few CPU cores).
- ``scan_*`` readers of each layout (:mod:`pdnet.data.layouts`) and
  :func:`validate_clips`, the main-process file check.
- :class:`PairAugment`: random crop (up to 1/8 a side), flip, resize, normalisation
  (:mod:`pdnet.data.augment`); :func:`collate_pairs` (:mod:`pdnet.data.collate`) makes
  a :class:`PairBatch`, the collated batch whose pixels travel between processes as one
  buffer (:mod:`pdnet.data.transport`).
- :mod:`pdnet.data.synth`: ``pdnet synth``, fake-motion clips in the DAVIS-2016 layout.
- :func:`decode_mask` / :func:`read_mask`: the one mask reader (training and
  ``pdnet evaluate``): 0/255 and soft grey as stored, 0/1 scaled to 0/255, palette and
  colour-coded RGB non-zero = person, decided per file (:mod:`pdnet.data.io`).
- :class:`DataError` (a ``ValueError`` naming the bad file, also when raised in a
  DataLoader worker), :class:`DataWarning`.
"""
from .._lazy import lazy_attributes as _lazy_attributes

#: public name -> submodule defining it; imported on first use (PEP 562), so that
#: ``pdnet.data.errors`` or ``pdnet synth --help`` do not import torch
_EXPORTS = {
    **dict.fromkeys(("PairAugment", "normalize_uint8"), "augment"),
    **dict.fromkeys(("collate_pairs", "prepare_batch"), "collate"),
    "PairBatch": "transport",
    **dict.fromkeys(
        ("ImagePairDataset", "PairDataset", "VideoPairDataset", "build_dataset", "make_loader", "sample_rng",
         "seed_worker"),
        "datasets",
    ),
    **dict.fromkeys(("DataError", "DataWarning"), "errors"),
    **dict.fromkeys(("decode_mask", "probe", "read_image", "read_mask", "read_rgba"), "io"),
    **dict.fromkeys(
        ("LAYOUTS", "Clip", "detect_layout", "scan_davis", "scan_image_folders", "scan_mvps", "scan_pphumanseg",
         "validate_clips"),
        "layouts",
    ),
}


__getattr__, __dir__ = _lazy_attributes(__name__, _EXPORTS)


__all__ = [
    "Clip",
    "DataError",
    "DataWarning",
    "ImagePairDataset",
    "LAYOUTS",
    "PairAugment",
    "PairBatch",
    "PairDataset",
    "VideoPairDataset",
    "build_dataset",
    "collate_pairs",
    "decode_mask",
    "detect_layout",
    "make_loader",
    "normalize_uint8",
    "prepare_batch",
    "probe",
    "read_image",
    "read_mask",
    "read_rgba",
    "sample_rng",
    "scan_davis",
    "scan_image_folders",
    "scan_mvps",
    "scan_pphumanseg",
    "seed_worker",
    "validate_clips",
]
