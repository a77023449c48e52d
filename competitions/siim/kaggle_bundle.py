"""Freeze a SIIM ensemble for a Kaggle notebook that runs with the internet off
(``common.submit.kaggle``): the notebook reads the competition's test DICOMs.

    python -m competitions.siim.kaggle_bundle build --ensemble competitions/siim/configs/ensembles/default.yaml
    python -m competitions.siim.kaggle_bundle push  --ensemble ...
"""

from __future__ import annotations

from functools import partial

from common.submit import kaggle
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


build = partial(kaggle.build, spec=SPEC)
main = partial(kaggle.main, SPEC)

if __name__ == "__main__":
    main()
