"""Freeze a lung ensemble for a Kaggle notebook that runs with the internet off
(``common.kaggle``): the notebook reads chest X-rays from a Kaggle dataset in the JSRT layout
(``test/images/``).

    python -m competitions.lung.kaggle_bundle build --ensemble competitions/lung/configs/ensembles/default.yaml
"""

from __future__ import annotations

from common import kaggle

DATA = "jsrt-scr-chest-xrays"  # the input dataset's folder under /kaggle/input

SPEC = kaggle.BundleSpec(package="lung", title="Lung", input_slug=DATA)


def build(config, out, owner, *, wheels=True, log=print):
    return kaggle.build(config, SPEC, out, owner, wheels=wheels, log=log)


def main(argv=None) -> None:
    kaggle.main(SPEC, argv)


if __name__ == "__main__":
    main()
