"""The first stage of a crop cascade: a trained run's fold models find the region each image is
cropped to (``common.data.crops``). The SIIM 3rd place's lung crop is the lung package's run here:

    stage = load_stage(models_dir("lung"), "lungs_256", folds=(0,), device=cpu)
    boxes = predict_boxes(stage, ((id, image) for ...), required=(0, 1), margin=0.1)

Images of any size go in (greyscale or RGB uint8; RGB made grey for a one-channel stage); each is resized to the stage's training size,
normalised as in training, predicted by every fold model (their mean), and the box is found at
that size, then ``scaled`` back to the image's own size. A required channel under
``min_area`` (a share of the image) gives the whole image, its reason in ``Box.fallback``.

An experiment turns the cascade on with ``data.crop_stage`` (``CropSpec``). Its prepared data is
then two folders: the full frame, ``<prepared>/<frame>/`` (images, masks, tables, as without a
crop), and the crops, ``<prepared>/<frame>/crops<size>_<key>/`` (``crop_dir``), written by
``prepare_crops``: ``boxes.csv`` (each image's box in frame pixels, predicted once per image
and kept while the image and the stage are the same), ``images/`` and ``masks/`` at the
model's ``data.size``, and the frame's tables with each row's box. The model trains on the
crops; its maps go back into the frame (``paste``) before anything is scored or encoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common.data.crops import (
    BOXES,
    Box,
    CropSpec,
    crop_dir,
    crop_image,
    crop_mask,
    crop_spec,
    find_box,
    frame_root,
    paste,
    read_box_keys,
    read_boxes,
    stage_run,
    write_boxes,
)
from common.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_preprocess,
    normalise,
    preprocess,
)
from common.infer.inference import predict_tensor
from common.infer.predict import FoldModel, final_path, load_fold_model
from common.io.cache import Entry, Table, refresh, source_key
from common.io.images import read_mask, read_png, resize_image, write_mask, write_png


@dataclass(frozen=True)
class Stage:
    models: tuple[FoldModel, ...]
    device: torch.device

    @property
    def size(self) -> int:
        return self.models[0].size


def load_stage(output: str | Path, experiment: str, folds: Sequence[int], device) -> Stage:
    """The fold models of run ``output/experiment`` (``fold<k>/final.pt``), one size."""
    if not folds:
        raise ValueError(f"crop stage {experiment}: no folds given")
    models = []
    for fold in folds:
        path = final_path(output, experiment, fold)
        if not path.is_file():
            raise ValueError(f"crop stage: {path} not found: train {experiment} fold {fold} first")
        models.append(load_fold_model(output, experiment, fold, 1.0, device, classes=None))
    if len({m.size for m in models}) != 1:
        raise ValueError(f"crop stage {experiment}: folds trained at different sizes")
    return Stage(tuple(models), device)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def stage_masks(stage: Stage, images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, C, size, size) float32 probabilities of the stage's models (their mean); the input
    batch is made once for the models that share input channels and preprocessing."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    inputs: dict[tuple, torch.Tensor] = {}
    total = None
    for m in stage.models:
        c, spec = m.config.data.in_channels, check_preprocess(m.config.data.get("preprocess"))
        key = (c, json.dumps(spec, sort_keys=True))
        if key not in inputs:
            inputs[key] = torch.from_numpy(np.stack([
                normalise(preprocess(resize_image(_grey(image) if c == 1 else image, stage.size), spec),
                          mean[:c, None, None], std[:c, None, None])
                for image in images
            ]))  # fmt: skip
        probs = predict_tensor(m.model, inputs[key], device=stage.device)["mask"]
        total = probs if total is None else total + probs
    return total / len(stage.models)


def predict_boxes(
    stage: Stage,
    items: Iterable[tuple[str, np.ndarray]],
    *,
    required: Sequence[int] = (),
    margin: float = 0.1,
    threshold: float = 0.5,
    min_area: float = 0.01,
    square: bool = True,
    largest: bool = True,
    batch_size: int = 8,
) -> Iterator[tuple[str, Box]]:
    """(id, box in the image's own pixels) for each (id, image), in order."""
    items = iter(items)
    min_pixels = max(1, round(min_area * stage.size * stage.size))
    while batch := list(islice(items, batch_size)):
        masks = stage_masks(stage, [image for _, image in batch])
        for (image_id, image), mask in zip(batch, masks, strict=True):
            box = find_box(mask, threshold=threshold, required=required, min_area=min_pixels,
                           margin=margin, square=square, largest=largest)  # fmt: skip
            yield image_id, box.scaled(image.shape[:2])


CROP_VERSION = 1  # bump when prepare_crops' output changes, to redo every crop

BOX_FIELDS = ("box_y0", "box_y1", "box_x0", "box_x1", "fallback")  # added to each table row


def _cut(entry: Entry, out: Path, size: int) -> dict:
    """One image's crop (and its masks', the ``masks/...`` among its files) at ``size``; its
    table row."""
    source, row, box = entry.source
    image = read_png(source / "images" / f"{entry.id}.png", channels=0)
    write_png(out / "images" / f"{entry.id}.png", crop_image(image, box, size))
    for name in entry.files[1:]:
        write_mask(out / name, crop_mask(read_mask(source / name), box, size))
    return row | dict(zip(BOX_FIELDS, (box.y0, box.y1, box.x0, box.x1, box.fallback), strict=True))


def _update_boxes(
    spec: CropSpec,
    folds,
    run: Path,
    source: Path,
    out: Path,
    keys: dict[str, str],
    device,
    batch_size,
) -> tuple[dict[str, Box], int]:
    """Every id's box in frame pixels: kept from ``boxes.csv`` where its key is the same,
    predicted for the rest; written back (atomically) when any was predicted. Returns the
    boxes and how many were predicted."""
    path = out / BOXES
    previous, old_keys = {}, {}
    if path.is_file():
        try:
            previous, old_keys = read_boxes(path), read_box_keys(path)
        except ValueError:  # unreadable or from another version: predict again
            previous, old_keys = {}, {}
    boxes = {i: previous[i] for i, key in keys.items() if i in previous and old_keys.get(i) == key}
    todo = [i for i in keys if i not in boxes]
    if todo:
        if device is None:
            from common.train.runner import resolve_device  # the runner imports the models

            device = resolve_device("auto")
        stage = load_stage(run.parent, run.name, folds, device)
        images = ((i, read_png(source / "images" / f"{i}.png", channels=0)) for i in todo)
        found = predict_boxes(stage, images, required=spec.required, margin=spec.margin,
                              threshold=spec.threshold, min_area=spec.min_area,
                              square=spec.square, largest=spec.largest,
                              batch_size=batch_size)  # fmt: skip
        for image_id, box in tqdm(found, total=len(todo), desc="crop stage", disable=None):
            boxes[image_id] = box
        boxes = {i: boxes[i] for i in keys}
        write_boxes(path, boxes, keys)
    return boxes, len(todo)


def prepare_crops(
    data: Mapping,
    tables: Sequence[str],
    *,
    prepared: str | os.PathLike | None = None,
    stages: str | os.PathLike | None = None,
    device=None,
    fold: int | None = None,
    channels: Sequence[str] = (),
    n_jobs: int = 2,
    batch_size: int = 8,
    log=print,
) -> dict[str, int]:
    """Bring ``crop_dir(data)`` up to date with the frame's ``tables`` (CSV names whose first
    column is the id, with the ``key`` column ``common.io.cache`` writes): boxes for the images
    that are new or changed (the stage's fold models, batched), then the crops of the images
    whose box or frame image changed, each table's rows with their box. An image's masks are
    cropped too: ``masks/<id>.png``, or ``masks/<channel>/<id>.png`` for each of ``channels``
    (multi-label), where the frame has them. ``fold``: the training fold, for a stage with
    ``same_fold``. Returns counts (``images``, ``predicted``, ``fallbacks``, ``cut``,
    ``kept``)."""
    spec = crop_spec(data)
    if spec is None:
        raise ValueError("prepare_crops: the experiment has no data.crop_stage.run")
    source, out = frame_root(data, prepared), crop_dir(data, prepared, fold)
    size = int(data["size"])
    run = stage_run(spec, stages)
    folds = spec.stage_folds(fold)
    weights = [run / f"fold{k}" / "final.pt" for k in folds]
    missing = [str(w) for w in weights if not w.is_file()]
    if missing:
        raise ValueError(f"crop stage: {missing[0]} not found: train {run.name} first")
    stage_key = source_key(CROP_VERSION, weights, spec.key(fold))
    frames = {}
    for name in tables:
        path = source / name
        if not path.is_file():
            raise ValueError(f"{path} not found: prepare the full frame first")
        frames[name] = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "key" not in frames[name].columns:
            raise ValueError(f"{path}: no key column (not a prepared table)")
    keys = {}
    for frame in frames.values():
        for image_id, key in zip(frame.iloc[:, 0], frame["key"], strict=True):
            keys[image_id] = source_key(CROP_VERSION, (), stage_key, key)
    boxes, predicted = _update_boxes(spec, folds, run, source, out, keys, device, batch_size)
    entries, specs = [], []
    for name, frame in frames.items():
        columns = [c for c in frame.columns if c != "key"]
        specs.append(Table(name, (*columns, *BOX_FIELDS)))
        for row in frame[columns].to_dict("records"):
            image_id = row[columns[0]]
            box = boxes[image_id]
            masks = [f"masks/{c}/{image_id}.png" for c in channels] or [f"masks/{image_id}.png"]
            masks = [mask for mask in masks if (source / mask).is_file()]
            files = (f"images/{image_id}.png", *masks)
            key = source_key(CROP_VERSION, (), keys[image_id], size, masks, _box_fields(box))
            entries.append(Entry(image_id, name, key, files, (source, row, box)))
    result = refresh(out, specs, entries, partial(_cut, size=size), n_jobs=n_jobs,
                     desc=f"crops {size}px")  # fmt: skip
    fallbacks = sum(1 for box in boxes.values() if box.fallback)
    kept = float(np.mean([b.kept() for b in boxes.values()])) if boxes else 1.0
    log(
        f"crops {out}: {len(boxes)} images, {predicted} boxes predicted, {result.done} cut, "
        f"{fallbacks} fallback(s) to the whole image, mean share of pixels kept {kept:.2f}"
    )
    return {"images": len(boxes), "predicted": predicted, "fallbacks": fallbacks,
            "cut": result.done, "kept": kept}  # fmt: skip


def _box_fields(box: Box) -> tuple:
    return (box.y0, box.y1, box.x0, box.x1, *box.shape, box.fallback)


def paste_batches(batches, ids: Sequence[str], boxes: Mapping[str, Box], side: int):
    """``predict_batches`` of crops with their maps pasted back into the ``side`` x ``side``
    frame (zero outside each image's box): the same (batch, probabilities) stream, at the
    frame's size, for ``common.infer.inference.write_maps`` and the threshold search."""
    names = iter(ids)
    for batch, probs in batches:
        maps = [paste(m, boxes[next(names)].scaled((side, side))) for m in probs["mask"]]
        yield batch, probs | {"mask": np.stack(maps)}
