"""Training windows drawn afresh every epoch from the slides (``data.sampling: epoch``), as the
top HuBMAP solutions trained, instead of the tiles cut once by prepare (``static``).

Each epoch (seeded by ``seed`` and the epoch, so a run repeats) draws ``data.epoch_windows``
windows (0: as many as the static tiles of the same slides, so both train the same steps):

- ``data.random_share`` of them anywhere on tissue: a grid tile with tissue (prepare's
  ``tiles/<id>.csv``, kind grid) shifted by up to half a window;
- the rest on objects, drawn with replacement so that every area bin (``data.area_bins``
  quantiles of the objects' areas) gives the same number of windows: small glomeruli are seen
  as often as large ones; each is centred on its object and shifted by up to ``data.jitter`` of
  a window.

Objects are the 8-connected components of the slide's mask, one per glomerulus whatever the
grid (prepare writes ``objects/<id>.csv``: centre and area from the RLE, and the extra
annotations' polygons). A window is read from the slide through ``common.io.slides`` at the
model's size, its mask decoded from the RLE for that window only (``RleWindows``, the string
parsed once per process) with the extra polygons drawn in: exactly what prepare writes for a
static tile at the same place. Each process opens each slide once (a forked worker never uses
its parent's open files).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from common.data.datasets import SegmentationDataset
from common.io.images import resize_mask
from common.io.polygons import Polygon, rasterize, read_geojson
from common.io.rle import RleWindows
from common.io.slides import open_slide
from common.post.slide_objects import objects_in_bands, rle_bands

SAMPLING = ("static", "epoch")
OBJECT_COLUMNS = ["y", "x", "area", "source"]


def object_table(
    encoding: str, shape: tuple[int, int], polygons: Sequence[Polygon] = ()
) -> pd.DataFrame:
    """One row per object: its centre (y, x) and area in full-resolution pixels; ``source`` is
    ``mask`` (a component of the RLE's mask) or ``extra`` (an extra annotation's polygon)."""
    rows = []
    for obj in objects_in_bands(rle_bands(encoding, shape), shape[1], probabilities=False):
        y0, y1, x0, x1 = obj.box
        rows.append(((y0 + y1) // 2, (x0 + x1) // 2, int(obj.area), "mask"))
    for polygon in polygons:
        xs, ys = polygon[0][:, 0], polygon[0][:, 1]
        box = (max(0, math.floor(ys.min())), min(shape[0], math.ceil(ys.max()) + 1),
               max(0, math.floor(xs.min())), min(shape[1], math.ceil(xs.max()) + 1))  # fmt: skip
        if box[1] > box[0] and box[3] > box[2]:
            area = int(rasterize([polygon], shape, box).sum())
            rows.append(((box[0] + box[1]) // 2, (box[2] + box[3]) // 2, area, "extra"))
    return pd.DataFrame(rows, columns=OBJECT_COLUMNS)


@dataclass(frozen=True)
class SlideSource:
    """One training slide: where to read it, its truth and what to draw from."""

    id: str
    path: str
    shape: tuple[int, int]
    encoding: str
    extra: str | None  # a GeoJSON of extra polygons, or None
    objects: pd.DataFrame  # OBJECT_COLUMNS
    tissue: np.ndarray  # (K, 2) int: top-left corners of the grid tiles with tissue


def epoch_windows(slides: Sequence[SlideSource], window: int, *, size: int, jitter: float,
                  random_share: float, area_bins: int, seed: int, epoch: int) -> np.ndarray:  # fmt: skip
    """The epoch's ``size`` windows as (N, 3) int rows (slide index, y0, x0), shuffled:
    ``random_share`` of them on tissue, the rest on objects (all on tissue when there are none)."""
    rng = np.random.default_rng([seed, epoch])
    owner = np.concatenate([np.full(len(s.objects), k) for k, s in enumerate(slides)])
    centres = np.concatenate([s.objects[["y", "x"]].to_numpy(np.int64) for s in slides])
    areas = np.concatenate([s.objects["area"].to_numpy(np.float64) for s in slides])
    n_objects = round(size * (1 - random_share)) if len(areas) else 0
    n_random = size - n_objects
    rows = []
    if n_objects:
        edges = np.quantile(np.log(areas + 1), np.linspace(0, 1, area_bins + 1)[1:-1])
        bins = np.searchsorted(edges, np.log(areas + 1))
        counts = np.bincount(bins, minlength=area_bins)
        weights = 1.0 / counts[bins]
        picked = rng.choice(len(areas), size=n_objects, p=weights / weights.sum())
        shift = rng.uniform(-jitter, jitter, (n_objects, 2)) * window
        corners = centres[picked] + np.rint(shift).astype(np.int64) - window // 2
        rows.append(np.column_stack([owner[picked], corners]))
    cells = [(k, y, x) for k, s in enumerate(slides) for y, x in s.tissue]
    if n_random and cells:
        chosen = np.asarray(cells, np.int64)[rng.integers(0, len(cells), n_random)]
        shift = np.rint(rng.uniform(-0.5, 0.5, (n_random, 2)) * window).astype(np.int64)
        rows.append(np.column_stack([chosen[:, 0], chosen[:, 1:] + shift]))
    if not rows:
        raise ValueError("epoch sampling: the training slides have no object and no tissue")
    out = np.concatenate(rows)
    for k, s in enumerate(slides):  # moved inside each slide
        mine = out[:, 0] == k
        out[mine, 1] = np.clip(out[mine, 1], 0, max(0, s.shape[0] - window))
        out[mine, 2] = np.clip(out[mine, 2], 0, max(0, s.shape[1] - window))
    return out[rng.permutation(len(out))]


class SlideWindowDataset(SegmentationDataset):
    """The windows of one epoch (``set_epoch``), read from the slides: the same items
    (``image``, ``mask``, ``label``) as the prepared tiles give."""

    def __init__(self, slides: Sequence[SlideSource], *, window: int, epoch_size: int,
                 jitter: float, random_share: float, area_bins: int, seed: int, **options):  # fmt: skip
        super().__init__([], "", None, **options)
        self.slides, self.window = list(slides), window
        self.settings = {"size": epoch_size, "jitter": jitter, "random_share": random_share,
                         "area_bins": area_bins, "seed": seed}  # fmt: skip
        self._open: dict = {}  # this process's (pid) open slides, RLE windows and polygons
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.windows = epoch_windows(self.slides, self.window, epoch=epoch, **self.settings)
        self.ids = [f"{self.slides[k].id}_{y}_{x}_e{epoch}" for k, y, x in self.windows]

    def _slide(self, k: int):
        if self._open.get("pid") != os.getpid():  # a forked worker reopens: file offsets are shared
            self._open = {"pid": os.getpid()}
        if k not in self._open:
            s = self.slides[k]
            polygons = read_geojson(s.extra, log=lambda _: None) if s.extra else []
            self._open[k] = (open_slide(s.path), RleWindows(s.encoding, s.shape), polygons)
        return self._open[k]

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        k, y0, x0 = (int(v) for v in self.windows[index])
        slide, truth, polygons = self._slide(k)
        box = (y0, min(y0 + self.window, slide.height), x0, min(x0 + self.window, slide.width))
        image = slide.read(*box, shape=(self.size, self.size))
        full = truth.window(box)
        if polygons:
            full |= rasterize(polygons, slide.shape, box)
        return image, resize_mask(full, self.size)

    def __getstate__(self):  # open files stay in the process that opened them
        return self.__dict__ | {"_open": {}}


class EpochWindowSampler(Sampler[int]):
    """Every window of the epoch once, this rank's interleaved share under DDP; ``set_epoch``
    draws the epoch's windows (the trainer calls it before each epoch's workers start)."""

    def __init__(self, dataset: SlideWindowDataset, num_replicas: int = 1, rank: int = 0):
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.seed, self.epoch = dataset.settings["seed"], 0

    @property
    def n_items(self) -> int:
        return len(self.dataset)

    @property
    def epoch_size(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def epoch_indices(self) -> np.ndarray:
        """The epoch's windows in their drawn order (every rank), before the split."""
        return np.arange(len(self.dataset))

    def __iter__(self):
        indices = self.epoch_indices()
        per_rank = -(-len(indices) // self.num_replicas)
        order = np.resize(indices, per_rank * self.num_replicas)
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.num_replicas)
