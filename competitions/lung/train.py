"""Train lung folds, predict each fold's held-out cases, then score them and write the submission.

    python -m competitions.lung.train --config competitions/lung/configs/unet_resnet18_cpu.yaml \
        --folds 0 [--resume] [key.sub=value ...]

``--folds 0`` (``make lung-fold0``) trains on the odd-numbered cases and predicts the even ones;
``--folds 0,1`` (``make lung-folds``) predicts every case once, by the model that did not see it
(the SCR benchmark). Prepares ``data/lung/prepared/<size>/`` first when needed (from
``data/lung/raw/``, or the synthetic set), and writes ``models/lung/<name>/fold<k>/``:
``config.yaml``, ``checkpoints/``, ``final.pt``, ``log.csv``, ``curves.png`` (losses and
per-structure Dice), ``oof/<structure>/<case>.png`` and ``metrics.json``; then
``common.post.channel_evaluate`` over the folds trained.
"""

from __future__ import annotations

import time
from pathlib import Path

from common.config import Config, load_run_config
from common.data.crops import crop_spec
from common.infer.cascade import prepare_crops
from common.post.channel_evaluate import evaluate, predict_held_out
from common.train import distributed
from common.train.runner import fold_dir, part_configs, train_main
from common.train.runner import run_fold as common_run_fold
from competitions.lung.evaluate import CASES
from competitions.lung.loaders import make_loaders, tta_policy
from competitions.lung.prepare import prepare

CONFIGS = Path(__file__).resolve().parent / "configs"


def prepare_sizes(config: Config, folds: list[int] = (0, 1), *, skip_bad: bool = False) -> None:
    """Prepare the data at every size the experiment's parts train at. A refinement stage
    (``data.crop_stage``) prepares the whole images at its ``frame`` side, trains the first
    stage's missing folds (``configs/<run name>.yaml``), then cuts each fold's crops."""
    data = config.data
    spec = crop_spec(data)
    sizes = sorted({part.data.size for part in part_configs(config)})
    for size in [spec.frame] if spec else sizes:
        prepare(size, data.score_size, raw=data.raw, synthetic=data.synthetic,
                prepared=data.prepared, skip_bad=skip_bad)  # fmt: skip
    if spec is None:
        return
    train_first_stage(config, spec, folds)
    for part in part_configs(config):
        for fold in folds if spec.same_fold else [None]:
            prepare_crops(part.data, ["cases.csv", "test.csv"], fold=fold,
                          channels=list(part.data.structures))  # fmt: skip


def train_first_stage(config: Config, spec, folds: list[int]) -> None:
    """Train the folds of the crop stage's run that ``folds`` need and that have no
    ``final.pt`` yet, from ``competitions/lung/configs/<run name>.yaml`` on the same data."""
    run = Path(spec.run)
    needed = sorted({k for fold in folds for k in spec.stage_folds(fold)})
    missing = [k for k in needed if not (run / f"fold{k}" / "final.pt").is_file()]
    if not missing:
        return
    path = CONFIGS / f"{run.name}.yaml"
    if not path.is_file():
        raise ValueError(f"crop stage {run}: fold(s) {missing} not trained and no {path}")
    data = config.data
    first = load_run_config(path, [f"output={run.parent}", f"name={run.name}",
                                   f"data.raw={data.raw}", f"data.synthetic={data.synthetic}",
                                   f"data.prepared={data.prepared}"])  # fmt: skip
    prepare_sizes(first, missing)
    for fold in missing:
        print(f"crop stage: training {run.name} fold {fold} first")
        run_fold(first, fold)


def run_fold(config: Config, fold: int, *, resume: bool = False, log=print) -> dict | None:
    """Train one fold and predict its held-out cases; returns the fold's metrics (None on DDP
    ranks other than 0)."""
    structures = list(config.data.structures)
    tta_policy(structures).check(config.predict.tta, len(structures))  # fail before training

    def held_out(trainer, last: Config, fold: int, out: Path) -> dict:
        ids = predict_held_out(trainer.model, last, fold, CASES, device=trainer.device,
                               channels_last=trainer.settings.channels_last)  # fmt: skip
        final_row = trainer.history[-1] if trainer.history else {}
        validation = {k: v for k, v in final_row.items() if k.startswith(("dice_05", "jaccard_05"))}
        return {"fold": fold, "n_held_out": len(ids), "last_epoch_validation": validation}

    return common_run_fold(config, fold, make_loaders, held_out, channel_names=structures,
                           resume=resume, log=log)  # fmt: skip


def _run(config: Config, folds: list[int], args) -> None:
    start = time.perf_counter()
    if distributed.is_main():  # one process prepares; the others wait for its files
        prepare_sizes(config, folds, skip_bad=args.skip_bad)
    distributed.barrier()
    for fold in folds:
        metrics = run_fold(config, fold, resume=args.resume)
        if metrics is not None:
            print(f"fold {fold}: trained, {metrics['n_held_out']} held-out cases predicted; "
                  f"{metrics['wall_seconds']:.0f}s -> {fold_dir(config, fold)}")  # fmt: skip
    if distributed.is_main() and not args.no_evaluate:
        evaluate(config, folds, CASES)
        print(f"lung: {len(folds)} fold(s) in {time.perf_counter() - start:.0f}s wall time")


def main(argv=None) -> None:
    train_main(__doc__, argv, _run, label="lung train", folds_example="0,1", evaluate=True,
               skip_bad=True)  # fmt: skip


if __name__ == "__main__":
    main()
