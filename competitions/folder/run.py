"""The folder competition's stages: command lines over ``common.stages``.

python -m common.cli train --dataset FOLDER [--config auto] [--folds 0] [--skip-bad] [key=value ...]
python -m common.cli ensemble --dataset FOLDER [--config default] [key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.config import load_run_config
from common.infer.predict import final_config
from common.io.folder import scan
from common.io.paths import dist_dir, resolve
from common.stages import dataset_paths, evaluate_fold, folder_ensemble, plan_and_prepare, run_fold
from common.train.runner import add_skip_bad, parse_folds

CONFIGS = Path(__file__).resolve().parent / "configs"


def _parser(config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the dataset folder")
    parser.add_argument("--config", default=config, help="an experiment of configs/ (or a file)")
    parser.add_argument("--folds", default="0", help="comma-separated folds, e.g. 0,1,2,3,4")
    add_skip_bad(parser)
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (win over the plan)")
    return parser


def _file(config: str, folder: Path = CONFIGS) -> Path:
    return Path(config) if config.endswith(".yaml") else folder / f"{config}.yaml"


def _planned(argv, log=print):
    args = _parser("auto").parse_args(argv)
    folder = scan(args.dataset, skip_bad=args.skip_bad)
    config = plan_and_prepare(_file(args.config), folder, args.overrides, skip_bad=args.skip_bad,
                              log=log)  # fmt: skip
    return args, folder, config


def prepare(argv) -> None:
    _planned(argv)


def train(argv, log=print) -> list[dict]:
    args, folder, config = _planned(argv, log)
    results = []
    for fold in parse_folds(args.folds):
        m = run_fold(config, folder, fold, resume=args.resume, log=log)
        log(f"fold {fold} ({folder.name}/{config.name}): {m['metric']} {m['score']:.4f}; "
            f"all-empty baseline {m['empty_score']:.4f}; {m['wall_seconds']:.0f}s -> "
            f"{Path(config.output) / config.name}/fold{fold}")  # fmt: skip
        results.append(m)
    return results


def evaluate(argv, log=print) -> None:
    args = _parser("auto").parse_args(argv)
    folder = scan(args.dataset, skip_bad=args.skip_bad)
    name = Path(args.config).stem
    for fold in parse_folds(args.folds):
        config = final_config(resolve(f"models/{folder.name}"), name, fold)
        m = evaluate_fold(config, folder, fold, log=log)
        log(f"fold {fold}: {m['metric']} {m['score']:.4f} (all-empty {m['empty_score']:.4f})")


def _ensemble_config(args, folder):
    path = _file(args.config, CONFIGS / "ensembles")
    return load_run_config(path, [*dataset_paths(folder.name)[:2], f"metric={folder.spec.metric}",
                                  *args.overrides])  # fmt: skip


def bundle(argv) -> None:
    """``kaggle.build`` of the folder's ensemble; the notebook reads the dataset (``--slug``)."""
    from common.submit import kaggle

    parser = _parser("default")
    parser.add_argument("--owner", default="your-kaggle-username")
    parser.add_argument("--slug", default=None, help="the Kaggle dataset holding the folder")
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args(argv)
    folder = scan(args.dataset, skip_bad=args.skip_bad)
    slug = args.slug or f"{args.owner}/{folder.name}"
    spec = kaggle.BundleSpec(package="folder", title=folder.name, input_slug=slug.split("/")[-1],
                             datasets=(slug,))  # fmt: skip
    out = dist_dir() / "kaggle"
    kaggle.build(
        _ensemble_config(args, folder), out, args.owner, spec=spec, wheels=not args.no_wheels
    )


def ensemble(argv, log=print) -> dict:
    args = _parser("default").parse_args(argv)
    folder = scan(args.dataset, skip_bad=args.skip_bad)
    config = _ensemble_config(args, folder)

    def train_one(experiment: Path, fold: int) -> None:
        train(["--dataset", str(folder.root), "--config", str(experiment), "--folds", str(fold)]
              + (["--skip-bad"] if args.skip_bad else []), log)  # fmt: skip

    report = folder_ensemble(config, folder, train_one, args.overrides, log=log)
    line = (
        f"ensemble {folder.name}/{config.name}: OOF {folder.spec.metric} {report['oof_dice']:.4f}"
    )
    line += f" (all-empty {report['oof_empty_dice']:.4f})"
    if "test_score" in report:
        line += f"; test {report['test_score']:.4f} (all-empty {report['test_empty_score']:.4f})"
    log(f"{line} -> {report['csv']} (validated)")
    return report


def leaderboard(argv) -> None:
    from common.submit.leaderboard import main

    i = argv.index("--dataset")
    main(["--competition", scan(argv[i + 1]).name, *argv[:i], *argv[i + 2 :]])
