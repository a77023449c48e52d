"""What the TTA flip and the post-processing are worth, measured on trained lung folds.

    python -m experiments.lung_ablation --config competitions/lung/configs/unet_resnet18_cpu.yaml \
        --folds 0,1

Each fold's ``final.pt`` predicts its held-out cases twice (as is, and mirrored then flipped
back); the maps are combined three ways: no TTA, hflip with the left/right channels swapped back
(the lung policy), and hflip without the swap (what a generic pipeline would do). Each is scored
at the scoring size at threshold 0.5, with and without the per-structure post-processing, as
mean Jaccard per group (lungs, heart, clavicles). Writes ``models/lung/<name>/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.config import load_run_config
from common.data.loaders import eval_loader
from common.infer.inference import TtaPolicy, forward, tta_augment, tta_deaugment
from common.io.atomic import write_text_atomic
from common.post.channel_evaluate import final_mask, fold_dir, reference_mask
from common.post.metrics import jaccard_from_counts
from common.post.postprocess import binarize
from common.train.checkpoints import load_checkpoint
from common.train.runner import build_model_from, parse_folds, resolve_device
from competitions.lung.evaluate import GROUPS
from competitions.lung.loaders import items, read_cases, tta_policy

VARIANTS = ("none", "hflip_swapped", "hflip_not_swapped")


def _variants(model, x, policy: TtaPolicy, device, channels_last):
    """The three combinations, from one plain and one mirrored forward pass, through the same
    ``tta_augment`` / ``tta_deaugment`` that prediction uses."""
    with torch.no_grad():
        options = {"device": device, "amp": "none", "channels_last": channels_last}
        plain = torch.sigmoid(forward(model, x, **options)["mask"])
        mirrored = torch.sigmoid(forward(model, tta_augment(x, "hflip"), **options)["mask"])
    return {
        "none": plain,
        "hflip_swapped": (plain + tta_deaugment(mirrored, "hflip", policy)) / 2,
        "hflip_not_swapped": (plain + tta_deaugment(mirrored, "hflip")) / 2,
    }


def ablate(config, folds: list[int]) -> dict:
    device = resolve_device(config.train.device)
    structures = list(config.data.structures)
    policy = tta_policy(structures)
    size = config.data.score_size
    root, cases = read_cases(config)
    sums = {(v, post): np.zeros(len(structures)) for v in VARIANTS for post in (False, True)}
    count = 0
    for fold in folds:
        model = build_model_from(config, len(structures))
        model.load_state_dict(load_checkpoint(fold_dir(config, fold) / "final.pt")["model"])
        model.to(device).eval()
        held_out = cases[cases["fold"] == fold].reset_index(drop=True)
        ids = iter(held_out["case"].tolist())
        loader = eval_loader(config, items(config, root, held_out))
        for batch in tqdm(loader, desc=f"fold {fold}", disable=not sys.stderr.isatty()):
            maps = _variants(model, batch["image"], policy, device, config.train.channels_last)
            maps = {
                k: F.interpolate(v.float().cpu(), (size, size), mode="bilinear").numpy()
                for k, v in maps.items()
            }
            for row in range(len(batch["image"])):
                case = next(ids)
                truths = [reference_mask(root, s, case, size) for s in structures]
                for (variant, post), total in sums.items():
                    for c, structure in enumerate(structures):
                        prob = maps[variant][row, c]
                        pred = (
                            final_mask(config, prob, structure, 0.5)
                            if post
                            else binarize(prob, 0.5)
                        )
                        inter = np.count_nonzero(pred & truths[c])
                        total[c] += jaccard_from_counts(inter, pred.sum(), truths[c].sum())
                count += 1
    table = {}
    for (variant, post), total in sums.items():
        means = total / count
        label = f"{variant}{' + post-processing' if post else ''}"
        table[label] = {
            group: float(np.mean([means[structures.index(s)] for s in members if s in structures]))
            for group, members in GROUPS.items()
            if any(s in structures for s in members)
        }
    return {"folds": folds, "n_cases": count, "threshold": 0.5, "jaccard": table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
        report = ablate(config, parse_folds(args.folds))
    except ValueError as error:
        sys.exit(f"lung ablation: {error}")
    out = Path(config.output) / config.name / "ablation.json"
    write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    groups = next(iter(report["jaccard"].values())).keys()
    print(f"mean Jaccard over {report['n_cases']} held-out cases at threshold 0.5")
    print(f"{'':<40}" + "".join(f"{g:>11}" for g in groups))
    for label, values in report["jaccard"].items():
        print(f"{label:<40}" + "".join(f"{values[g]:>11.4f}" for g in groups))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
