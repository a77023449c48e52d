"""Train SIIM folds from a config, then predict each fold's validation images and search thresholds.

    python -m competitions.siim.train --config competitions/siim/configs/unet_resnet18_cpu.yaml \
        --folds 0 [--resume] [key.sub=value ...]
    torchrun --nproc_per_node=N -m competitions.siim.train --config ... (DDP: NCCL or gloo)

Reads ``data/siim/prepared/<size>/`` and ``data/siim/folds.csv`` (from ``competitions.siim.
prepare``) and writes ``models/siim/<name>/fold<k>/``: ``config.yaml``, ``checkpoints/``,
``final.pt``, ``log.csv``, ``curves.png``, ``oof/<ImageId>.png`` (uint8 probability maps at the
training size, hflip TTA), ``search.csv`` and ``search.png`` (the triplet grid),
``overlays.png`` and ``metrics.json``. A classifier writes ``oof.csv`` (ImageId, prob, has_mask).
``--resume`` continues each part from its ``last.pt`` and skips parts already finished
(``done.json``). Under DDP only rank 0 writes files and predicts the out-of-fold maps.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import distributed
from common.atomic import atomic_path, write_text_atomic
from common.checkpoints import load_checkpoint
from common.config import (
    Config,
    ConfigError,
    load_run_config,
    merge,
    save_config,
    to_config,
)
from common.losses import CombinedLoss
from common.models import build_model
from common.optim import Stepper, build_optimiser
from common.training import Settings, Trainer
from competitions.siim.loaders import eval_loader, fold_frames, train_loader
from competitions.siim.oof import predict_oof

DONE = "done.json"  # written once a part has its final.pt: a resumed run skips the part


def resolve_device(name: str) -> torch.device:
    ddp_device = distributed.start()
    if ddp_device is not None:
        return ddp_device
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


def train_part(config: Config, fold: int, out: Path, *, resume: bool = False, log=print) -> Trainer:
    """One training run (one part) of one fold into ``out``; with ``resume`` a finished part is
    only loaded, an unfinished one continues from its ``last.pt``."""
    device = resolve_device(config.train.device)
    seed = config.seed + fold
    seed_everything(seed, config.train.deterministic)
    root, train, val = fold_frames(config, fold)
    loader = train_loader(config, root, train, seed)
    val_loader = eval_loader(config, root, val, shard=True)
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
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    processes = f" x {distributed.world_size()} processes" if distributed.active() else ""
    log = log if distributed.is_main() else (lambda _: None)
    log(
        f"fold {fold}: {len(train)} train / {len(val)} validation images at {config.data.size}px, "
        f"{config.model.arch if config.model.task == 'segmentation' else 'classifier'}/"
        f"{config.model.encoder}, device {device}{processes}"
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
        device=device,
        log=log,
    )
    if resume and (out / DONE).is_file():
        trainer.model.load_state_dict(load_checkpoint(out / "final.pt")["model"])
        trainer.history = json.loads((out / DONE).read_text())["history"]
        log(f"resume: {out} is finished, loaded its final.pt")
        return trainer
    if distributed.is_main():
        (out / DONE).unlink(missing_ok=True)
    trainer.summary = trainer.fit(resume=resume)
    if distributed.is_main():
        write_text_atomic(out / DONE, json.dumps({"history": trainer.history}) + "\n")
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


def run_fold(config: Config, fold: int, *, resume: bool = False, log=print) -> dict | None:
    """Train (all parts), predict the fold's validation images, search, write metrics.json.
    Under DDP the ranks other than 0 return None after training."""
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
        trainer = train_part(part, fold, out, resume=resume, log=log)
    if not distributed.is_main():
        return None
    if len(configs) > 1:
        final = fold_dir / "final.pt"
        with atomic_path(final) as tmp:
            tmp.write_bytes((out / "final.pt").read_bytes())
        save_config(config, fold_dir / "config.yaml")
    metrics = predict_oof(trainer, configs[-1], fold, fold_dir)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    metrics["epochs_run"] = len(trainer.history)
    write_text_atomic(fold_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


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
    parser.add_argument(
        "--resume", action="store_true", help="continue from each part's last.pt after a kill"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        for fold in parse_folds(args.folds):
            metrics = run_fold(config, fold, resume=args.resume)
            if metrics is not None:
                print(_report(config, metrics))
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"siim train: {error}")
    finally:
        distributed.stop()


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
