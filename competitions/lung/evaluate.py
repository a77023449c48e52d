"""How the lung competition is scored: the SCR benchmark's three groups, the published Jaccard
figures beside them, and its cases as a ``common.post.channel_evaluate.CaseSet`` (per-structure
thresholds cross-fitted between folds, Dice and Jaccard per structure and group).

    python -m common.cli train --competition lung --config competitions/lung/configs/unet_resnet18_cpu.yaml --folds 0,1
    python -m common.cli evaluate --competition lung --config competitions/lung/configs/unet_resnet18_cpu.yaml --folds 0,1

Training is ``common.train.channel_runner``: the SCR folds (``data.split``), both halves
predicted by the model that did not see them, then this evaluation.
"""

from pathlib import Path

from common.post.channel_evaluate import CaseSet
from competitions.lung.loaders import fold_cases, items, make_loaders, read_cases, tta_policy
from competitions.lung.prepare import prepare

GROUPS = {  # the literature reports these three figures
    "lungs": ("left_lung", "right_lung"),
    "heart": ("heart",),
    "clavicles": ("left_clavicle", "right_clavicle"),
}
PUBLISHED = {  # Jaccard on the SCR odd/even benchmark
    "human observer (van Ginneken et al. 2006)": {"lungs": 0.946, "heart": 0.878, "clavicles": 0.896},
    "FCN (Novikov et al. 2018)": {"lungs": 0.941, "heart": 0.866, "clavicles": 0.887},
}  # fmt: skip

CASES = CaseSet(
    read_cases=read_cases,
    make_loaders=make_loaders,
    fold_cases=fold_cases,
    items=items,
    policy=tta_policy,
    prepare=lambda config, size, skip_bad: prepare(
        size,
        config.data.score_size,
        raw=config.data.raw,
        synthetic=config.data.synthetic,
        prepared=config.data.prepared,
        skip_bad=skip_bad,
    ),
    configs=Path(__file__).resolve().parent / "configs",
    tables=("cases.csv", "test.csv"),
    groups=GROUPS,
    published=PUBLISHED,
    cv_metric="Jaccard, mean of lungs, heart, clavicles",
    label="lung",
)
