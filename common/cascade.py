"""The first stage of a crop cascade: a trained run's fold models find the region each image is
cropped to (``common.crops``). The SIIM 3rd place's lung crop is the lung package's run here:

    stage = load_stage(models_dir("lung"), "lungs_256", folds=(0,), device=cpu)
    boxes = predict_boxes(stage, ((id, image) for ...), required=(0, 1), margin=0.1)

Images of any size go in (greyscale or RGB uint8; RGB made grey for a one-channel stage); each is resized to the stage's training size,
normalised as in training, predicted by every fold model (their mean), and the box is found at
that size, then ``scaled`` back to the image's own size. A required channel under
``min_area`` (a share of the image) gives the whole image, its reason in ``Box.fallback``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch

from common.crops import Box, find_box
from common.data import IMAGENET_MEAN, IMAGENET_STD, check_preprocess, normalise, preprocess
from common.images import resize_image
from common.inference import predict_tensor
from common.predict import FoldModel, final_path, load_fold_model


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
    batch_size: int = 8,
) -> Iterator[tuple[str, Box]]:
    """(id, box in the image's own pixels) for each (id, image), in order."""
    items = iter(items)
    min_pixels = max(1, round(min_area * stage.size * stage.size))
    while batch := list(islice(items, batch_size)):
        masks = stage_masks(stage, [image for _, image in batch])
        for (image_id, image), mask in zip(batch, masks, strict=True):
            box = find_box(mask, threshold=threshold, required=required, min_area=min_pixels,
                           margin=margin, square=square)  # fmt: skip
            yield image_id, box.scaled(image.shape[:2])
