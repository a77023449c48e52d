"""One fold's training run from a config, shared by every competition: device and seeds, the
model, loss, optimiser and schedule from the config, the ``Trainer``, multi-part runs (part N
starts from part N-1's final weights) and resume.

A competition supplies only its data loaders (``make_loaders(config, fold, seed)`` returns the
training and validation loaders) and, for a multi-label task, its mask channel names.

    models/<competition>/<name>/fold<k>/            one part: config.yaml, checkpoints/, final.pt,
                                                    last.pt, log.csv, curves.png, done.json
    models/<competition>/<name>/fold<k>/part<i>/    the same per part; fold<k>/final.pt is the
                                                    last part's
    models/<competition>/<name>/fold<k>/error.json  the error when training raised (removed when
                                                    the fold starts again)
    models/<competition>/<name>/fold<k>/metrics.json  the competition's figures; ``write_fold_score``
                                                    adds ``score``, ``metric`` and ``thresholds``
                                                    (read by ``common.submit.leaderboard``)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from common.config import Config, ConfigError, load_run_config, merge, save_config, to_config
from common.data.datasets import check_preprocess
from common.data.mixing import batch_mix
from common.infer.predict import FINAL_CONFIG
from common.io.atomic import atomic_path, os_error_line, remove_stale_temps, write_text_atomic
from common.io.locks import exclusive
from common.train import distributed
from common.train.checkpoints import load_checkpoint
from common.train.losses import CombinedLoss
from common.train.models import build_model
from common.train.optim import Stepper, build_optimiser
from common.train.training import Settings, Trainer

DONE = "done.json"  # written once a part has its final.pt: a resumed run skips the part
ERROR = "error.json"  # written when a fold's training raises
METRICS = "metrics.json"

T = TypeVar("T")
LoaderFactory = Callable[[Config, int, int], tuple]  # (config, fold, seed) -> (train, validation)


def resolve_device(name: str) -> torch.device:
    """The device named by ``train.device`` (auto | cpu | cuda | cuda:N); under ``torchrun``
    the process group's device."""
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


def build_model_from(config: Config, classes: int = 1) -> torch.nn.Module:
    """The config's model (``model.*``, ``data.in_channels``) with ``classes`` mask channels."""
    return build_model(
        task=config.model.task,
        arch=config.model.arch,
        encoder=config.model.encoder,
        in_channels=config.data.in_channels,
        cls_head=config.model.cls_head,
        classes=classes,
        weights=config.model.weights,
        params=config.model.params,
    )


def train_part(
    config: Config,
    fold: int,
    out: Path,
    make_loaders: LoaderFactory,
    *,
    channel_names: Sequence[str] | None = None,
    resume: bool = False,
    log=print,
) -> Trainer:
    """One training run (one part) of one fold into ``out``; with ``resume`` a finished part is
    only loaded, an unfinished one continues from its ``last.pt``."""
    device = resolve_device(config.train.device)
    seed = config.seed + fold
    seed_everything(seed, config.train.deterministic)
    loader, val_loader = make_loaders(config, fold, seed)
    classes = len(channel_names) if channel_names else 1
    model = build_model_from(config, classes)
    loss_config = config.loss
    loss = CombinedLoss(
        list(loss_config.terms) if config.model.task == "segmentation" else [],
        cls_weight=loss_config.cls_weight,
        cls_loss=dict(loss_config.cls_loss) or None,
        channel_weights=list(loss_config.get("channel_weights") or []) or None,
        learned_weights=bool(loss_config.get("learned_weights")),
    )
    optimiser = build_optimiser(model, **config.optim)
    if any(True for _ in loss.parameters()):  # learned loss weights: no weight decay
        optimiser.add_param_group({"params": list(loss.parameters()), "lr": config.optim.lr,
                                   "weight_decay": 0.0, "name": "loss"})  # fmt: skip
    steps = len(loader) if not config.train.max_steps else config.train.max_steps
    steps = -(-min(steps, len(loader)) // config.train.accumulate)
    stepper = Stepper(optimiser, epochs=config.train.epochs, steps_per_epoch=steps, **config.sched)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    processes = f" x {distributed.world_size()} processes" if distributed.active() else ""
    log = log if distributed.is_main() else (lambda _: None)
    what = config.model.arch if config.model.task == "segmentation" else "classifier"
    log(
        f"fold {fold}: {len(loader.dataset)} train / {len(val_loader.dataset)} validation images "
        f"at {config.data.size}px, {what}/{config.model.encoder}, device {device}{processes}"
    )
    trainer = Trainer(
        model,
        loss,
        optimiser,
        stepper,
        loader,
        val_loader,
        Settings(**config.train),
        out,
        config=config.to_dict(),
        device=device,
        log=log,
        channel_names=list(channel_names) if channel_names else None,
        mix=batch_mix(config.data),
        seed=seed,
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
    part N > 0 starts from part N-1's final weights (set in ``train_fold``)."""
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


def check_run_config(config: Config) -> Config:
    """Fail before any work on a value only the trainer or a loader would otherwise reject
    (``train.amp``, ``train.epochs``, ``data.preprocess`` ...), in every part; returns ``config``.
    The train entry points call it right after loading the config, before preparing data."""
    for part in part_configs(config):
        Settings(**part.train)
        check_preprocess(part.data.get("preprocess"))
    return config


def train_fold(
    config: Config,
    fold: int,
    fold_dir: Path,
    make_loaders: LoaderFactory,
    *,
    channel_names: Sequence[str] | None = None,
    resume: bool = False,
    log=print,
) -> tuple[Trainer, Config]:
    """Every part of one fold; returns the last part's trainer (its model holds the fold's final
    weights) and config. ``fold_dir/final.pt`` is the fold's model whatever the part count."""
    if distributed.is_main():
        (fold_dir / ERROR).unlink(missing_ok=True)
    try:
        return _train_parts(config, fold, fold_dir, make_loaders, channel_names, resume, log)
    except BaseException as error:  # interrupted or failed: the leaderboard shows it as crashed
        if distributed.is_main() and fold_dir.is_dir():  # not for a run that never started
            text = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
            write_text_atomic(fold_dir / ERROR, json.dumps({"error": text}) + "\n")
        raise


def _train_parts(config, fold, fold_dir, make_loaders, channel_names, resume, log):
    configs = part_configs(config)
    trainer = None
    out = fold_dir
    for index, part in enumerate(configs):
        out = fold_dir if len(configs) == 1 else fold_dir / f"part{index}"
        if index > 0:
            previous = fold_dir / f"part{index - 1}" / "final.pt"
            part = to_config(
                part.to_dict() | {"model": part.model.to_dict() | {"weights": str(previous)}}
            )
        if len(configs) > 1:
            log(f"part {index + 1}/{len(configs)}")
        trainer = train_part(
            part, fold, out, make_loaders, channel_names=channel_names, resume=resume, log=log
        )
    if len(configs) > 1 and distributed.is_main():
        with atomic_path(fold_dir / "final.pt") as tmp:
            tmp.write_bytes((out / "final.pt").read_bytes())
        save_config(config, fold_dir / "config.yaml")
    if distributed.is_main():  # final.pt's own config, read by later stages without the weights
        save_config(to_config(trainer.config), fold_dir / FINAL_CONFIG)
    return trainer, configs[-1]


def fold_dir(config: Config, fold: int) -> Path:
    """``<output>/<name>/fold<k>/``: where a run's fold lives."""
    return Path(config.output) / config.name / f"fold{fold}"


HeldOut = Callable[[Trainer, Config, int, Path], dict]  # (trainer, last part, fold, fold dir)


def run_fold(
    config: Config,
    fold: int,
    make_loaders: LoaderFactory,
    held_out: HeldOut,
    *,
    channel_names: Sequence[str] | None = None,
    resume: bool = False,
    log=print,
) -> dict | None:
    """One fold, the same for every competition: every part trained (``train_fold``), then, on
    the main rank, ``held_out(trainer, last part's config, fold, fold dir)`` predicts (and
    scores) the held-out items and returns its figures; ``wall_seconds`` and ``epochs_run`` are
    added and the whole written to ``metrics.json``. Other DDP ranks return None."""
    start = time.perf_counter()
    out = fold_dir(config, fold)
    lock = (exclusive(out.parent / f".{out.name}.lock", f"training of {config.name} fold {fold}")
            if distributed.is_main() else contextlib.nullcontext())  # fmt: skip
    with lock:  # one writer per fold: a second run of it stops with one line
        if distributed.is_main():
            remove_stale_temps(out)  # what a killed run of this fold was writing
        return _run_fold(config, fold, out, make_loaders, held_out, channel_names, resume, log,
                         start)  # fmt: skip


def _run_fold(config, fold, out, make_loaders, held_out, channel_names, resume, log, start):
    trainer, last = train_fold(config, fold, out, make_loaders, channel_names=channel_names,
                               resume=resume, log=log)  # fmt: skip
    if not distributed.is_main():
        return None
    metrics = held_out(trainer, last, fold, out)
    metrics |= {"wall_seconds": round(time.perf_counter() - start, 1),
                "epochs_run": len(trainer.history)}  # fmt: skip
    write_text_atomic(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    return metrics


def train_main(doc: str, argv, run: Callable, *, label: str, folds_example: str = "0,1,2,3,4",
               evaluate: bool = False, skip_bad: bool = False) -> None:  # fmt: skip
    """A competition's train entry point: ``--config``, ``--folds``, ``--resume``, overrides
    (and ``--no-evaluate`` with ``evaluate``); DDP started first, the config checked before any
    work, then ``run(config, folds, args)``; a config or data error exits with one line
    ``label: error``."""
    parser = train_parser(doc, folds_example)
    if evaluate:
        parser.add_argument("--no-evaluate", action="store_true", help="train and predict only")
    if skip_bad:  # the data is prepared first
        add_skip_bad(parser)
    args = parser.parse_args(argv)
    try:
        distributed.start()  # before anything asks which rank is the main one
        config = check_run_config(load_run_config(args.config, args.overrides))
        run(config, parse_folds(args.folds), args)
    except (ValueError, FloatingPointError) as error:
        sys.exit(f"{label}: {error}")
    except OSError as error:  # a full disk, a read-only folder: one line naming the path
        sys.exit(f"{label}: {os_error_line(error)}")
    finally:
        distributed.stop()


def write_fold_score(
    fold_dir: Path, *, metric: str, score: float, thresholds: dict | None = None, **extra
) -> dict:
    """Add the fold's headline figure (``score``, the ``metric`` it is, the ``thresholds`` that
    gave it, and ``extra`` keys) to its ``metrics.json``, atomically; returns the whole file."""
    path = Path(fold_dir) / METRICS
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics |= {"metric": metric, "score": float(score), "thresholds": thresholds} | extra
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def parse_folds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--folds {text!r}: expected comma-separated fold numbers, e.g. 0,1,2"
        ) from None


def config_parser(doc: str, what: str = "experiment YAML") -> argparse.ArgumentParser:
    """The command line of an entry point that reads one config: ``--config`` and
    ``key.sub=value`` overrides (positional, added last by the caller's ``parse_args``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--config", required=True, help=what)
    return parser


def config_main(doc: str, argv, run: Callable[..., T], *, label: str,
                what: str = "experiment YAML", skip_bad: bool = False) -> T:  # fmt: skip
    """An entry point that reads one config: ``--config`` and overrides parsed, the config
    loaded and given to ``run``; a config or data error exits with one line ``label: error``.
    With ``skip_bad`` the command line takes ``--skip-bad`` (or ``SKIP_BAD=1`` in the
    environment), given to ``run`` as its second argument: a prepare stage leaves unreadable
    items out instead of stopping."""
    from common.config import load_run_config

    parser = config_parser(doc, what)
    if skip_bad:
        add_skip_bad(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        return run(config, args.skip_bad) if skip_bad else run(config)
    except (ValueError, FloatingPointError, FileNotFoundError) as error:
        sys.exit(f"{label}: {error}")
    except OSError as error:  # a full disk, a read-only folder: one line naming the path
        sys.exit(f"{label}: {os_error_line(error)}")


def add_skip_bad(parser: argparse.ArgumentParser) -> None:
    """``--skip-bad``, on by default when ``SKIP_BAD`` is set to a non-empty value but 0."""
    parser.add_argument("--skip-bad", action="store_true",
                        default=os.environ.get("SKIP_BAD", "") not in ("", "0"),
                        help="leave unreadable items out (listed in bad_ids.csv) instead of stopping")  # fmt: skip


def train_parser(doc: str, folds_example: str = "0,1,2,3,4") -> argparse.ArgumentParser:
    """The command line every competition's train entry point shares: ``--config``,
    ``--folds``, ``--resume`` and ``key.sub=value`` overrides."""
    parser = config_parser(doc)
    parser.add_argument("--folds", default="0", help=f"comma-separated folds, e.g. {folds_example}")
    parser.add_argument(
        "--resume", action="store_true", help="continue from each part's last.pt after a kill"
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return parser
