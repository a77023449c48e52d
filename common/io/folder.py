"""A dataset folder in the documented layout, read with no code of its own (nnU-Net's idea with
Kaggle's formats). Only read, never written.

    <folder>/train/images/<id>.<png|jpg|jpeg|tif|tiff|bmp|dcm>   grey or RGB, 8 or 16 bit, any size
    <folder>/train/masks/<id>.png            binary (0/255, 0/1, 0/65535) or class indices 0..K
    <folder>/train/masks/<class>/<id>.png    or one binary mask per class (multi-label)
    <folder>/train.csv                       or run-length masks: id,rle (several rows per id are
                                             OR-ed) or the long form id,ClassId,rle
    <folder>/test/images/<id>.<ext>          optional: the images to submit
    <folder>/sample_submission.csv           optional: the writer mirrors its columns, order, empty
    <folder>/dataset.yaml                    optional: DatasetSpec's keys

Without a ``dataset.yaml`` the RLE is the common Kaggle form (absolute, 1-indexed starts,
column-major: down each column, then left to right), the metric Dice with the Kaggle empty rule
(an empty prediction on an empty truth scores 1), and the name the folder's.

Every problem is one line naming the file (image without a mask, mask of another size, mask values
neither binary nor declared classes, RLE past the image, unknown extension, an id under two
extensions, empty folder); ``scan`` lists them all in one error, or, with ``skip_bad``, leaves those
items out and returns them in ``DatasetFolder.bad``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from common.io.dicom import read_dicom
from common.io.images import window_to_uint8
from common.io.paths import check_id
from common.io.rle import ORDERS, rle_decode, siim_rle_decode
from common.io.rle_csv import read_table

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
SPEC_KEYS = ("name", "classes", "rle", "order", "metric", "orientation_sensitive", "id_column",
             "empty_score")  # fmt: skip
METRICS = ("dice", "jaccard")
RLE_FORMS = ("absolute", "relative")
_RLE_COLUMNS = ("encodedpixels", "rle_mask", "rle", "encoding", "predicted", "mask", "annotation")
_CLASS_COLUMNS = ("classid", "class_id", "class", "label")
DEEP_PERCENTILES = (0.5, 99.5)  # a 16-bit image is windowed to uint8 between these percentiles


class DatasetError(ValueError):
    """The folder breaks the layout; ``problems`` lists (id, reason) for each item."""

    def __init__(self, root: Path, problems: list[tuple[str, str]], limit: int = 12):
        self.problems = problems
        lines = [f"  {reason}" for _, reason in problems[:limit]]
        more = [f"  ... and {len(problems) - limit} more"] if len(problems) > limit else []
        hint = "  (SKIP_BAD=1 / --skip-bad leaves these items out)"
        super().__init__("\n".join([f"{root}: {len(problems)} problem(s):", *lines, *more, hint]))


@dataclass(frozen=True)
class DatasetSpec:
    """``dataset.yaml``: every key optional."""

    name: str
    classes: tuple[str, ...] | None = None  # class names in index order (index 1 = first)
    rle: str = "absolute"  # absolute (1-indexed starts) | relative (SIIM: gaps, -1 empty)
    order: str = "F"  # F: column-major (down each column first) | C: row-major
    metric: str = "dice"  # dice | jaccard, mean per image (and class) with the empty rule
    orientation_sensitive: bool = False  # true: no flips in augmentation or TTA (left != right)
    id_column: str | None = None  # the sample submission's id column when it has none of ours
    empty_score: float = 1.0  # the score of an empty prediction on an empty truth (Kaggle: 1)

    @property
    def empty(self) -> str:
        """How an empty mask is written when there is no sample submission."""
        return "-1" if self.rle == "relative" else ""

    def decode(self, rle: str, shape: tuple[int, int]) -> np.ndarray:
        if self.rle == "relative":
            if self.order != "F":
                raise ValueError("rle: relative is column-major (SIIM's form): order must be F")
            return siim_rle_decode(rle, shape)
        return rle_decode(rle, shape, self.order)


def read_spec(root: Path) -> DatasetSpec:
    path = root / "dataset.yaml"
    default_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "dataset"
    if not path.is_file():
        return DatasetSpec(name=default_name)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(SPEC_KEYS)}")
    spec = DatasetSpec(**{"name": default_name} | raw)
    check_id(spec.name, f"{path}: name")
    if spec.classes is not None:
        classes = spec.classes
        if not isinstance(classes, list | tuple) or not classes or len(set(classes)) < len(classes):
            raise ValueError(f"{path}: classes must be a non-empty list of distinct names")
        for name in classes:
            check_id(str(name), f"{path}: class")
        spec = DatasetSpec(**(spec.__dict__ | {"classes": tuple(map(str, classes))}))
    for key, valid in (("rle", RLE_FORMS), ("order", ORDERS), ("metric", METRICS)):
        if getattr(spec, key) not in valid:
            raise ValueError(f"{path}: {key} {getattr(spec, key)!r}; valid: {', '.join(valid)}")
    return spec


def read_image(path: Path) -> np.ndarray:
    """Any image of the layout as uint8 (H, W) grey or (H, W, 3) RGB: 16-bit windowed between
    the 0.5 and 99.5 percentiles, alpha dropped, a DICOM through ``common.io.dicom``. One
    ``ValueError`` naming the file when it cannot be read."""
    if path.suffix.lower() == ".dcm":
        return read_dicom(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (missing, corrupt or truncated)")
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 1 else image[..., 2::-1]  # BGR(A) -> RGB
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        low, high = np.percentile(values, DEEP_PERCENTILES)
        image = (
            window_to_uint8(values, low, high) if high > low else np.zeros(image.shape, np.uint8)
        )
    if image.ndim == 3 and (image == image[..., :1]).all():
        image = image[..., 0]  # grey stored as RGB (e.g. TGS Salt)
    return np.ascontiguousarray(image)


def mask_values(path: Path) -> np.ndarray:
    """A mask PNG's raw values (H, W), any bit depth; ``ValueError`` naming the file."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise ValueError(f"{path}: not a readable mask PNG")
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise ValueError(f"{path}: a colour mask; expected one value per pixel")
        mask = mask[..., 0]
    return mask


def binary_or_classes(values: np.ndarray, path: Path, n_classes: int | None) -> np.ndarray:
    """(C, H, W) {0, 1} masks from raw values: binary {0, max} (max 1, 255 or 65535) as one
    channel, or class indices 0..K as K channels (``n_classes`` K when known)."""
    present = np.unique(values)
    top = int(present.max())
    binary = len(present) <= 2 and (top in (1, 255, 65535) or top == 0)
    if n_classes is None or (n_classes == 1 and binary):
        if not binary:
            raise ValueError(f"{path}: mask values {present[:8].tolist()} are neither binary "
                             "(0/1, 0/255) nor declared classes (dataset.yaml classes)")  # fmt: skip
        return (values > 0)[None].astype(np.uint8)
    if top > n_classes:
        raise ValueError(f"{path}: mask value {top} but {n_classes} class(es) declared")
    return np.stack([(values == k) for k in range(1, n_classes + 1)]).astype(np.uint8)


@dataclass
class DatasetFolder:
    """What ``scan`` found: ids and files of the train and test images and how to read masks."""

    root: Path
    spec: DatasetSpec
    layout: str  # png | classes | csv
    classes: tuple[str, ...]  # mask channel names, in order
    train: dict[str, Path]  # id -> image file
    test: dict[str, Path]
    mask_dir: Path | None = None
    rles: dict[str, list[tuple[int, str, int]]] = field(
        default_factory=dict
    )  # id -> (class, rle, line)
    sample: Path | None = None
    bad: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) left out
    codes: tuple[str, ...] = ()  # each class's ClassId in a long-form CSV (default: 1..K)
    test_truth: bool = False  # test/masks/ holds every test image's masks (scored locally)

    @property
    def name(self) -> str:
        return self.spec.name

    def mask_files(self, image_id: str, split: str = "train") -> list[Path]:
        folder = self.root / split / "masks"
        if self.layout == "png" or (self.layout == "csv" and split == "test"):
            return [folder / f"{image_id}.png"]
        if self.layout == "classes":
            return [folder / c / f"{image_id}.png" for c in self.classes]
        return [self.root / "train.csv"]

    def read_masks(self, image_id: str, shape: tuple[int, int], split: str = "train") -> np.ndarray:
        """The (C, H, W) {0, 1} truth of an image at its native ``shape`` (``split`` test: from
        ``test/masks/``, as PNGs in either layout)."""
        if self.layout == "csv" and split == "train":
            masks = np.zeros((len(self.classes), *shape), np.uint8)
            for channel, rle, line in self.rles.get(image_id, []):
                try:
                    masks[channel] |= self.spec.decode(rle, shape)
                except ValueError as error:
                    raise ValueError(f"{self.root / 'train.csv'} line {line} ({image_id}): {error}"
                                     f"{_rle_hint(self.spec)}") from None  # fmt: skip
            return masks
        files = self.mask_files(image_id, split)
        if self.layout == "classes":
            masks = np.stack([binary_or_classes(mask_values(f), f, 1)[0] for f in files])
        else:
            n = len(self.classes) if self.classes != ("mask",) else None
            masks = binary_or_classes(mask_values(files[0]), files[0], n)
        for f, m in zip(files * (len(masks) // len(files)), masks, strict=True):
            if m.shape != tuple(shape):
                raise ValueError(f"{f}: mask is {m.shape[0]}x{m.shape[1]}, its image "
                                 f"{shape[0]}x{shape[1]}")  # fmt: skip
        return masks


def _rle_hint(spec: DatasetSpec) -> str:
    other = "relative" if spec.rle == "absolute" else "absolute"
    return (
        f" (read as {spec.rle} RLE, order {spec.order}; dataset.yaml may say rle: {other} or order)"
    )


def _list_images(folder: Path, problems: list) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append((path.name, f"{path}: unknown extension {path.suffix!r}; valid: "
                             f"{', '.join(IMAGE_EXTENSIONS)}"))  # fmt: skip
            continue
        try:
            check_id(path.stem, str(path))
        except ValueError as error:
            problems.append((path.stem, str(error)))
            continue
        if path.stem in found:
            problems.append(
                (path.stem, f"{path}: id {path.stem!r} also as {found[path.stem].name}")
            )
            continue
        found[path.stem] = path
    return found


def _read_csv_masks(root: Path, spec: DatasetSpec, problems: list):
    path = root / "train.csv"
    table = read_table(path, skipinitialspace=True)
    columns = {c.strip().lower(): c for c in table.columns}
    rle_column = next((columns[c] for c in _RLE_COLUMNS if c in columns), None)
    class_column = next((columns[c] for c in _CLASS_COLUMNS if c in columns), None)
    if rle_column is None or len(table.columns) < 2:
        raise ValueError(f"{path}: no run-length column; expected one of {', '.join(_RLE_COLUMNS)}")
    id_column = table.columns[0]
    if class_column is not None:
        codes = sorted({v for v in table[class_column] if v != ""}, key=_class_order)
        classes = spec.classes or tuple(f"class{c}" for c in codes)
        if spec.classes is None:
            index = {c: i for i, c in enumerate(codes)}
        else:
            index = {str(i + 1): i for i in range(len(classes))} | {
                n: i for i, n in enumerate(classes)
            }
    else:
        classes, index = spec.classes or ("mask",), None
    if index is None and len(classes) != 1:
        raise ValueError(f"{path}: {len(classes)} classes declared but no class column")
    codes = tuple(codes) if class_column is not None and spec.classes is None else None
    rles: dict[str, list] = {}
    for line, (image_id, rle, code) in enumerate(
        zip(table[id_column], table[rle_column],
            table[class_column] if class_column else [""] * len(table), strict=True), start=2):  # fmt: skip
        image_id, rle = image_id.strip(), rle.strip()
        rows = rles.setdefault(image_id, [])
        if rle in ("", "-1"):  # an empty mask in either form (an absolute RLE is never -1)
            continue
        if index is not None and code not in index:
            problems.append(
                (image_id, f"{path} line {line}: class {code!r}; valid: {sorted(index)}")
            )
            continue
        rows.append((index[code] if index is not None else 0, rle, line))
    return tuple(map(str, classes)), rles, codes


MAX_INDEXED = 32  # mask values 0..K with K up to this are class indices, when none are declared


def _index_classes(folder: Path, ids, problems: list) -> tuple[str, ...]:
    """``("mask",)`` when every mask is binary (0/1, 0/255 or 0/65535 alike), else the classes
    ``class1..classK`` of masks holding the indices 0..K; a file that fits neither is a problem."""
    values: dict[str, set] = {}
    for image_id in ids:
        path = folder / f"{image_id}.png"
        if path.is_file():
            try:
                values[image_id] = set(np.unique(mask_values(path)).tolist())
            except ValueError as error:
                problems.append((image_id, str(error)))
    every = set().union(*values.values()) if values else {0}
    top = max(every)
    if len(every) <= 2 and top in (0, 1, 255, 65535):
        return ("mask",)
    if top <= MAX_INDEXED:
        return tuple(f"class{k}" for k in range(1, top + 1))
    for image_id, found in values.items():
        if len(found) > 2 or max(found) not in (0, top):
            problems.append((image_id, f"{folder / image_id}.png: mask values {sorted(found)[:8]} "
                             "are neither binary (0/1, 0/255) nor class indices 0..K"))  # fmt: skip
    return ("mask",)


def _class_order(code: str):
    return (0, int(code)) if code.isdigit() else (1, code)


def scan_test(root: str | os.PathLike, classes, codes) -> DatasetFolder:
    """Only the test images, spec and sample of a folder (an offline notebook's input: the
    training files may be absent); ``classes`` and ``codes`` come from the trained run."""
    root, problems = Path(root), []
    test = (
        _list_images(root / "test" / "images", problems)
        if (root / "test" / "images").is_dir()
        else {}
    )
    if not test:
        raise ValueError(f"{root}: no image in test/images/")
    sample = root / "sample_submission.csv"
    return DatasetFolder(root, read_spec(root), "none", tuple(classes), {}, test, codes=tuple(codes),
                         sample=sample if sample.is_file() else None, bad=problems)  # fmt: skip


def scan(root: str | os.PathLike, *, skip_bad: bool = False) -> DatasetFolder:
    """The dataset folder's items and mask layout (see the module docs); checks what can be
    checked without decoding (every file is decoded later, by prepare, with the same errors)."""
    root = Path(root)
    images = root / "train" / "images"
    if not images.is_dir():
        raise ValueError(
            f"{root}: no train/images/ folder (the documented layout: docs/DATASETS.md)"
        )
    spec = read_spec(root)
    problems: list[tuple[str, str]] = []
    train = _list_images(images, problems)
    test_dir = root / "test" / "images"
    test = _list_images(test_dir, problems) if test_dir.is_dir() else {}
    if not train:
        raise ValueError(f"{images}: empty folder: no image to train on")
    mask_dir, rles = root / "train" / "masks", {}
    if mask_dir.is_dir() and any(p.is_dir() for p in mask_dir.iterdir()):
        layout = "classes"
        found = sorted(p.name for p in mask_dir.iterdir() if p.is_dir())
        classes = spec.classes or tuple(found)
        missing = [c for c in classes if not (mask_dir / c).is_dir()]
        if missing:
            raise ValueError(f"{mask_dir}: no folder for class(es) {missing} of dataset.yaml")
    elif mask_dir.is_dir():
        layout = "png"
        classes = spec.classes or _index_classes(mask_dir, train, problems)
    elif (root / "train.csv").is_file():
        layout, mask_dir = "csv", None
        classes, rles, codes = _read_csv_masks(root, spec, problems)
    else:
        raise ValueError(f"{root}: no train/masks/ folder and no train.csv: nothing says the masks")
    if layout != "csv":
        codes = (
            classes if layout == "classes" else tuple(str(k) for k in range(1, len(classes) + 1))
        )
    folder = DatasetFolder(root, spec, layout, classes, train, test, mask_dir, rles,
                           codes=codes or tuple(str(k) for k in range(1, len(classes) + 1)))  # fmt: skip
    folder.test_truth = bool(test) and all(
        p.is_file() for i in test for p in folder.mask_files(i, "test")
    )
    for image_id in train:
        if layout == "csv":
            if image_id not in rles:
                problems.append(
                    (image_id, f"{root / 'train.csv'}: no row for image {train[image_id]}")
                )
            continue
        for path in folder.mask_files(image_id):
            if not path.is_file():
                problems.append((image_id, f"{train[image_id]}: image without a mask ({path})"))
    for image_id in sorted(set(rles) - set(train)):
        problems.append(
            (image_id, f"{root / 'train.csv'}: id {image_id!r} has no image in {images}")
        )
    sample = root / "sample_submission.csv"
    folder.sample = sample if sample.is_file() else None
    if problems and not skip_bad:
        raise DatasetError(root, problems)
    for image_id, _ in problems:
        train.pop(image_id, None)
        test.pop(image_id, None)
    folder.bad = problems
    return folder
