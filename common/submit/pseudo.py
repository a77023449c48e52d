"""Pseudo-labels (SIIM 3rd and 5th place): an ensemble's confident predictions on unlabelled
images become an extra, training-only prepared set.

    unlabelled images --(an ensemble's fold models, its TTA)--> probability maps
        --select (rules)--> positives (the searched triplet's mask), negatives (empty), the rest left out
        --write_pseudo_set--> <folder>/<size>/images/<id>.png, masks/<id>.png, train.csv,
                              <folder>/provenance.json

Rules (the ensemble config's ``pseudo`` section): an image whose highest probability is at least
``positive_above`` is a positive, labelled by the triplet mask of the ensemble's out-of-fold
search (``thresholds.yaml``); one whose highest probability is at most ``negative_below`` is a
negative; anything between is left out, as is a "positive" whose triplet mask is empty.

Leakage: a pseudo-label must never come from a model that had the image in its validation fold,
or the out-of-fold scores of a model trained on it would be inflated. The competition's test
images are in no fold. Extra images (an outside folder, e.g. NIH ChestX-ray14, of which SIIM's
training images are a subset) are checked against every labelled training image: an id that is
a training id, or an image whose 32 x 32 thumbnail correlates with a training image's at
``duplicate_correlation`` or more (contrast and brightness changes do not hide it), is left out
and counted in the provenance. The default 0.995 sits between a copy under another window or
gamma (0.997-1.000) and distinct images (at most 0.88 between the 21 real SIIM DICOMs of the
test data, 0.984 between the synthetic set's look-alike test and training images). Training adds the set to every fold's training items only
(``common.data.loaders.Extra``); validation never sees it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from common.infer.predict import predict_ids
from common.io.atomic import atomic_dir, atomic_path, remove_stale_builds, write_text_atomic
from common.io.images import read_png, resize_image, resize_mask, write_mask, write_png
from common.io.locks import exclusive
from common.post.postprocess import PROB_SCALE, triplet
from common.submit.ensemble import check_trained, fold_models, predict_options

THUMB = 32
COLUMNS = ("id", "has_mask", "max_prob", "mask_area")


@dataclass(frozen=True)
class Rules:
    positive_above: float = 0.9
    negative_below: float = 0.1
    duplicate_correlation: float = 0.995

    def __post_init__(self):
        if not 0 <= self.negative_below < self.positive_above <= 1:
            raise ValueError(
                f"pseudo rules: need 0 <= negative_below < positive_above <= 1, got "
                f"{self.negative_below} and {self.positive_above}"
            )


def label(prob: np.ndarray, rules: Rules, thresholds: Mapping) -> np.ndarray | None:
    """The pseudo mask of a uint8 probability map (``PROB_SCALE`` = 1.0), or None to leave the
    image out. ``thresholds`` holds the triplet ``top``, ``min_area``, ``bottom``."""
    highest = float(prob.max()) / PROB_SCALE if prob.size else 0.0
    if highest <= rules.negative_below:
        return np.zeros(prob.shape, np.uint8)
    if highest < rules.positive_above:
        return None
    mask = triplet(prob, thresholds["top"], int(thresholds["min_area"]), thresholds["bottom"])
    return mask if mask.any() else None


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A (THUMB * THUMB,) float32 vector of a greyscale image, zero mean and unit norm."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = small.ravel() - small.mean()
    norm = float(np.linalg.norm(small))
    return small / norm if norm > 0 else small


def near_duplicates(
    candidates: np.ndarray, references: np.ndarray, correlation: float
) -> np.ndarray:
    """For each row of ``candidates`` (thumbnails), whether some row of ``references`` has a
    correlation of at least ``correlation`` with it (chunked: memory stays small)."""
    found = np.zeros(len(candidates), bool)
    if not len(candidates) or not len(references):
        return found
    for start in range(0, len(references), 4096):
        scores = candidates @ references[start : start + 4096].T
        found |= scores.max(axis=1) >= correlation
    return found


@dataclass(frozen=True)
class PseudoItem:
    id: str
    image: np.ndarray  # uint8 at the source's native size
    prob: np.ndarray  # uint8 probability map at the same size


def write_pseudo_set(
    folder: Path,
    items: Iterable[PseudoItem],
    *,
    rules: Rules,
    thresholds: Mapping,
    sizes: Iterable[int],
    provenance: Mapping,
    excluded: Mapping[str, str] | None = None,
) -> dict:
    """Label ``items`` by ``rules`` and write the kept ones at every training size (see the
    module docs); returns the provenance written (counts included). Each size's ``train.csv``
    is written last, atomically: a run that stops half way leaves no table to train on."""
    sizes = sorted(set(int(s) for s in sizes))
    excluded = dict(excluded or {})
    rows, skipped = [], 0
    for item in items:
        mask = label(item.prob, rules, thresholds)
        if mask is None:
            skipped += 1
            continue
        for size in sizes:
            write_png(
                folder / str(size) / "images" / f"{item.id}.png", resize_image(item.image, size)
            )
            write_mask(folder / str(size) / "masks" / f"{item.id}.png", resize_mask(mask, size))
        highest = float(item.prob.max()) / PROB_SCALE
        rows.append((item.id, int(mask.any()), round(highest, 4), int(mask.sum())))
    table = pd.DataFrame(rows, columns=COLUMNS)
    counts = {"kept": len(table), "positives": int(table["has_mask"].sum()),
              "negatives": int((table["has_mask"] == 0).sum()), "left_out_unsure": skipped,
              "left_out_leakage": len(excluded)}  # fmt: skip
    record = dict(provenance) | {"rules": asdict(rules), "thresholds": dict(thresholds),
                                 "sizes": sizes, "counts": counts, "excluded": excluded}  # fmt: skip
    return write_table(folder, [str(size) for size in sizes], table, record)


def write_table(folder: Path, keys, table: pd.DataFrame, record: Mapping) -> dict:
    """A set's ``<folder>/<key>/train.csv`` for each of ``keys`` (its sizes, or a slide set's
    ``<window>_<size>``), each written atomically, then ``provenance.json``; returns the record."""
    for key in [keys] if isinstance(keys, str) else keys:
        (folder / key).mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / key / "train.csv") as tmp:
            table.to_csv(tmp, index=False)
    write_text_atomic(folder / "provenance.json", json.dumps(dict(record), indent=2) + "\n")
    return dict(record)


def publish(out: Path, what: str, build) -> dict:
    """``build(folder)`` into a folder beside ``out`` that replaces it whole when done, under
    ``out``'s lock (a second run stops with one line naming ``what``); a killed build's half
    folder is cleared first."""
    with exclusive(out.parent / f".{out.name}.lock", what):
        remove_stale_builds(out)  # what a killed run left half-written
        with atomic_dir(out) as folder:  # the old set stays whole until the new one is
            return build(folder)


def read_pseudo_set(folder: Path, key: int | str) -> pd.DataFrame:
    """The table of a pseudo set at ``key`` (an image set's training size, a slide set's
    ``<window>_<size>``), checked (``id``, ``has_mask``)."""
    path = Path(folder) / str(key) / "train.csv"
    if not path.is_file():
        raise ValueError(
            f"{path} not found: build the pseudo set at {key} first "
            "(python -m common.cli pseudo --competition <name> --config <ensemble>)"
        )
    table = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ("id", "has_mask") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def leakage_filter(
    ids: Iterable[str], images: Iterator[np.ndarray], train_ids: set[str],
    train_thumbs: np.ndarray, correlation: float,
) -> dict[str, str]:  # fmt: skip
    """{id: reason} for the candidate images that must be left out: a training id, or a near
    duplicate of a training image (``images`` in the order of ``ids``)."""
    ids = list(ids)
    out = {i: "a training image id" for i in ids if i in train_ids}
    thumbs = np.stack([thumbnail(image) for image in images]) if ids else np.zeros((0, THUMB**2))
    alike = near_duplicates(thumbs, train_thumbs, correlation)
    for image_id, dup in zip(ids, alike, strict=True):
        if dup and image_id not in out:
            out[image_id] = f"a near duplicate of a training image (correlation >= {correlation})"
    return out


def build_pseudo(config, task, *, train_images: Path, train_ids: set[str], out: Path,
                 source: str, log=print) -> dict:  # fmt: skip
    """Predict ``task.test`` (one mask channel) with the ensemble ``config``'s fold models and
    TTA, leave out leaking images, label the rest by the ensemble's ``pseudo`` rules and
    ``thresholds.yaml``, and write the set to ``out`` at the members' training size (the
    folder is replaced whole when the set is complete)."""
    if len(task.channels) != 1:
        raise ValueError(f"pseudo-labels take one mask channel, the task has {len(task.channels)}")
    found = Path(config.output) / config.name / "thresholds.yaml"
    if not found.is_file():
        raise ValueError(f"{found} not found: run the ensemble (make ensemble) first")
    thresholds = yaml.safe_load(found.read_text())
    if thresholds.get("combine", "triplet") != "triplet":
        raise ValueError(f"{found}: combine {thresholds['combine']!r}; pseudo-labels need triplet")
    p = config.pseudo
    rules = Rules(p.positive_above, p.negative_below, p.duplicate_correlation)
    members, _ = check_trained(config)
    models = fold_models(config, task, members)
    sizes = {m.size for m in models}
    if len(sizes) != 1:
        raise ValueError(f"members train at sizes {sorted(sizes)}: pseudo-labels need one size")
    (size,) = sizes
    images = models[0].images
    ids = task.test["id"].astype(str).tolist()
    train_ids = set(train_ids)
    references = np.stack(
        [thumbnail(read_png(train_images / f"{i}.png")) for i in sorted(train_ids)]
    )
    excluded = leakage_filter(ids, (read_png(images / f"{i}.png") for i in ids), train_ids,
                              references, rules.duplicate_correlation)  # fmt: skip
    kept = [i for i in ids if i not in excluded]
    log(f"pseudo: {len(ids)} images, {len(excluded)} left out as training images or their near "
        f"duplicates; predicting {len(kept)} with {len(models)} fold model(s)")  # fmt: skip
    shapes = {i: (size, size) for i in kept}  # labels at the training size
    predictions = predict_ids(kept, shapes, models, [], predict_options(config, task))

    def items():
        for pred in tqdm(predictions, total=len(kept), desc="pseudo", disable=None):
            yield PseudoItem(pred.image_id, read_png(images / f"{pred.image_id}.png"), pred.mask[0])

    provenance = {"ensemble": config.name, "source": source, "size": size,
                  "members": [asdict(m) for m in members], "tta": list(config.tta)}  # fmt: skip
    record = publish(out, f"pseudo-labels {out.name}", lambda build: write_pseudo_set(
        build, items(), rules=rules, thresholds=thresholds, sizes=[size], provenance=provenance,
        excluded=excluded))  # fmt: skip
    c = record["counts"]
    log(f"pseudo: kept {c['kept']} ({c['positives']} positive, {c['negatives']} negative), "
        f"{c['left_out_unsure']} unsure, {c['left_out_leakage']} leaking -> {out}")  # fmt: skip
    return record
