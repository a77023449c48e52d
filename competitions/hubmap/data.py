"""HuBMAP's files: ``train.csv`` (id,encoding), ``sample_submission.csv`` (id,predicted),
``train/<id>.tiff`` and ``test/<id>.tiff``; without the download, seven synthetic slides in six
TIFF layouts (``synthetic.py``)."""

from pathlib import Path

from common.config import Config
from common.data.slide_tiles import SlideSet


def generate(root: Path, data: Config) -> None:
    from competitions.hubmap.synthetic import SyntheticSpec, generate

    scale, unannotated = data.get("synthetic_scale", 1.0), data.get("synthetic_unannotated", 0.0)
    try:
        spec = SyntheticSpec(scale=float(scale), unannotated=float(unannotated))
    except (TypeError, ValueError) as error:
        raise ValueError(f"data.synthetic_scale={scale!r}, data.synthetic_unannotated="
                         f"{unannotated!r}: {error}") from None  # fmt: skip
    generate(root, spec)


SLIDES = SlideSet(
    truth_column="encoding",
    prediction_column="predicted",
    extension=".tiff",
    generate=generate,
    describe="HuBMAP: 5 train and 2 test slides (3,000-15,000 px) in six TIFF layouts",
)
