"""Training data: a dataset over prepared PNGs, albumentations pipelines from JSON, and samplers
whose share of non-empty images follows a schedule.

Tensor conventions: ``image`` is float32 (C, H, W), normalised per channel with ``mean``/``std``
on the 0..1 scale (a grey image is repeated over ``in_channels``; an RGB image needs
``in_channels`` 3); ``mask`` is float32
(C, H, W) in {0, 1}, C = 1 for one mask per image or one channel per class of a multi-label
task; ``label`` is float32 (1,), 1 when the (augmented) mask is non-empty in any channel.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from common.io.images import read_mask, read_png, window_to_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS = {  # name: its parameters and their defaults
    "none": {},
    "clahe": {"clip_limit": 2.0, "tiles": 8},
    "equalize": {},
    "stretch": {"low": 0.5, "high": 99.5},
}


def check_preprocess(spec) -> dict:
    """``data.preprocess`` in its canonical form: a known ``name`` (None or {} = none) with that
    method's parameters only, defaults filled in. Every method's parameters may be present in
    ``spec`` (the config's defaults hold them all); any other key is an error. Two runs that
    preprocess alike therefore compare equal, whatever parameters of other methods their
    configs carried."""
    spec = dict(spec or {})
    name = spec.get("name", "none")
    if name not in PREPROCESS:
        raise ValueError(
            f"data.preprocess.name {name!r} is unknown; valid: {', '.join(PREPROCESS)}"
        )
    known = {"name"}.union(*PREPROCESS.values())
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"data.preprocess: {unknown} unknown; valid: {', '.join(sorted(known))}")
    canonical = {"name": name} | {k: spec.get(k, v) for k, v in PREPROCESS[name].items()}
    if name == "stretch" and not 0 <= float(canonical["low"]) < float(canonical["high"]) <= 100:
        raise ValueError(
            f"data.preprocess stretch: low {float(canonical['low'])} and high "
            f"{float(canonical['high'])} must be percentiles, 0 <= low < high <= 100"
        )
    return canonical


def preprocess(image: np.ndarray, spec) -> np.ndarray:
    """Contrast normalisation of a uint8 grey (H, W) or RGB (H, W, 3) image, the same in
    training, prediction and the Kaggle notebook (every reader of the prepared images calls it
    with the run's ``data.preprocess``): ``clahe`` (``clip_limit``, ``tiles`` x ``tiles`` grid),
    global ``equalize``, or ``stretch``: the ``low`` and ``high`` percentiles (default 0.5 and
    99.5) mapped linearly to 0 and 255, which leaves a well exposed image almost as it is and
    rescues a washed-out one. An RGB image is processed on its LAB lightness only."""
    spec = check_preprocess(spec)
    if spec["name"] == "none":
        return image
    if spec["name"] == "clahe":
        clahe = cv2.createCLAHE(clipLimit=float(spec["clip_limit"]),
                                tileGridSize=(int(spec["tiles"]),) * 2)  # fmt: skip
        equalise = clahe.apply
    elif spec["name"] == "stretch":
        equalise = functools.partial(
            percentile_stretch, low=float(spec["low"]), high=float(spec["high"])
        )
    else:
        equalise = cv2.equalizeHist
    if image.ndim == 2:
        return equalise(image)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = equalise(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def percentile_stretch(grey: np.ndarray, low: float, high: float) -> np.ndarray:
    """A uint8 image's ``low`` and ``high`` percentiles (of its pixels) mapped linearly to 0 and
    255, clipped outside; an image with a single grey level is returned as it is."""
    cdf = np.cumsum(np.bincount(grey.ravel(), minlength=256)) / grey.size
    lo = int(np.searchsorted(cdf, low / 100, side="right"))  # the first level above low %
    hi = min(int(np.searchsorted(cdf, high / 100 - 1e-9)), 255)  # the first level reaching high %
    if hi <= lo:
        return grey
    return cv2.LUT(grey, window_to_uint8(np.arange(256, dtype=np.float64), lo, hi))


def load_transforms(path: str | os.PathLike, size: int, crop: int = 0) -> A.Compose:
    """An albumentations 2.x pipeline saved as JSON (``A.save`` format). A transform whose
    ``size`` is ``null`` gets the training size (``size`` x ``size``), so one file serves every
    resolution. ``crop`` > 0 appends a random ``crop`` x ``crop`` crop: training on crops of a
    larger image costs what the crop size costs, and the fully convolutional model then predicts
    whole images at the full resolution."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: transforms file not found") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    _fill_size(data.get("transform", {}), size)
    try:
        pipeline = A.from_dict(data)
    except Exception as error:  # albumentations raises several types for a bad spec
        raise ValueError(f"{path}: not an albumentations pipeline: {error}") from None
    if not isinstance(pipeline, A.Compose):
        raise ValueError(f"{path}: the top-level transform must be a Compose")
    if crop:
        if not 0 < crop <= size:
            raise ValueError(f"crop {crop} must be between 1 and the image size {size}")
        pipeline = A.Compose([*pipeline.transforms, A.RandomCrop(crop, crop)])
    return pipeline


def transform_names(pipeline) -> list[str]:
    """The class names of every transform in a pipeline, nested ones included."""
    names = []
    for transform in getattr(pipeline, "transforms", []):
        names.append(type(transform).__name__)
        names.extend(transform_names(transform))
    return names


def _fill_size(node: dict, size: int) -> None:
    if "size" in node and node["size"] is None:
        node["size"] = [size, size]
    for child in node.get("transforms", []):
        _fill_size(child, size)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed numpy, random and the dataset's albumentations
    pipeline from the worker's torch seed, which differs per worker and per epoch. Without it,
    forked workers replay the parent's augmentation stream (albumentations 2.x keeps its own
    generator, copied into every worker)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (third-party code may draw from the legacy global RNG)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None:
        transform.set_random_seed(seed)


def reseed_main_process(loader) -> None:
    """With ``num_workers=0`` the pipeline runs in this process and ``seed_worker`` never runs:
    reseed it at each epoch from the loader's generator instead, so that a run (and a resumed
    run, which restores that generator) draws the same augmentations every time."""
    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    if getattr(loader, "num_workers", 1) != 0 or transform is None:
        return
    generator = getattr(loader, "generator", None)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    transform.set_random_seed(seed)


class SegmentationDataset(Dataset):
    """Images (and masks, when ``mask_dir`` is given) named ``<id>.png`` in prepared folders.

    With ``mask_channels`` (multi-label tasks) the masks are ``mask_dir/<channel>/<id>.png``,
    stacked in that order into (C, H, W); the augmentation sees them as one (H, W, C) mask, so
    every channel gets the same geometric transform.
    """

    def __init__(
        self,
        ids: Sequence[str],
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike | None = None,
        *,
        size: int,
        transform: Callable | None = None,
        in_channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_channels: Sequence[str] | None = None,
        preprocess: dict | None = None,
    ):
        self.ids = list(ids)
        self.preprocess = check_preprocess(preprocess)
        self.mask_channels = list(mask_channels) if mask_channels else None
        self.image_dir = Path(image_dir)
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.size = size
        self.transform = transform
        self.in_channels = in_channels
        self.mean = np.asarray(mean, np.float32)[:in_channels].reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32)[:in_channels].reshape(-1, 1, 1)
        if len(self.mean) != in_channels or len(self.std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values, one per input channel")

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The item's image and mask (None without masks), before preprocessing."""
        image_id = self.ids[index]
        shape = (self.size, self.size)
        image = read_png(self.image_dir / f"{image_id}.png", shape, channels=0)
        return image, self._read_mask(image_id, shape) if self.mask_dir is not None else None

    def __getitem__(self, index: int) -> dict:
        image, mask = self._load(index)
        image = preprocess(image, self.preprocess)
        if self.transform is not None:
            out = self.transform(image=image, **({"mask": mask} if mask is not None else {}))
            image, mask = out["image"], out.get("mask")
        item = {"image": torch.from_numpy(self._normalise(image)), "index": index}
        if mask is not None:
            mask = np.asarray(mask, dtype=np.float32)
            mask = np.ascontiguousarray(mask.transpose(2, 0, 1) if mask.ndim == 3 else mask[None])
            item["mask"] = torch.from_numpy(mask)
            item["label"] = torch.tensor([float(mask.any())])
        return item

    def _read_mask(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """(H, W), or (H, W, C) with ``mask_channels``."""
        if self.mask_channels is None:
            return read_mask(self.mask_dir / f"{image_id}.png", shape)
        channels = [
            read_mask(self.mask_dir / c / f"{image_id}.png", shape) for c in self.mask_channels
        ]
        return np.stack(channels, axis=-1)

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        return normalise(image, self.mean, self.std, where=str(self.image_dir))


def normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray, where: str = "") -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) image as the model's float32 (C, H, W) input: / 255, a grey
    image repeated over the ``len(mean)`` channels, then (x - mean) / std per channel (``mean``
    and ``std`` shaped (C, 1, 1))."""
    channels = len(mean)
    if image.ndim == 3 and image.shape[2] == 1:  # a transform may hand back (H, W, 1)
        image = image[..., 0]
    scaled = image.astype(np.float32) / 255.0
    if scaled.ndim == 3:
        if scaled.shape[2] != channels:
            raise ValueError(
                f"{where}: images have {scaled.shape[2]} channels, data.in_channels is {channels}"
            )
        stacked = scaled.transpose(2, 0, 1)
    else:
        stacked = np.broadcast_to(scaled, (channels, *scaled.shape))
    return np.ascontiguousarray((stacked - mean) / std, dtype=np.float32)


def linear_rate(start: float, end: float, epochs: int) -> Callable[[int], float]:
    """Non-empty rate going linearly from ``start`` (epoch 0) to ``end`` (last epoch)."""
    return lambda epoch: start + (end - start) * min(epoch, epochs - 1) / max(epochs - 1, 1)


class NonEmptyRateSampler(Sampler[int]):
    """Each epoch draws ``epoch_size`` indices of which a share ``rate(epoch)`` are non-empty
    images (drawn without replacement while they last), shuffled; ``rate=None`` is a plain
    shuffle of every index; ``weights`` (one per item, not all zero) draws with replacement in
    proportion to them. Deterministic from ``seed`` and the epoch (call ``set_epoch``).

    With ``num_replicas`` > 1 (DDP) each rank takes an interleaved, disjoint share of the same
    epoch order, padded to equal length, so the global rate follows the schedule.
    """

    def __init__(
        self,
        has_mask: Sequence[bool],
        rate: Callable[[int], float] | None = None,
        *,
        weights: Sequence[float] | None = None,
        epoch_size: int = 0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.has_mask = np.asarray(has_mask, dtype=bool)
        self.positives = np.flatnonzero(self.has_mask)
        self.negatives = np.flatnonzero(~self.has_mask)
        self.rate = rate
        self.epoch_size = epoch_size or len(self.has_mask)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.weights = None
        if rate is not None and (len(self.positives) == 0 or len(self.negatives) == 0):
            raise ValueError("a non-empty sample rate needs both empty and non-empty images")
        if weights is not None:
            if rate is not None:
                raise ValueError("give a non-empty rate or sampling weights, not both")
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != self.has_mask.shape or (w < 0).any() or not np.isfinite(w).all():
                raise ValueError("sampling weights must be one finite value >= 0 per item")
            if w.sum() <= 0:
                raise ValueError("sampling weights are all zero")
            self.weights = w / w.sum()

    @property
    def n_items(self) -> int:
        return len(self.has_mask)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> np.ndarray:
        """The whole epoch's order (every rank), before the split across replicas."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            return rng.choice(len(self.weights), size=self.epoch_size, p=self.weights)
        if self.rate is None:
            return _draw(rng, np.arange(len(self.has_mask)), self.epoch_size)
        rate = float(np.clip(self.rate(self.epoch), 0.0, 1.0))
        n_pos = round(rate * self.epoch_size)
        picked = np.concatenate(
            [_draw(rng, self.positives, n_pos), _draw(rng, self.negatives, self.epoch_size - n_pos)]
        )
        return rng.permutation(picked)

    def __iter__(self):
        indices = self.epoch_indices()
        per_rank = -(-len(indices) // self.num_replicas)
        padded = np.resize(indices, per_rank * self.num_replicas)
        return iter(padded[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-self.epoch_size // self.num_replicas)


class WithExtraSampler(NonEmptyRateSampler):
    """``base``'s epoch (a ``NonEmptyRateSampler``'s rate or weights over its first ``n_items``
    items, or any sampler with ``n_items``, ``epoch_size``, ``epoch_indices``, ``set_epoch``,
    ``seed``, ``epoch`` and the replicas) plus extra items
    (indices after them, e.g. pseudo-labelled images) making up ``share`` of the epoch, drawn
    without replacement while they last; shuffled together and split across replicas alike."""

    def __init__(self, base, n_extra: int, share: float):
        if not 0 < share < 1 or n_extra <= 0:
            raise ValueError(
                f"extra items: need 0 < share < 1 and some items, got {share}, {n_extra}"
            )
        # no super().__init__: the draws are base's; __iter__ and __len__ need only these
        self.seed, self.epoch = base.seed, base.epoch
        self.num_replicas, self.rank = base.num_replicas, base.rank
        self.base, self.n_extra, self.share = base, n_extra, share
        self.n_base = base.n_items
        self.extra_size = round(base.epoch_size * share / (1 - share))
        self.epoch_size = base.epoch_size + self.extra_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def epoch_indices(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        extra = self.n_base + _draw(rng, np.arange(self.n_extra), self.extra_size)
        return rng.permutation(np.concatenate([self.base.epoch_indices(), extra]))


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` items of ``pool``: whole shuffled passes, then a partial one without repeats."""
    if n <= 0:
        return pool[:0]
    full, rest = divmod(n, len(pool))
    parts = [rng.permutation(pool) for _ in range(full)] + [rng.permutation(pool)[:rest]]
    return np.concatenate(parts)
