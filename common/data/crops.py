"""Crop-then-segment cascades: a first model finds a region, a second works on a crop of it at a
higher effective resolution, and its prediction goes back into the full frame.

    masks of the first model --find_box--> Box (margin, square, the whole image as fallback)
    image --crop_image / crop_mask(box, size)--> size x size crop --second model--> crop map
    crop map --paste(box, shape)--> full-frame map, zero outside the box

A ``Box`` is half-open pixel bounds ``[y0, y1) x [x0, x1)`` of an image of ``shape``; ``scaled``
moves it to the same image at another size (the first model's 256 px masks -> the 1024 px
DICOM). ``fallback`` says why a box is the whole image (a required structure missing): the
cascade then costs nothing but resolution, and callers count the fallbacks. Boxes are kept per
image in a CSV (``write_boxes`` / ``read_boxes``, checked row by row). Used by the SIIM lung crop
(both lungs, 3rd place) and by refinement stages around thin structures (the clavicles).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common.io.atomic import atomic_path
from common.io.images import resize_image, resize_mask
from common.post.postprocess import largest_component

BOX_COLUMNS = ("id", "y0", "y1", "x0", "x1", "height", "width", "fallback")


@dataclass(frozen=True)
class Box:
    y0: int
    y1: int
    x0: int
    x1: int
    shape: tuple[int, int]  # (height, width) of the image the bounds refer to
    fallback: str = ""  # why this is the whole image; "" for a found box

    def __post_init__(self):
        h, w = self.shape
        if not (0 <= self.y0 < self.y1 <= h and 0 <= self.x0 < self.x1 <= w):
            raise ValueError(
                f"box y {self.y0}:{self.y1}, x {self.x0}:{self.x1} is not inside {h}x{w}"
            )

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def kept(self) -> float:
        """The share of the image's pixels inside the box."""
        return self.height * self.width / (self.shape[0] * self.shape[1])

    def scaled(self, shape: tuple[int, int]) -> Box:
        """The same region of the image resized to ``shape`` (bounds rounded outwards)."""
        fy, fx = shape[0] / self.shape[0], shape[1] / self.shape[1]
        return replace(self, y0=math.floor(self.y0 * fy + 1e-9), y1=min(shape[0], math.ceil(self.y1 * fy - 1e-9)),
                       x0=math.floor(self.x0 * fx + 1e-9), x1=min(shape[1], math.ceil(self.x1 * fx - 1e-9)),
                       shape=tuple(shape))  # fmt: skip


def whole(shape: tuple[int, int], why: str = "") -> Box:
    return Box(0, shape[0], 0, shape[1], tuple(shape), why)


def _grow(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    """``[low, high)`` widened about its centre to ``size`` (at most ``limit``), shifted inside."""
    size = min(size, limit)
    centre = (low + high) / 2
    low = round(centre - size / 2)
    low = min(max(low, 0), limit - size)
    return low, low + size


def find_box(
    masks: np.ndarray,
    *,
    threshold: float = 0.5,
    required: Sequence[int] = (),
    min_area: int = 1,
    margin: float = 0.1,
    square: bool = True,
    largest: bool = True,
) -> Box:
    """The box around the ``required`` channels of ``masks`` ((C, H, W) or (H, W);
    probabilities or 0/1; every channel when none is required) above ``threshold``, widened by
    ``margin`` of its side on each side and, with ``square``, to
    a square (as far as the image allows). With ``largest``, only each channel's largest
    connected component counts (a stray blob at the image's edge would widen the box to the
    whole image). The whole image, with the reason in ``fallback``, when a channel in
    ``required`` has fewer than ``min_area`` pixels or nothing is found."""
    masks = np.asarray(masks)
    masks = masks[None] if masks.ndim == 2 else masks
    shape = masks.shape[1:]
    found = masks > threshold
    if largest:
        found = np.stack([largest_component(channel).astype(bool) for channel in found])
    for channel in required:
        area = int(found[channel].sum())
        if area < min_area:
            return whole(shape, f"channel {channel}: {area} px < {min_area}")
    union = found[list(required)].any(axis=0) if required else found.any(axis=0)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if not len(rows):
        return whole(shape, "nothing found")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height = y1 - y0 + 2 * math.ceil(margin * (y1 - y0))
    width = x1 - x0 + 2 * math.ceil(margin * (x1 - x0))
    if square:
        height = width = max(height, width)
    y0, y1 = _grow(y0, y1, height, shape[0])
    x0, x1 = _grow(x0, x1, width, shape[1])
    return Box(y0, y1, x0, x1, tuple(shape))


def _check(array: np.ndarray, box: Box) -> None:
    if tuple(array.shape[:2]) != box.shape:
        raise ValueError(f"an image of {array.shape[:2]} with a box for {box.shape}")


def crop_image(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box of a (H, W) or (H, W, C) image resized to ``size`` x ``size``."""
    _check(image, box)
    return resize_image(np.ascontiguousarray(image[box.y0 : box.y1, box.x0 : box.x1]), size)


def crop_mask(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The box of a {0, 1} mask resized to ``size`` x ``size`` (areas kept, ``resize_mask``)."""
    _check(mask, box)
    return resize_mask(mask[box.y0 : box.y1, box.x0 : box.x1], size)


def paste(crop: np.ndarray, box: Box, dtype=np.float32) -> np.ndarray:
    """A crop's map ((h, w) or (C, h, w)) back in the full frame of ``box.shape``: resized
    bilinearly to the box, zero outside it."""
    crop = np.asarray(crop)
    channels = crop[None] if crop.ndim == 2 else crop
    out = np.zeros((len(channels), *box.shape), dtype)
    for index, channel in enumerate(channels):
        if channel.shape != (box.height, box.width):
            channel = cv2.resize(channel.astype(np.float32), (box.width, box.height),
                                 interpolation=cv2.INTER_LINEAR)  # fmt: skip
        out[index, box.y0 : box.y1, box.x0 : box.x1] = channel
    return out[0] if crop.ndim == 2 else out


def write_boxes(
    path: str | os.PathLike, boxes: dict[str, Box], keys: dict[str, str] | None = None
) -> None:
    """Boxes by id as a CSV (``BOX_COLUMNS``), atomically; ``keys`` adds a ``key`` column
    (what produced each box, for a cache)."""
    rows = [(i, b.y0, b.y1, b.x0, b.x1, *b.shape, b.fallback) for i, b in boxes.items()]
    frame = pd.DataFrame(rows, columns=BOX_COLUMNS)
    if keys is not None:
        frame["key"] = [keys[i] for i in boxes]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_box_keys(path: str | os.PathLike) -> dict[str, str]:
    """The ``key`` column of a box CSV written with ``keys``, by id; ``ValueError`` without it."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "key" not in frame.columns:
        raise ValueError(f"{path}: no key column")
    return dict(zip(frame["id"], frame["key"], strict=True))


def read_boxes(path: str | os.PathLike) -> dict[str, Box]:
    """Boxes by id from ``write_boxes``' CSV; one ``ValueError`` naming the file and row."""
    frame = pd.read_csv(path, dtype={"id": str, "fallback": str}, keep_default_na=False)
    missing = [c for c in BOX_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    boxes = {}
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        try:
            bounds = [int(getattr(row, k)) for k in ("y0", "y1", "x0", "x1", "height", "width")]
            boxes[row.id] = Box(*bounds[:4], (bounds[4], bounds[5]), row.fallback)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}, line {line} ({row.id}): {error}") from None
    return boxes


BOXES = "boxes.csv"


@dataclass(frozen=True)
class CropSpec:
    """``data.crop_stage`` of an experiment (see ``common/configs/experiment.yaml``)."""

    run: str
    folds: tuple[int, ...]
    required: tuple[int, ...]
    min_area: float
    threshold: float
    margin: float
    square: bool
    largest: bool
    frame: int
    same_fold: bool = False

    def stage_folds(self, fold: int | None) -> tuple[int, ...]:
        """The stage's folds that find the boxes for training fold ``fold``: that same fold
        with ``same_fold`` (a stage trained on the same split: each held-out image's box comes
        from a model that did not see it), else ``folds``."""
        if not self.same_fold:
            return self.folds
        if fold is None:
            raise ValueError("data.crop_stage.same_fold: the crops depend on the training fold")
        return (int(fold),)

    def key(self, fold: int | None = None) -> str:
        """What the crops depend on, apart from the stage's weights: the run by name (a bundle
        moves it), its folds and the box rules."""
        fields = asdict(self) | {"run": Path(self.run).name, "folds": self.stage_folds(fold)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def crop_spec(data: Mapping) -> CropSpec | None:
    """The experiment's crop stage, or None when ``data.crop_stage.run`` is empty (or the
    config predates the key); a wrong value is one ``ValueError`` naming it."""
    section = data.get("crop_stage") or {}
    if not section.get("run"):
        return None
    spec = CropSpec(
        run=str(section["run"]),
        folds=tuple(int(k) for k in section["folds"]),
        required=tuple(int(c) for c in section["required"]),
        min_area=float(section["min_area"]),
        threshold=float(section["threshold"]),
        margin=float(section["margin"]),
        square=bool(section["square"]),
        largest=bool(section["largest"]),
        frame=int(section["frame"]),
        same_fold=bool(section.get("same_fold", False)),
    )
    if spec.frame < 32:
        raise ValueError(f"data.crop_stage.frame: {spec.frame} is too small (at least 32)")
    if not 0 <= spec.margin <= 1:
        raise ValueError(f"data.crop_stage.margin: {spec.margin} is not a share of the box (0-1)")
    if not spec.folds:
        raise ValueError("data.crop_stage.folds: no folds given")
    if data.get("pseudo", {}).get("folder"):
        raise ValueError("data.pseudo with data.crop_stage: a pseudo-labelled set has no crops")
    return spec


def frame_root(data: Mapping, prepared: str | os.PathLike | None = None) -> Path:
    """The full-frame prepared folder: ``<prepared>/<frame>`` with a crop stage, else
    ``<prepared>/<size>``; ``prepared`` replaces ``data.prepared`` (a notebook's folder)."""
    spec = crop_spec(data)
    side = spec.frame if spec else int(data["size"])
    return Path(prepared or data["prepared"]) / str(side)


def crop_dir(
    data: Mapping, prepared: str | os.PathLike | None = None, fold: int | None = None
) -> Path | None:
    """Where ``prepare_crops`` writes the crops at ``data.size`` (for training fold ``fold``
    with ``same_fold``); None without a crop stage."""
    spec = crop_spec(data)
    if spec is None:
        return None
    suffix = f"_fold{spec.stage_folds(fold)[0]}" if spec.same_fold else ""
    return frame_root(data, prepared) / f"crops{int(data['size'])}_{spec.key(fold)}{suffix}"


def prepared_root(
    data: Mapping, prepared: str | os.PathLike | None = None, fold: int | None = None
) -> Path:
    """The folder a model of this experiment (training fold ``fold``) trains on and reads its
    inputs from."""
    return crop_dir(data, prepared, fold) or frame_root(data, prepared)


def stage_run(spec: CropSpec, stages: str | os.PathLike | None = None) -> Path:
    """The stage's run folder: ``spec.run``, or the folder of that name in ``stages`` (a
    bundle's copy)."""
    return Path(stages) / Path(spec.run).name if stages else Path(spec.run)


def read_box_table(folder: str | os.PathLike) -> dict[str, Box]:
    """The boxes ``prepare_crops`` wrote in ``folder``, by id."""
    path = Path(folder) / BOXES
    if not path.is_file():
        raise ValueError(f"{path} not found: prepare the crops first (the competition's prepare)")
    return read_boxes(path)
