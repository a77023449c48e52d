"""Batch-level augmentation for segmentation: CutMix and Cutout, applied by the trainer to each
training batch after the per-image transforms (``data.mix`` in an experiment).

- **CutMix** (Yun et al. 2019): with probability ``cutmix.p`` an image gets a rectangle of
  another image of the batch, and its masks get the same rectangle of that image's masks. The
  rectangle covers ``1 - lam`` of the image, ``lam ~ Beta(alpha, alpha)``, and is taken from the
  *same position* in the other image: the patient's left stays on the image's right, so a
  left/right multi-label task (the lungs) never sees one side pasted onto the other.
- **Cutout** (DeVries & Taylor 2017): with probability ``cutout.p`` an image gets ``holes``
  square holes of ``size`` (a share of the side) filled with 0 (the dataset's mean after
  normalisation). ``mask: keep`` leaves the masks as they were (the model learns to complete a
  structure it cannot see: anatomy), ``mask: erase`` zeroes them in the holes (what is not
  visible is not labelled: lesions).

The empty/non-empty ``label`` is recomputed from the mixed masks. Random draws come from a
generator seeded by the run's seed, the epoch and the rank, so a resumed epoch mixes the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MASK_RULES = ("keep", "erase")


@dataclass(frozen=True)
class BatchMix:
    cutmix_p: float = 0.0
    cutmix_alpha: float = 1.0
    cutout_p: float = 0.0
    cutout_holes: int = 1
    cutout_size: float = 0.2
    cutout_mask: str = "keep"

    def __post_init__(self):
        for name in ("cutmix_p", "cutout_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.mix: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.cutmix_alpha <= 0:
            raise ValueError(f"data.mix.cutmix.alpha must be > 0, got {self.cutmix_alpha}")
        if self.cutout_holes < 1 or not 0 < self.cutout_size < 1:
            raise ValueError("data.mix.cutout: holes >= 1 and 0 < size < 1")
        if self.cutout_mask not in MASK_RULES:
            raise ValueError(
                f"data.mix.cutout.mask: {self.cutout_mask!r} is not one of {MASK_RULES}"
            )

    @property
    def active(self) -> bool:
        return self.cutmix_p > 0 or self.cutout_p > 0


def batch_mix(data: Mapping) -> BatchMix | None:
    """``data.mix`` of an experiment as a ``BatchMix``, or None when both are off (or the config
    predates the key)."""
    section = data.get("mix") or {}
    cutmix, cutout = section.get("cutmix") or {}, section.get("cutout") or {}
    mix = BatchMix(
        cutmix_p=float(cutmix.get("p", 0.0)),
        cutmix_alpha=float(cutmix.get("alpha", 1.0)),
        cutout_p=float(cutout.get("p", 0.0)),
        cutout_holes=int(cutout.get("holes", 1)),
        cutout_size=float(cutout.get("size", 0.2)),
        cutout_mask=str(cutout.get("mask", "keep")),
    )
    return mix if mix.active else None


def mix_generator(seed: int, epoch: int, rank: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank])


def _box(height: int, width: int, area: float, rng) -> tuple[int, int, int, int]:
    """A rectangle of about ``area`` of the image with the image's aspect, centred uniformly
    and clipped to the image: (y0, y1, x0, x1)."""
    side = area**0.5
    h, w = round(height * side), round(width * side)
    cy, cx = rng.random() * height, rng.random() * width
    y0, x0 = max(0, round(cy - h / 2)), max(0, round(cx - w / 2))
    return y0, min(height, y0 + h), x0, min(width, x0 + w)


def apply_mix(batch: dict, mix: BatchMix, rng: np.random.Generator) -> dict:
    """``batch`` (``image`` (N, C, H, W), optional ``mask`` (N, K, H, W) and ``label``) with
    CutMix and Cutout applied; new tensors, the input is not changed."""
    images = batch["image"].clone()
    masks = batch["mask"].clone() if "mask" in batch else None
    n, _, height, width = images.shape
    if mix.cutmix_p > 0 and n > 1:
        partners = rng.permutation(n)
        original_images, original_masks = batch["image"], batch.get("mask")
        for i in range(n):
            j = int(partners[i])
            if j == i or rng.random() >= mix.cutmix_p:
                continue
            lam = rng.beta(mix.cutmix_alpha, mix.cutmix_alpha)
            y0, y1, x0, x1 = _box(height, width, 1 - lam, rng)
            images[i, :, y0:y1, x0:x1] = original_images[j, :, y0:y1, x0:x1]
            if masks is not None:
                masks[i, :, y0:y1, x0:x1] = original_masks[j, :, y0:y1, x0:x1]
    if mix.cutout_p > 0:
        for i in range(n):
            if rng.random() >= mix.cutout_p:
                continue
            for _ in range(mix.cutout_holes):
                y0, y1, x0, x1 = _box(height, width, mix.cutout_size**2, rng)
                images[i, :, y0:y1, x0:x1] = 0
                if masks is not None and mix.cutout_mask == "erase":
                    masks[i, :, y0:y1, x0:x1] = 0
    out = dict(batch) | {"image": images}
    if masks is not None:
        out["mask"] = masks
        if "label" in batch:
            out["label"] = masks.flatten(1).amax(dim=1, keepdim=True).to(batch["label"].dtype)
    return out
