"""Freeze a SIIM ensemble for a Kaggle notebook that runs with the internet off
(``common.kaggle``): the notebook reads the competition's test DICOMs.

    python -m competitions.siim.kaggle_bundle build --ensemble competitions/siim/configs/ensembles/default.yaml
    python -m competitions.siim.kaggle_bundle push  --ensemble ...
"""

from __future__ import annotations

from common import kaggle
from competitions.siim.offline import COMPETITION

SPEC = kaggle.BundleSpec(
    package="siim",
    title="SIIM",
    input_slug=COMPETITION,
    competition=COMPETITION,
    wheels={  # the DICOM reader and its decoders
        "pydicom": "pydicom",
        "pylibjpeg": "pylibjpeg",
        "pylibjpeg-libjpeg": "libjpeg",
        "pylibjpeg-openjpeg": "openjpeg",
        "pylibjpeg-rle": "rle",
    },
)


def build(config, out, owner, *, wheels=True, log=print):
    return kaggle.build(config, SPEC, out, owner, wheels=wheels, log=log)


def main(argv=None) -> None:
    kaggle.main(SPEC, argv)


if __name__ == "__main__":
    main()
