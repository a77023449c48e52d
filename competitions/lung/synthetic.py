"""An embedded synthetic JSRT/SCR-like set, the default when ``data/lung/raw/`` is absent.

    python -m competitions.lung.synthetic [--size 256] [--cases 40] [--seed 0]

Written in the 512-layout (``images/<case>.png``, ``masks/<structure>/<case>.png`` {0, 255}) so
that ``competitions.lung.raw`` reads it like the real data. Each image has the five structures
with the real anatomy's geometry: two lung fields (``left_lung`` on the image's right: the
patient's left), a heart overlapping both lungs low and towards the patient's left, and two thin
clavicles crossing the lung tops; contrast, exposure, ribs and noise vary. Half the cases are
``JPCLN`` and half ``JPCNN``, numbered so that the SCR odd/even folds are balanced. A few more
cases are held back as a test set in ``test/`` (``images/`` predicted by an ensemble,
``masks/`` used only to score its submission).
Deterministic from the seed; built beside the target and renamed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from common.io.atomic import atomic_dir
from common.io.images import write_png
from common.io.paths import data_dir
from competitions.lung.raw import STRUCTURES, TEST_FOLDER


@dataclass(frozen=True)
class SyntheticSpec:
    size: int = 256
    n_cases: int = 40
    seed: int = 0
    n_test: int = 8  # held-back test cases: test/images/ for prediction, test/masks/ for scoring

    def __post_init__(self):
        if not 64 <= self.size <= 2048:
            raise ValueError(f"size {self.size}: use 64..2048 pixels")
        if self.n_cases < 4:
            raise ValueError(f"n_cases {self.n_cases}: at least 4 (two per SCR fold)")
        if self.n_test < 0:
            raise ValueError(f"n_test {self.n_test}: 0 or more")


def _ellipse(size, centre, axes, angle, rng, wobble=0.06) -> np.ndarray:
    """A filled ellipse with a smoothly perturbed outline."""
    mask = np.zeros((size, size), np.uint8)
    points = []
    for t in np.linspace(0, 2 * np.pi, 64, endpoint=False):
        r = 1 + wobble * np.sin(3 * t + rng.uniform(0, 6.28)) * rng.uniform(0.5, 1)
        x = axes[0] * r * np.cos(t)
        y = axes[1] * r * np.sin(t)
        c, s = np.cos(angle), np.sin(angle)
        points.append((centre[0] + c * x - s * y, centre[1] + s * x + c * y))
    cv2.fillPoly(mask, [np.round(np.array(points) * size).astype(np.int32)], 1)
    return mask


def make_case(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image (uint8) and the five {0, 1} masks of case ``index``."""
    rng = np.random.default_rng([spec.seed, index])
    n = spec.size
    j = lambda scale: rng.uniform(-scale, scale)  # noqa: E731 (a short jitter helper)
    masks = {
        "right_lung": _ellipse(n, (0.31 + j(0.02), 0.5 + j(0.03)), (0.14, 0.3), j(0.1), rng),
        "left_lung": _ellipse(n, (0.69 + j(0.02), 0.5 + j(0.03)), (0.13, 0.29), j(0.1), rng),
        "heart": _ellipse(n, (0.55 + j(0.03), 0.66 + j(0.03)), (0.15, 0.12), j(0.3), rng, 0.03),
        "right_clavicle": _ellipse(n, (0.33 + j(0.02), 0.22 + j(0.02)), (0.15, 0.018), 0.25, rng),
        "left_clavicle": _ellipse(n, (0.67 + j(0.02), 0.22 + j(0.02)), (0.15, 0.018), -0.25, rng),
    }
    yy, xx = np.mgrid[0:n, 0:n] / n
    image = 0.75 + 0.1 * np.sin(6 * xx) * rng.uniform(0.5, 1)
    lungs = np.maximum(masks["left_lung"], masks["right_lung"]).astype(float)
    image -= 0.45 * cv2.GaussianBlur(lungs, (0, 0), n / 100)
    ribs = (np.sin(2 * np.pi * (yy * 9 + 0.8 * np.abs(xx - 0.5) ** 1.5 * 6)) > 0.85) * 0.08
    image += ribs * lungs
    image += 0.3 * cv2.GaussianBlur(masks["heart"].astype(float), (0, 0), n / 120)
    for side in ("left_clavicle", "right_clavicle"):
        image += 0.25 * masks[side]
    image = cv2.GaussianBlur(image, (0, 0), n / 400) + rng.normal(0, 0.03, image.shape)
    contrast, exposure = rng.uniform(0.7, 1.2), rng.uniform(-0.1, 0.1)
    image = np.clip((image - 0.5) * contrast + 0.5 + exposure, 0, 1)
    return np.round(image * 255).astype(np.uint8), masks


def case_id(index: int) -> str:
    kind = "JPCLN" if index % 2 == 0 else "JPCNN"
    return f"{kind}{index // 2 + 1:03d}"


def generate(out: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the set to ``out`` unless it already holds one made with ``spec``."""
    out = Path(out)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
        return out
    with atomic_dir(out) as build:
        for index in range(spec.n_cases + spec.n_test):
            image, masks = make_case(spec, index)
            name = case_id(index)
            folder = build if index < spec.n_cases else build / TEST_FOLDER
            write_png(folder / "images" / f"{name}.png", image)
            for structure in STRUCTURES:
                write_png(folder / "masks" / structure / f"{name}.png", masks[structure] * 255)
        (build / "manifest.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SyntheticSpec()
    parser.add_argument("--out", default=str(data_dir("lung", "synthetic")))
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--cases", type=int, default=defaults.n_cases)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    try:
        spec = SyntheticSpec(size=args.size, n_cases=args.cases, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f"lung: writing the synthetic set ({spec}) to {args.out}")
    generate(args.out, spec)


if __name__ == "__main__":
    main()
