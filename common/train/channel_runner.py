"""The train stage of a multi-channel image competition (``common.post.channel_evaluate``'s
``CaseSet``): prepare, train each fold, predict its held-out cases, then score the folds.

    python -m common.cli train --competition NAME --config <experiment YAML> --folds 0,1 \
        [--resume] [--skip-bad] [--no-evaluate] [key.sub=value ...]

The data is prepared first at every size the experiment's parts train at. A refinement stage
(``data.crop_stage``) prepares the whole images at its ``frame`` side, trains the first stage's
missing folds (``<configs>/<run name>.yaml`` of the competition, on the same data), then cuts
each fold's crops. Each fold writes ``<output>/<name>/fold<k>/``: ``config.yaml``,
``checkpoints/``, ``final.pt``, ``log.csv``, ``curves.png`` (losses and per-channel Dice),
``oof/<channel>/<case>.png`` and ``metrics.json``; then ``channel_evaluate.evaluate`` scores the
folds trained (cross-fitted thresholds, the held-out submission, the report).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from common.config import Config, load_run_config
from common.data.crops import crop_spec
from common.infer.cascade import prepare_crops
from common.post.channel_evaluate import CaseSet, evaluate, predict_held_out
from common.train import distributed
from common.train.runner import fold_dir, part_configs, train_main
from common.train.runner import run_fold as common_run_fold


def prepare_sizes(config: Config, cases: CaseSet, folds: Sequence[int] = (0, 1), *,
                  skip_bad: bool = False) -> None:  # fmt: skip
    """Prepare the data at every size the experiment's parts train at (``cases.prepare``), and
    for a refinement stage its first stage's missing folds and every fold's crops."""
    spec = crop_spec(config.data)
    sizes = sorted({part.data.size for part in part_configs(config)})
    for size in [spec.frame] if spec else sizes:
        cases.prepare(config, size, skip_bad)
    if spec is None:
        return
    train_first_stage(config, cases, spec, folds)
    for part in part_configs(config):
        for fold in folds if spec.same_fold else [None]:
            prepare_crops(part.data, list(cases.tables), fold=fold,
                          channels=list(part.data.structures))  # fmt: skip


def train_first_stage(config: Config, cases: CaseSet, spec, folds: Sequence[int]) -> None:
    """Train the folds of the crop stage's run that ``folds`` need and that have no
    ``final.pt`` yet, from ``<cases.configs>/<run name>.yaml`` on the same data."""
    run = Path(spec.run)
    needed = sorted({k for fold in folds for k in spec.stage_folds(fold)})
    missing = [k for k in needed if not (run / f"fold{k}" / "final.pt").is_file()]
    if not missing:
        return
    path = Path(cases.configs) / f"{run.name}.yaml"
    if not path.is_file():
        raise ValueError(f"crop stage {run}: fold(s) {missing} not trained and no {path}")
    data = config.data
    first = load_run_config(path, [f"output={run.parent}", f"name={run.name}",
                                   f"data.raw={data.raw}", f"data.synthetic={data.synthetic}",
                                   f"data.prepared={data.prepared}"])  # fmt: skip
    prepare_sizes(first, cases, missing)
    for fold in missing:
        print(f"crop stage: training {run.name} fold {fold} first")
        run_fold(first, fold, cases)


def run_fold(config: Config, fold: int, cases: CaseSet, *, resume: bool = False, log=print
             ) -> dict | None:  # fmt: skip
    """Train one fold and predict its held-out cases; returns the fold's metrics (None on DDP
    ranks other than 0)."""
    structures = list(config.data.structures)
    cases.policy(structures).check(config.predict.tta, len(structures))  # fail before training

    def held_out(trainer, last: Config, fold: int, out: Path) -> dict:
        ids = predict_held_out(trainer.model, last, fold, cases, device=trainer.device,
                               channels_last=trainer.settings.channels_last)  # fmt: skip
        final_row = trainer.history[-1] if trainer.history else {}
        validation = {k: v for k, v in final_row.items() if k.startswith(("dice_05", "jaccard_05"))}
        return {"fold": fold, "n_held_out": len(ids), "last_epoch_validation": validation}

    return common_run_fold(config, fold, cases.make_loaders, held_out, channel_names=structures,
                           resume=resume, log=log)  # fmt: skip


def train_fold(config: Config, fold: int, cases: CaseSet, log=print) -> None:
    """Prepare and train one fold (an ensemble's missing member)."""
    prepare_sizes(config, cases)
    run_fold(config, fold, cases, log=log)


def main(argv=None, *, competition) -> None:
    """The ``train`` stage: prepare, each fold of ``--folds``, then the evaluation."""
    cases = competition.data_spec()

    def run(config: Config, folds: list[int], args) -> None:
        start = time.perf_counter()
        if distributed.is_main():  # one process prepares; the others wait for its files
            prepare_sizes(config, cases, folds, skip_bad=args.skip_bad)
        distributed.barrier()
        for fold in folds:
            metrics = run_fold(config, fold, cases, resume=args.resume)
            if metrics is not None:
                print(f"fold {fold}: trained, {metrics['n_held_out']} held-out cases predicted; "
                      f"{metrics['wall_seconds']:.0f}s -> {fold_dir(config, fold)}")  # fmt: skip
        if distributed.is_main() and not args.no_evaluate:
            evaluate(config, folds, cases)
            print(f"{competition.name}: {len(folds)} fold(s) in "
                  f"{time.perf_counter() - start:.0f}s wall time")  # fmt: skip

    train_main(__doc__, argv, run, label=f"{competition.name} train", folds_example="0,1",
               evaluate=True, skip_bad=True)  # fmt: skip
