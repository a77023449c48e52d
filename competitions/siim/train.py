"""Train SIIM folds from a config, then predict each fold's validation images and search thresholds.

    python -m competitions.siim.train --config competitions/siim/configs/unet_resnet18_cpu.yaml \
        --folds 0 [key.sub=value ...]

Reads ``data/siim/prepared/<size>/`` and ``data/siim/folds.csv`` (from ``competitions.siim.
prepare``) and writes ``models/siim/<name>/fold<k>/``: ``config.yaml``, ``checkpoints/``,
``final.pt``, ``log.csv``, ``curves.png``, ``oof/<ImageId>.png`` (uint8 probability maps at the
training size, hflip TTA), ``search.csv`` and ``search.png`` (the triplet grid),
``overlays.png`` and ``metrics.json``. A classifier writes ``oof.csv`` (ImageId, prob, has_mask).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from common.atomic import atomic_path, write_text_atomic
from common.config import Config, ConfigError, load_config, merge, save_config, to_config
from common.data import (
    NonEmptyRateSampler,
    SegmentationDataset,
    linear_rate,
    load_transforms,
    seed_worker,
)
from common.folds import read_folds
from common.images import read_mask, read_png, write_png
from common.inference import predict_batches, roc_auc
from common.losses import CombinedLoss
from common.models import build_model
from common.optim import Stepper, build_optimiser
from common.plots import mask_overlays
from common.postprocess import quantise, triplet
from common.threshold_search import search_triplets, search_triplets_from_stats
from common.training import Settings, Trainer

TRANSFORMS = Path(__file__).resolve().parent / "transforms"


def fold_frames(config: Config, fold: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The prepared folder and the (train, validation) rows of train.csv for ``fold``."""
    root = Path(config.data.prepared) / str(config.data.size)
    if not (root / "train.csv").is_file():
        raise ValueError(
            f"{root}/train.csv not found: run `make siim-prepare CONFIG=...` (or "
            f"`python -m competitions.siim.prepare --size {config.data.size}`) first"
        )
    table = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
    folds = read_folds(config.data.folds)
    table = table.merge(folds, on="ImageId", how="left", validate="one_to_one")
    if table["fold"].isna().any():
        missing = table.loc[table["fold"].isna(), "ImageId"].iloc[0]
        raise ValueError(f"{config.data.folds}: image {missing!r} has no fold; re-run prepare")
    if fold not in set(table["fold"]):
        raise ValueError(
            f"fold {fold} is not in {config.data.folds} (folds: {sorted(set(table.fold))})"
        )
    train, val = table[table["fold"] != fold], table[table["fold"] == fold]
    if config.data.positives_only:
        train = train[train["has_mask"] == 1]
    return root, train.reset_index(drop=True), val.reset_index(drop=True)


def _datasets_args(config: Config) -> dict:
    return {"size": config.data.size, "in_channels": config.data.in_channels}


def _loader_args(config: Config) -> dict:
    return {
        "num_workers": config.data.num_workers,
        "worker_init_fn": seed_worker,
        "pin_memory": torch.cuda.is_available(),
    }


def train_loader(config: Config, root: Path, train: pd.DataFrame, seed: int) -> DataLoader:
    """Augmented training batches, drawn by the non-empty rate schedule."""
    data = config.data
    name = data.transforms
    transform = None if name == "none" else load_transforms(TRANSFORMS / f"{name}.json", data.size)
    dataset = SegmentationDataset(
        train["ImageId"],
        root / "images",
        root / "masks",
        transform=transform,
        **_datasets_args(config),
    )
    rate = data.sample_rate
    schedule = {
        "none": None,
        "fixed": lambda epoch: rate.start,
        "linear": linear_rate(rate.start, rate.end, config.train.epochs),
    }
    if rate.kind not in schedule:
        raise ValueError(f"data.sample_rate.kind {rate.kind!r}; valid: {', '.join(schedule)}")
    sampler = NonEmptyRateSampler(
        train["has_mask"].to_numpy() > 0, schedule[rate.kind], epoch_size=rate.epoch_size, seed=seed
    )
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > data.batch_size,
        generator=torch.Generator().manual_seed(seed),
        **_loader_args(config),
    )


def eval_loader(config: Config, root: Path, frame: pd.DataFrame) -> DataLoader:
    """Un-augmented batches in table order."""
    dataset = SegmentationDataset(
        frame["ImageId"], root / "images", root / "masks", **_datasets_args(config)
    )
    return DataLoader(
        dataset, batch_size=config.data.val_batch_size, shuffle=False, **_loader_args(config)
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device {name!r}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries may draw from the legacy global RNG)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def train_part(config: Config, fold: int, out: Path, log=print) -> Trainer:
    """One training run (one part) of one fold into ``out``."""
    seed = config.seed + fold
    seed_everything(seed, config.train.deterministic)
    root, train, val = fold_frames(config, fold)
    loader, val_loader = train_loader(config, root, train, seed), eval_loader(config, root, val)
    model = build_model(
        task=config.model.task,
        arch=config.model.arch,
        encoder=config.model.encoder,
        in_channels=config.data.in_channels,
        cls_head=config.model.cls_head,
        weights=config.model.weights,
        params=config.model.params,
    )
    loss = CombinedLoss(
        list(config.loss.terms) if config.model.task == "segmentation" else [],
        cls_weight=config.loss.cls_weight,
        cls_loss=dict(config.loss.cls_loss) or None,
    )
    optimiser = build_optimiser(model, **config.optim)
    steps = len(loader) if not config.train.max_steps else config.train.max_steps
    steps = -(-min(steps, len(loader)) // config.train.accumulate)
    stepper = Stepper(optimiser, epochs=config.train.epochs, steps_per_epoch=steps, **config.sched)
    train_settings = {k: v for k, v in config.train.items() if k in Settings.__dataclass_fields__}
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    log(
        f"fold {fold}: {len(train)} train / {len(val)} validation images at {config.data.size}px, "
        f"{config.model.arch if config.model.task == 'segmentation' else 'classifier'}/"
        f"{config.model.encoder}, device {resolve_device(config.train.device)}"
    )
    trainer = Trainer(
        model,
        loss,
        optimiser,
        stepper,
        loader,
        val_loader,
        Settings(**train_settings),
        out,
        config=config.to_dict(),
        device=resolve_device(config.train.device),
        log=log,
    )
    trainer.summary = trainer.fit()
    return trainer


def part_configs(config: Config) -> list[Config]:
    """One config per part: the experiment itself, or it with each part's overrides applied;
    part N > 0 starts from part N-1's final weights (set in ``run_fold``)."""
    parts = list(config.train.parts)
    if not parts:
        return [config]
    schema = config.to_dict()
    configs = []
    for index, part in enumerate(parts):
        resolved = config.to_dict()
        resolved["train"]["parts"] = []
        if not isinstance(part, dict):
            raise ConfigError(f"train.parts[{index}] must be a mapping of overrides, got {part!r}")
        merge(resolved, part, schema, f"train.parts[{index}]")
        configs.append(to_config(resolved))
    return configs


def run_fold(config: Config, fold: int, log=print) -> dict:
    """Train (all parts), predict the fold's validation images, search, write metrics.json."""
    start = time.perf_counter()
    name = config.name
    fold_dir = Path(config.output) / name / f"fold{fold}"
    configs = part_configs(config)
    trainer = None
    for index, part in enumerate(configs):
        out = fold_dir if len(configs) == 1 else fold_dir / f"part{index}"
        if index > 0:
            previous = fold_dir / f"part{index - 1}" / "final.pt"
            part = to_config(
                part.to_dict() | {"model": part.model.to_dict() | {"weights": str(previous)}}
            )
        if len(configs) > 1:
            log(f"part {index + 1}/{len(configs)}")
        trainer = train_part(part, fold, out, log)
    if len(configs) > 1:
        final = fold_dir / "final.pt"
        with atomic_path(final) as tmp:
            tmp.write_bytes((out / "final.pt").read_bytes())
        save_config(config, fold_dir / "config.yaml")
    metrics = predict_oof(trainer, configs[-1], fold, fold_dir)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    metrics["epochs_run"] = sum(1 for _ in trainer.history)
    write_text_atomic(fold_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def predict_oof(trainer: Trainer, config: Config, fold: int, fold_dir: Path) -> dict:
    """Predict the validation images with TTA into oof/, then search thresholds on them."""
    root, _, val = fold_frames(config, fold)
    val_loader = eval_loader(config, root, val)
    tta = tuple(config.predict.tta)
    ids = val["ImageId"].tolist()
    batches = predict_batches(
        trainer.model,
        val_loader,
        device=trainer.device,
        tta=tta,
        amp=trainer.amp,
        channels_last=trainer.settings.channels_last,
    )
    if config.model.task == "classification":
        scores = np.concatenate([probs["label"] for _, probs in batches])
        frame = pd.DataFrame({"ImageId": ids, "prob": scores, "has_mask": val["has_mask"]})
        with atomic_path(fold_dir / "oof.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6f")
        labels = val["has_mask"].to_numpy() > 0
        return {
            "fold": fold,
            "n_images": len(ids),
            "auc": roc_auc(labels, scores),
            "accuracy": float(np.mean((scores > 0.5) == labels)),
            "tta": list(tta),
        }
    oof = fold_dir / "oof"

    def maps():
        index = 0
        for _, probs in batches:
            for prob in probs["mask"]:
                q = quantise(prob)
                write_png(oof / f"{ids[index]}.png", q)
                index += 1
                yield q

    truths = (read_mask(root / "masks" / f"{i}.png") for i in ids)
    result = search_triplets(maps(), truths)
    result.to_csv(fold_dir / "search.csv")
    result.heatmap(fold_dir / "search.png")
    dice_05 = search_triplets_from_stats(result.stats, [0.5], [0], [0.5]).best["dice"]
    best = result.best
    _overlays(config, root, val, oof, best, fold_dir / "overlays.png")
    return {
        "fold": fold,
        "n_images": len(ids),
        "oof_dice": best["dice"],
        "empty_dice": result.empty_dice,
        "dice_at_0.5": dice_05,
        "best_triplet": {k: best[k] for k in ("top", "min_area", "bottom")},
        "map_size": config.data.size,
        "tta": list(tta),
    }


def _overlays(config, root, val, oof, best, path) -> None:
    """Positives first (largest masks), then a few negatives, with the chosen triplet applied."""
    count = config.predict.overlays
    if count <= 0:
        return
    ordered = val.sort_values("mask_area", ascending=False)
    n_pos = min(count - count // 4, int((ordered["has_mask"] > 0).sum()))
    chosen = pd.concat([ordered.head(n_pos), ordered[ordered["has_mask"] == 0].head(count - n_pos)])
    panels = []
    for row in chosen.itertuples():
        q = read_png(oof / f"{row.ImageId}.png")
        pred = triplet(q, best["top"], int(best["min_area"]), best["bottom"])
        title = f"{row.ImageId[-12:]} area {row.mask_area}"
        panels.append(
            (
                title,
                read_png(root / "images" / f"{row.ImageId}.png"),
                read_mask(root / "masks" / f"{row.ImageId}.png"),
                pred,
            )
        )
    mask_overlays(panels, path)


def parse_folds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--folds {text!r}: expected comma-separated fold numbers, e.g. 0,1,2"
        ) from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML")
    parser.add_argument("--folds", default="0", help="comma-separated folds, e.g. 0,1,2,3,4")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if not config.name:
            config["name"] = Path(args.config).stem
        results = []
        for fold in parse_folds(args.folds):
            metrics = run_fold(config, fold)
            results.append(metrics)
            print(_report(config, metrics))
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"siim train: {error}")


def _report(config: Config, metrics: dict) -> str:
    if "oof_dice" in metrics:
        t = metrics["best_triplet"]
        return (
            f"fold {metrics['fold']} ({config.name}): OOF Dice {metrics['oof_dice']:.4f} at "
            f"top {t['top']:g} / min area {t['min_area']} / bottom {t['bottom']:g}; "
            f"all-empty baseline {metrics['empty_dice']:.4f}; Dice at 0.5 {metrics['dice_at_0.5']:.4f}; "
            f"{metrics['wall_seconds']:.0f}s -> {Path(config.output) / config.name}/fold{metrics['fold']}"
        )
    return f"fold {metrics['fold']} ({config.name}): AUC {metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}"


if __name__ == "__main__":
    main()
