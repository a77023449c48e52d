"""The embedded synthetic HuBMAP set, written in the Kaggle layout with its TIFF quirks.

    data/hubmap/synthetic/
      train/<id>.tiff                      RGB slides, each in another layout: (H, W, 3) tiled
      test/<id>.tiff                       and zlib-compressed, (H, W, 3) striped, channels first
                                           (3, H, W), 5-D (1, 1, 3, H, W), three pages, a pyramid
      train/<id>.json                      glomerulus polygons (GeoJSON list of Features, some
                                           MultiPolygons, some with a hole, one LineString note)
      <split>/<id>-anatomical-structure.json   the tissue outline ("Cortex")
      train.csv                            id,encoding: column-major RLE of the polygons
      sample_submission.csv                id,predicted with every value empty
      HuBMAP-20-dataset_information.csv    image_file, width_pixels, height_pixels, split, layout,
                                           patient_number (the train slides: three patients)
      test_truth.csv                       the test masks, id,encoding (held back: scoring only)
      extra_annotations/<id>.json          with ``unannotated`` > 0 only: the glomeruli left out
                                           of train.csv and train/<id>.json (the organisers'
                                           misses), as a QuPath FeatureCollection
      manifest.json                        the generation parameters; a re-run with them does nothing

A slide is light background with blobs of pink tissue (grain and stain texture), pale tubules
(rings with a light lumen, the distractors) and glomeruli: purple tufts dotted with dark nuclei,
each in a pale rim (Bowman's space). Sides go from 3,000 to 15,000 px at ``scale`` 1.

    python -m competitions.hubmap.synthetic [--scale 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from joblib import Parallel, delayed

from common.io.atomic import atomic_dir
from common.io.paths import data_dir
from common.io.polygons import rasterize
from common.io.rle import ColumnRunWriter

# (height, width, layout) at scale 1
TRAIN = [
    (3000, 4000, "tiled"),
    (5000, 6000, "striped"),
    (6000, 7000, "channels-first"),
    (7000, 6000, "5d"),
    (8000, 9000, "pages"),
]
TEST = [(4000, 5000, "tiled"), (15000, 12000, "pyramid")]
PATIENTS = [1, 1, 2, 2, 3, 4, 5]  # by index: train slides of three patients, test of two more
BAND = 1024  # rows rendered at once
LOW = 16  # the texture and tissue fields are drawn at 1/16 and resized up


@dataclass(frozen=True)
class SyntheticSpec:
    scale: float = 1.0  # multiplies the slide sides (the glomeruli keep their size down to 0.5)
    seed: int = 0
    unannotated: float = 0.0  # share of each train slide's glomeruli missing from its annotations
    # (at least one a slide when above 0)

    def __post_init__(self):
        if not 0.05 <= self.scale <= 2:
            raise ValueError(f"synthetic scale {self.scale}: expected 0.05 .. 2")
        if not 0.0 <= self.unannotated <= 0.9:
            raise ValueError(f"synthetic unannotated share {self.unannotated}: expected 0 .. 0.9")


def _smooth(rng, shape, sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def _blob(rng, centre, radius: float, n: int = 36) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    wobble = 1 + 0.12 * np.sin(rng.integers(2, 5) * angles + rng.uniform(0, 6.3))
    wobble += rng.normal(0, 0.03, n)
    aspect = rng.uniform(0.8, 1.2)
    x = centre[0] + radius * wobble * np.cos(angles) * aspect
    y = centre[1] + radius * wobble * np.sin(angles) / aspect
    return np.round(np.stack([x, y], axis=1), 1)


def _layout_objects(rng, height: int, width: int, tissue_low: np.ndarray, object_scale: float):
    """Glomerulus features (GeoJSON geometries) and tubules (cx, cy, rx, ry, angle)."""
    ys, xs = np.nonzero(tissue_low)
    radius_range = (90 * object_scale, 150 * object_scale)
    n = max(3, int(len(ys) * LOW * LOW / (1900 * object_scale) ** 2))  # about 1% of the pixels
    centres, features = [], []
    for _ in range(n * 4):
        if len(features) >= n or not len(ys):
            break
        pick = rng.integers(len(ys))
        c = np.array([(xs[pick] + rng.uniform()) * LOW, (ys[pick] + rng.uniform()) * LOW])
        r = rng.uniform(*radius_range)
        margin = 2.2 * r
        if not (margin < c[0] < width - margin and margin < c[1] < height - margin):
            continue
        if any(np.hypot(*(c - o)) < 3.5 * max(r, s) for o, s in centres):
            continue
        centres.append((c, r))
        kind = (0.05, 0.2)[len(features)] if len(features) < 2 else rng.uniform()  # a hole, a pair
        outline = _blob(rng, c, r)
        if kind < 0.12:  # a sclerotic core annotated as a hole
            geometry = {
                "type": "Polygon",
                "coordinates": [outline.tolist(), _blob(rng, c, 0.35 * r, 16).tolist()],
            }
        elif kind < 0.24:  # two tufts annotated as one feature
            offset = np.array([1.25 * r, 0.0]) if rng.uniform() < 0.5 else np.array([0.0, 1.25 * r])
            second = _blob(rng, c + offset, 0.55 * r, 24)
            geometry = {
                "type": "MultiPolygon",
                "coordinates": [[outline.tolist()], [second.tolist()]],
            }
            centres.append((c + offset, 0.55 * r))
        else:
            geometry = {"type": "Polygon", "coordinates": [outline.tolist()]}
        features.append({"type": "Feature", "id": "PathAnnotationObject", "geometry": geometry,
                         "properties": {"classification": {"name": "glomerulus"}}})  # fmt: skip
    tubules = []
    for _ in range(n * 12):
        pick = rng.integers(len(ys))
        c = np.array([(xs[pick] + rng.uniform()) * LOW, (ys[pick] + rng.uniform()) * LOW])
        if any(np.hypot(*(c - o)) < 1.6 * s + 60 * object_scale for o, s in centres):
            continue
        axes = rng.uniform(25, 70, 2) * object_scale
        tubules.append((c[0], c[1], axes[0], axes[1], rng.uniform(0, 180)))
    return features, tubules


def _polygons(features) -> list[list[np.ndarray]]:
    out = []
    for feature in features:
        geometry = feature["geometry"]
        parts = (
            [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        )
        out.extend([np.asarray(ring, np.float64) for ring in part] for part in parts)
    return out


def _render(rng, height, width, tissue_low, stain_low, polygons, tubules, annotated=None):
    """The (height, width, 3) RGB slide and the column-major RLE of its glomeruli (of those in
    ``annotated`` when given: the image shows them all)."""
    image = np.empty((height, width, 3), np.uint8)
    writer = ColumnRunWriter(height, width)
    grain = rng.normal(0, 1, (256, 256)).astype(np.float32)
    for y0 in range(0, height, BAND):
        y1 = min(y0 + BAND, height)
        rows = slice(y0 // LOW, -(-y1 // LOW))
        size = (width, (rows.stop - rows.start) * LOW)
        tissue = cv2.resize(tissue_low[rows], size)[: y1 - y0] > 0
        stain = cv2.resize(stain_low[rows], size)[: y1 - y0]
        noise = np.tile(grain, (-(-(y1 - y0) // 256), -(-width // 256)))[: y1 - y0, :width]
        noise = np.roll(noise, (y0 * 7) % 256, axis=1)
        glom = rasterize(polygons, (height, width), (y0, y1, 0, width))
        writer.add(
            y0,
            glom
            if annotated is None
            else rasterize(annotated, (height, width), (y0, y1, 0, width)),
        )
        rim = np.zeros_like(glom)
        wall = np.zeros_like(glom)
        lumen = np.zeros_like(glom)
        for polygon in polygons:
            ring = np.rint(polygon[0] - [0, y0]).astype(np.int32)
            if ring[:, 1].max() >= -40 and ring[:, 1].min() < y1 - y0 + 40:
                cv2.polylines(rim, [ring], True, 1, thickness=16)
        for cx, cy, rx, ry, angle in tubules:
            if -100 < cy - y0 < y1 - y0 + 100:
                centre, axes = (int(cx), int(cy - y0)), (int(rx), int(ry))
                cv2.ellipse(wall, centre, axes, angle, 0, 360, 1, thickness=max(4, int(rx / 3)))
                cv2.ellipse(lumen, centre, (int(rx * 0.55), int(ry * 0.55)), angle, 0, 360, 1, -1)
        base = np.array([236, 233, 240], np.float32) + 3 * noise[..., None]
        pink = np.array([222, 150, 190], np.float32) + (12 * stain + 10 * noise)[..., None]
        band = np.where(tissue[..., None], pink, base)
        band = np.where((wall & tissue)[..., None], pink - [28, 38, 20], band)
        band = np.where((lumen & tissue)[..., None], base - 8, band)
        band = np.where(
            rim[..., None] > 0, np.array([238, 226, 236], np.float32) + 4 * noise[..., None], band
        )
        nuclei = (noise > 1.3)[..., None]
        tuft = np.array([168, 96, 170], np.float32) + (10 * stain + 8 * noise)[..., None]
        band = np.where(glom[..., None] > 0, np.where(nuclei, tuft - [90, 60, 50], tuft), band)
        image[y0:y1] = np.clip(band, 0, 255).astype(np.uint8)
    return image, writer.encode()


def _write_tiff(path: Path, image: np.ndarray, layout: str) -> None:
    zlib = {"compression": "zlib", "compressionargs": {"level": 1}}
    if layout == "tiled":
        tifffile.imwrite(path, image, tile=(512, 512), photometric="rgb", **zlib)
    elif layout == "striped":
        tifffile.imwrite(path, image, rowsperstrip=256, photometric="rgb")
    elif layout == "channels-first":
        tifffile.imwrite(
            path,
            np.moveaxis(image, -1, 0),
            photometric="rgb",
            planarconfig="separate",
            rowsperstrip=256,
        )
    elif layout == "5d":
        planes = np.moveaxis(image, -1, 0)[None, None]
        tifffile.imwrite(
            path, planes, photometric="minisblack", metadata={"axes": "TZCYX"}, rowsperstrip=256
        )
    elif layout == "pages":
        with tifffile.TiffWriter(path) as tiff:
            for channel in range(3):
                tiff.write(image[..., channel], photometric="minisblack", rowsperstrip=256, **zlib)
    elif layout == "pyramid":
        with tifffile.TiffWriter(path) as tiff:
            tiff.write(image, subifds=2, tile=(512, 512), photometric="rgb", **zlib)
            for level in (2, 4):
                small = cv2.resize(
                    image,
                    (image.shape[1] // level, image.shape[0] // level),
                    interpolation=cv2.INTER_AREA,
                )
                tiff.write(small, subfiletype=1, tile=(512, 512), photometric="rgb", **zlib)
    else:
        raise ValueError(f"layout {layout!r}")


def _make_one(
    spec: SyntheticSpec, root: Path, split: str, index: int, height: int, width: int, layout: str
) -> dict:
    rng = np.random.default_rng([spec.seed, index])
    image_id = f"{rng.integers(16**9):09x}"
    low_shape = (-(-height // LOW), -(-width // LOW))
    tissue_low = _smooth(rng, low_shape, 12) + 0.9
    edge = np.zeros(low_shape, np.float32)  # tissue fades out towards the border
    edge[4:-4, 4:-4] = 1
    tissue_low = np.where(edge > 0, tissue_low, -1).astype(np.float32)
    stain_low = _smooth(rng, low_shape, 3)
    object_scale = max(0.5, min(1.0, spec.scale))
    features, tubules = _layout_objects(rng, height, width, tissue_low > 0, object_scale)
    polygons = _polygons(features)
    missed = []
    if split == "train" and spec.unannotated > 0 and features:  # its own stream: same slide
        count = min(len(features), max(1, round(spec.unannotated * len(features))))
        drop = np.random.default_rng([spec.seed, index, 1]).choice(
            len(features), count, replace=False
        )
        dropped = set(drop.tolist())
        missed = [f for i, f in enumerate(features) if i in dropped]
        features = [f for i, f in enumerate(features) if i not in dropped]
    annotated = _polygons(features) if missed else None
    image, encoding = _render(
        rng, height, width, tissue_low, stain_low, polygons, tubules, annotated
    )
    _write_tiff(root / split / f"{image_id}.tiff", image, layout)
    contours, _ = cv2.findContours(
        (tissue_low > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    cortex = [{"type": "Feature", "id": "PathAnnotationObject",
               "geometry": {"type": "Polygon", "coordinates": [[*(c[:, 0] * LOW).tolist(), (c[0, 0] * LOW).tolist()]]},
               "properties": {"classification": {"name": "Cortex"}}} for c in contours if len(c) >= 3]  # fmt: skip
    (root / split / f"{image_id}-anatomical-structure.json").write_text(json.dumps(cortex))
    if split == "train":
        note = {"type": "Feature", "id": "PathAnnotationObject",
                "geometry": {"type": "LineString", "coordinates": [[10, 10], [60, 60]]},
                "properties": {"classification": {"name": "note"}}}  # fmt: skip
        (root / split / f"{image_id}.json").write_text(json.dumps([*features, note]))
    if missed:
        (root / "extra_annotations").mkdir(exist_ok=True)
        collection = {"type": "FeatureCollection", "features": missed}
        (root / "extra_annotations" / f"{image_id}.json").write_text(json.dumps(collection))
    return {
        "id": image_id,
        "patient_number": PATIENTS[index],
        "split": split,
        "encoding": encoding,
        "height": height,
        "width": width,
        "layout": layout,
    }


def generate(out: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, n_jobs: int = 2) -> Path:
    """Write the set into ``out`` (atomically, as a whole); reuse it when its manifest matches."""
    out = Path(out)
    manifest = {"spec": asdict(spec), "version": 4}  # 4: masks by pixel centres, patients
    if (out / "manifest.json").is_file() and json.loads(
        (out / "manifest.json").read_text()
    ) == manifest:
        return out
    with atomic_dir(out) as tmp:
        for split in ("train", "test"):
            (tmp / split).mkdir()
        jobs = [("train", i, *s) for i, s in enumerate(TRAIN)]
        jobs += [("test", len(TRAIN) + i, *s) for i, s in enumerate(TEST)]
        jobs.sort(key=lambda job: -job[2] * job[3])  # the largest first: balanced processes
        rows = Parallel(n_jobs=n_jobs)(
            delayed(_make_one)(
                spec, tmp, split, i, round(h * spec.scale), round(w * spec.scale), layout
            )
            for split, i, h, w, layout in jobs
        )
        table = pd.DataFrame(rows).sort_values(["split", "id"])
        train, test = table[table.split == "train"], table[table.split == "test"]
        train[["id", "encoding"]].to_csv(tmp / "train.csv", index=False)
        test[["id", "encoding"]].to_csv(tmp / "test_truth.csv", index=False)
        test.assign(predicted="")[["id", "predicted"]].to_csv(
            tmp / "sample_submission.csv", index=False
        )
        info = pd.DataFrame({
            "image_file": table["id"] + ".tiff", "width_pixels": table["width"],
            "height_pixels": table["height"], "split": table["split"], "layout": table["layout"],
            "patient_number": table["patient_number"],
        })  # fmt: skip
        info.to_csv(tmp / "HuBMAP-20-dataset_information.csv", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(data_dir("hubmap") / "synthetic"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = generate(args.out, SyntheticSpec(scale=args.scale, seed=args.seed))
    print(f"synthetic HuBMAP set in {path}")


if __name__ == "__main__":
    main()
