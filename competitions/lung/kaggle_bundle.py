"""Freeze a lung ensemble for a Kaggle notebook that runs with the internet off
(``common.submit.kaggle``): the notebook reads chest X-rays from a Kaggle dataset in the JSRT layout
(``test/images/``).

    python -m competitions.lung.kaggle_bundle build --ensemble competitions/lung/configs/ensembles/default.yaml
"""

from __future__ import annotations

from functools import partial

from common.submit import kaggle

DATA = "jsrt-scr-chest-xrays"  # the input dataset's folder under /kaggle/input

SPEC = kaggle.BundleSpec(package="lung", title="Lung", input_slug=DATA)


build = partial(kaggle.build, spec=SPEC)
main = partial(kaggle.main, SPEC)

if __name__ == "__main__":
    main()
