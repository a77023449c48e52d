"""Readers for JSRT chest X-rays with SCR masks, in both layouts a user may have.

    <root>/images/<case>.png or <case>.IMG.png      greyscale, or an 8-bit palette PNG (native)
    <root>/masks/<structure>/<case>.png or .gif     {0, 255} (or 1-bit), any integer fraction of
                                                    the image's size (native SCR masks are 1024
                                                    for 2048 images)

Structures are the patient's sides: ``left_lung`` lies on the image's right. The native JSRT PNGs
store palette indices whose palette is an inverted ramp: the palette must be applied (reading
the raw indices gives an inverted image). Masks are resized to the image grid with nearest
neighbour. Bad input raises one ``ValueError`` naming the case and the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

STRUCTURES = ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")
_CASE = re.compile(r"(JPC[LN]N\d{3})(?:\.IMG)?\.png$", re.IGNORECASE)
MASK_SUFFIXES = (".png", ".gif")
TEST_FOLDER = "test"  # raw/test/images/: chest X-rays to predict (test/masks/: truth, if known)


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    masks: dict[str, Path]  # structure -> file

    @property
    def number(self) -> int:
        return int(self.case_id[-3:])

    @property
    def nodule(self) -> bool:
        """``JPCLN`` cases have a lung nodule, ``JPCNN`` cases do not."""
        return self.case_id.upper().startswith("JPCLN")


def mask_file(root: Path, structure: str, case_id: str) -> Path:
    """``root/masks/<structure>/<case>.png`` (or ``.gif``); ``ValueError`` naming both when
    there is none."""
    for suffix in MASK_SUFFIXES:
        path = root / "masks" / structure / f"{case_id}{suffix}"
        if path.is_file():
            return path
    raise ValueError(
        f"case {case_id}: no {structure} mask "
        f"(expected masks/{structure}/{case_id}.png or .gif under {root})"
    )


def find_cases(root: str | os.PathLike, structures=STRUCTURES) -> list[Case]:
    """Every case under ``root/images`` with a mask for each structure, sorted by id."""
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise ValueError(f"{root}: no images/ folder (expected images/<case>.png)")
    cases = []
    for path in sorted(images.iterdir()):
        match = _CASE.match(path.name)
        if not match:
            continue
        case_id = match.group(1).upper()
        masks = {structure: mask_file(root, structure, case_id) for structure in structures}
        cases.append(Case(case_id, path, masks))
    if not cases:
        raise ValueError(f"{images}: no JSRT images (JPCLNnnn.png, JPCNNnnn.png or .IMG.png)")
    return cases


def find_test_images(root: str | os.PathLike) -> dict[str, Path]:
    """Case id -> image of every chest X-ray under ``root/test/images`` (none: {})."""
    folder = Path(root) / TEST_FOLDER / "images"
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.iterdir()):
        match = _CASE.match(path.name)
        if match:
            found[match.group(1).upper()] = path
    return found


def _open(path: Path, case_id: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"case {case_id}: {path} is not a readable image ({error})") from None


def read_image(path: str | os.PathLike, case_id: str = "") -> np.ndarray:
    """A (H, W) uint8 display image; palette images go through their palette."""
    image = _open(Path(path), case_id or Path(path).stem)
    if image.mode != "L":
        image = image.convert("L")  # applies the palette ("P") or drops colour / bit depth
    return np.asarray(image, dtype=np.uint8)


def read_structure(
    path: str | os.PathLike, shape: tuple[int, int], case_id: str = ""
) -> np.ndarray:
    """A {0, 1} mask on the image grid ``shape`` (nearest neighbour from an integer fraction)."""
    path = Path(path)
    mask = np.asarray(_open(path, case_id).convert("L")) > 127
    height, width = shape
    mh, mw = mask.shape
    if height % mh or width % mw or height // mh != width // mw:
        raise ValueError(
            f"case {case_id}: {path} is {mw}x{mh}, which does not divide the image's {width}x{height}"
        )
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return mask.astype(np.uint8)


def load_case(case: Case, structures=STRUCTURES) -> tuple[np.ndarray, np.ndarray]:
    """The image (H, W) uint8 and its masks (len(structures), H, W) uint8 {0, 1}."""
    image = read_image(case.image, case.case_id)
    masks = np.stack([read_structure(case.masks[s], image.shape, case.case_id) for s in structures])
    return image, masks


def scr_fold(case: Case) -> int:
    """The SCR benchmark's two folds: 0 for odd-numbered cases, 1 for even-numbered ones."""
    return 0 if case.number % 2 else 1
