"""Small dataset folders in every documented layout (common.io.folder), written for the tests:
noise images with bright discs (class 1) and squares (class 2), some images empty."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from common.io.rle import rle_encode, siim_rle_encode


def draw(rng: np.random.Generator, shape=(64, 80), empty=False):
    """A uint8 grey image and its (2, H, W) {0, 1} masks (discs, squares)."""
    h, w = shape
    image = rng.normal(70, 12, shape)
    masks = np.zeros((2, h, w), np.uint8)
    if not empty:
        for _ in range(rng.integers(1, 3)):
            y, x, r = (
                int(rng.integers(10, h - 10)),
                int(rng.integers(10, w - 10)),
                int(rng.integers(4, 9)),
            )
            cv2.circle(masks[0], (x, y), r, 1, -1)
        y, x, s = (
            int(rng.integers(2, h - 14)),
            int(rng.integers(2, w - 14)),
            int(rng.integers(6, 12)),
        )
        masks[1, y : y + s, x : x + s] = 1 - masks[0, y : y + s, x : x + s]
    image = image + 90 * masks[0] + 50 * masks[1]
    return np.clip(image, 0, 255).astype(np.uint8), masks


def write_folder(root: Path, layout: str, *, n_train=12, n_test=4, seed=0, ext=".png",
                 classes=2, sample=False, spec: dict | None = None, test_masks=False,
                 shape=(64, 80), bits=8) -> Path:  # fmt: skip
    """A dataset folder: ``layout`` is ``png`` (one binary mask), ``indexed`` (class indices
    0..K), ``classes`` (masks/<class>/), ``csv`` (id,rle, several rows per id), ``long``
    (ImageId,ClassId,EncodedPixels) or ``relative`` (SIIM's relative RLE, -1 empty)."""
    rng = np.random.default_rng(seed)
    names = ["disc", "square"][:classes]
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        for k in range(n):
            image_id = f"{split}{k:03d}"
            image, masks = draw(rng, shape, empty=k % 4 == 3)
            masks = masks[:classes]
            stored = image.astype(np.uint16) * 257 if bits == 16 else image
            cv2.imwrite(str(root / split / "images" / f"{image_id}{ext}"), stored)
            if split == "test" and not test_masks:
                continue
            folder = root / split / "masks"
            if layout == "png" or (split == "test" and layout in ("csv", "relative")):
                _png(folder / f"{image_id}.png", masks.any(axis=0) * 255)
            elif layout == "indexed" or (split == "test" and layout == "long"):
                _png(
                    folder / f"{image_id}.png",
                    np.argmax(np.concatenate([masks.sum(0, keepdims=True) == 0, masks]), 0),
                )
            elif layout == "classes":
                for name, m in zip(names, masks, strict=True):
                    _png(folder / name / f"{image_id}.png", m * 255)
            elif layout in ("csv", "relative"):
                union = masks.any(axis=0).astype(np.uint8)
                encode = siim_rle_encode if layout == "relative" else rle_encode
                parts = [union[:, : shape[1] // 2], union[:, shape[1] // 2 :]]  # two rows OR-ed
                for j, part in enumerate(parts):
                    half = np.zeros_like(union)
                    half[:, j * (shape[1] // 2) : (j * (shape[1] // 2) + part.shape[1])] = part
                    rows.append(
                        (
                            image_id,
                            encode(half) if half.any() else ("-1" if layout == "relative" else ""),
                        )
                    )
            elif layout == "long":
                for c, m in enumerate(masks, start=1):
                    rows.append((image_id, str(c), rle_encode(m) if m.any() else ""))
    if layout in ("csv", "relative"):
        header = "ImageId,EncodedPixels" if layout == "relative" else "id,rle_mask"
        (root / "train.csv").write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    if layout == "long":
        text = "".join(f"{a},{b},{c}\n" for a, b, c in rows)
        (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n" + text)
    spec = dict(spec or {})
    if layout == "relative":
        spec["rle"] = "relative"
    if spec:
        (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    if sample:
        ids = sorted(p.stem for p in (root / "test" / "images").iterdir())[::-1]  # its own order
        multi = layout in ("long", "indexed", "classes") and classes > 1
        body = (
            "".join(f"{i},{c},\n" for i in ids for c in range(1, classes + 1))
            if multi
            else "".join(f"{i},\n" for i in ids)
        )
        head = "ImageId,ClassId,EncodedPixels" if multi else "id,rle_mask"
        (root / "sample_submission.csv").write_text(head + "\n" + body)
    return root


def _png(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.asarray(values).astype(np.uint8))
