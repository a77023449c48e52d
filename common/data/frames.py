"""A prepared image cache as training data: ``<prepared>/<size>/train.csv`` (one row per image,
``has_mask``, the id under its competition's column name) joined with the fold file
(``data.folds``: ``ImageId, fold``), split into a fold's training and held-out rows, and turned
into loaders (``common.data.loaders``), with ``data.pseudo``'s pseudo-labelled set added to the
training items only. With a crop stage (``data.crop_stage``) the fold reads its crops.

SIIM and every dataset folder read their data this way; a competition gives its id column and
its transforms folder (``frame_set``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from common.config import Config
from common.data.crops import prepared_root
from common.data.folds import read_folds
from common.data.loaders import Extra, Items, load_pipeline
from common.data.loaders import make_loaders as common_loaders
from common.infer.inference import TtaPolicy


def fold_frames(config: Config, fold: int, *, id_column: str = "id", hint: str = ""
                ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The prepared folder the fold reads and the (train, held-out) rows of its train.csv with
    ``id`` and ``fold``; ``data.positives_only`` keeps the non-empty training rows. ``hint``:
    the command that prepares the cache, for the error when it is missing."""
    root = prepared_root(config.data, fold=fold)  # the crops, with a crop stage
    if not (root / "train.csv").is_file():
        raise ValueError(f"{root}/train.csv not found: {hint or 'run the prepare stage'} first")
    table = pd.read_csv(root / "train.csv", dtype={id_column: str})
    folds = read_folds(config.data.folds).rename(columns={"ImageId": id_column})
    table = table.merge(folds, on=id_column, how="left", validate="one_to_one")
    if table["fold"].isna().any():
        missing = table.loc[table["fold"].isna(), id_column].iloc[0]
        raise ValueError(f"{config.data.folds}: image {missing!r} has no fold; re-run prepare")
    if fold not in set(table["fold"]):
        raise ValueError(
            f"fold {fold} is not in {config.data.folds} (folds: {sorted(set(table.fold))})"
        )
    table["id"] = table[id_column]
    train, val = table[table["fold"] != fold], table[table["fold"] == fold]
    if config.data.get("positives_only"):
        train = train[train["has_mask"] == 1]
    return root, train.reset_index(drop=True), val.reset_index(drop=True)


def frame_items(config: Config, root: Path, frame: pd.DataFrame) -> Items:
    """Loader items of prepared rows: ``images/<id>.png``, ``masks/<id>.png`` (or per class,
    ``masks/<class>/<id>.png``, with several ``data.classes``)."""
    classes = tuple(config.data.get("classes") or ())
    return Items(frame, root / "images", root / "masks", classes if len(classes) > 1 else None)


def pseudo_items(config: Config, labelled: set[str], *, key: str | None = None,
                 column: str = "id") -> Extra | None:  # fmt: skip
    """``data.pseudo``'s set at ``key`` (default: the training size; a slide set's
    ``<window>_<size>``), or None; a row whose ``column`` (its image, or a slide window's
    ``slide``) is labelled is refused (its pseudo-label could come from a model that validated
    on it)."""
    from common.submit.pseudo import read_pseudo_set

    folder = config.data.pseudo.folder
    if not folder:
        return None
    key = str(config.data.size) if key is None else key
    table = read_pseudo_set(Path(folder), key)
    if column not in table.columns:
        raise ValueError(f"{folder}/{key}/train.csv: no {column!r} column")
    leaking = sorted(set(table[column].astype(str)) & labelled)
    if leaking:
        what = "images are training images" if column == "id" else f"windows come from training {column}s"
        raise ValueError(f"{folder}: pseudo-labelled {what}, e.g. {leaking[0]}")
    root = Path(folder) / key
    return Extra(Items(table, root / "images", root / "masks"), config.data.pseudo.share)


def frame_loaders(config: Config, fold: int, seed: int, *, transforms: Path, id_column="id",
                  hint: str = ""):  # fmt: skip
    """The fold's training loader (with ``data.pseudo``'s images, training only) and this
    rank's share of its validation images."""
    root, train, val = fold_frames(config, fold, id_column=id_column, hint=hint)
    transform = load_pipeline(config, transforms)
    extra = pseudo_items(config, set(train["id"]) | set(val["id"]))
    return common_loaders(config, frame_items(config, root, train),
                          frame_items(config, root, val), seed, transform, extra)  # fmt: skip


def frame_set(*, transforms: Path, id_column: str = "id", hint: str = "", label: str = "",
              header: tuple[str, ...] = ()):  # fmt: skip
    """The ``CaseSet`` (``common.post.channel_evaluate``) of a prepared image cache: one mask
    channel, any TTA view."""
    from common.post.channel_evaluate import CaseSet

    return CaseSet(
        read_cases=None,
        fold_cases=partial(fold_frames, id_column=id_column, hint=hint),
        items=frame_items,
        policy=lambda channels: TtaPolicy(),
        make_loaders=partial(frame_loaders, transforms=transforms, id_column=id_column, hint=hint),
        header=header,
        label=label,
    )
