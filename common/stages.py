"""Every stage of a dataset-folder competition (``common.io.folder``), with no code of its own:
prepare (fingerprint, plan, the cache at the planned size, folds), a fold's run (train, the
out-of-fold search at the native size, overlays, ``metrics.json``), and the ensemble's data.

    data/<name>/prepared/native/items.csv   the fingerprint: one row per training image
    data/<name>/prepared/<size>/            images/<id>.png (train and test) and masks/<id>.png or
                                            masks/<class>/<id>.png at the training size; train.csv
                                            (id, height, width, has_mask, mask_area), test.csv
    data/<name>/folds.csv                   ImageId, fold (stratified by mask area)
    models/<name>/<run>/plan.md, plan.yaml  the fingerprint and the plan, printed before training
    models/<name>/<run>/fold<k>/            the run (common.train.runner), oof/ maps at the native size,
                                            thresholds.yaml, search.csv/png, overlays.png and
                                            metrics.json (score, metric, empty_score)
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

from common.config import COMMON_CONFIGS, Config, load_config, save_config, to_config
from common.data.folds import ensure_folds, read_folds
from common.data.frames import frame_loaders
from common.data.plan import fingerprint, make_plan, plan_overrides, plan_table
from common.infer.inference import cpu_has_bf16
from common.infer.predict import final_config
from common.io.atomic import write_text_atomic
from common.io.cache import Entry, Table, bad_report, refresh, source_key
from common.io.folder import DatasetFolder, read_image
from common.io.images import read_png, resize_image, resize_mask, write_mask, write_png
from common.io.rle import rle_encode, siim_rle_encode
from common.io.rle_csv import read_table
from common.plots import mask_overlays
from common.post.metrics import dice_per_image, jaccard_per_image
from common.post.postprocess import triplet
from common.submit.ensemble import EnsembleTask, Member, channel_thresholds, map_path, search_oof
from common.submit.submission import SubmissionFormat, validate_submission
from common.train.runner import fold_dir, resolve_device, write_fold_score
from common.train.runner import run_fold as common_run_fold

VERSION = 1  # bump when the prepared files change, to redo every cached item
TRANSFORMS = COMMON_CONFIGS / "transforms"
ITEMS = Table("items.csv", ("id", "height", "width", "channels", "p01", "p99", "mean", "objects",
                            "median_object", "has_mask", "mask_area"))  # fmt: skip
TRAIN = Table("train.csv", ("id", "height", "width", "has_mask", "mask_area"))
TEST = Table("test.csv", ("id", "height", "width"))


def dataset_paths(name: str) -> list[str]:
    """Where a dataset's files go (under the workspace): overrides of the folder base config."""
    return [f"output=models/{name}", f"submissions=submissions/{name}",
            f"data.prepared=data/{name}/prepared", f"data.folds=data/{name}/folds.csv"]  # fmt: skip


def _one_item(folder: DatasetFolder, image_id: str) -> DatasetFolder:
    """The folder reduced to what one worker needs (small to pickle)."""
    rles = {image_id: folder.rles[image_id]} if image_id in folder.rles else {}
    return dataclasses.replace(folder, train={}, test={}, rles=rles)


def _entries(folder: DatasetFolder, *parts, tests: bool = True) -> list[Entry]:
    entries = []
    for table, images in (("train", folder.train), ("test", folder.test if tests else {})):
        for image_id, path in images.items():
            masks = folder.mask_files(image_id) if table == "train" else []
            rows = folder.rles.get(image_id, ())
            key = source_key(VERSION, [path, *masks], rows, folder.classes, *parts)
            source = (table, path, _one_item(folder, image_id))
            entries.append(Entry(image_id, f"{table}.csv", key, (), source))
    return entries


def _fingerprint_one(entry: Entry, out: Path) -> dict:
    _, path, folder = entry.source
    image = read_image(path)
    masks = folder.read_masks(entry.id, image.shape[:2])
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    areas = []
    for mask in masks:
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas += stats[1:n, cv2.CC_STAT_AREA].tolist()
    row = {"id": entry.id, "height": image.shape[0], "width": image.shape[1],
           "channels": 1 if image.ndim == 2 else 3, "p01": float(np.percentile(grey, 1)),
           "p99": float(np.percentile(grey, 99)), "mean": float(grey.mean()),
           "objects": len(areas), "median_object": float(np.median(areas)) if areas else 0.0,
           "has_mask": int(masks.any()), "mask_area": int(masks.any(axis=0).sum())}  # fmt: skip
    return row | {f"area_{c}": int(m.sum()) for c, m in zip(folder.classes, masks, strict=True)}


def _prepare_one(entry: Entry, out: Path, size: int) -> dict:
    table, path, folder = entry.source
    image = read_image(path)
    row = {"id": entry.id, "height": image.shape[0], "width": image.shape[1]}
    if table == "train":
        masks = folder.read_masks(entry.id, image.shape[:2])
        for name, mask in zip(folder.classes, masks, strict=True):
            where = "masks" if len(masks) == 1 else f"masks/{name}"
            write_mask(out / where / f"{entry.id}.png", resize_mask(mask, size))
        row |= {"has_mask": int(masks.any()), "mask_area": int(masks.any(axis=0).sum())}
    write_png(out / "images" / f"{entry.id}.png", resize_image(image, size))
    return row


def _refresh(out: Path, tables, entries, work, *, skip_bad: bool, desc: str, log) -> dict:
    result = refresh(out, tables, entries, work, desc=desc, skip_bad=skip_bad)
    if result.bad:
        log(bad_report(result.bad) + f"\nskip_bad: left {len(result.bad)} item(s) out")
    return result.tables


def fingerprint_folder(folder: DatasetFolder, prepared: Path, *, skip_bad: bool, log=print):
    """The fingerprint table of the training images (cached) and its summary."""
    table = Table(ITEMS.name, ITEMS.columns + tuple(f"area_{c}" for c in folder.classes))
    entries = _entries(folder, "fingerprint", tests=False)
    entries = [dataclasses.replace(e, table=table.name) for e in entries]
    tables = _refresh(prepared / "native", [table], entries, _fingerprint_one,
                      skip_bad=skip_bad, desc="fingerprint", log=log)  # fmt: skip
    return tables[table.name], fingerprint(tables[table.name], folder.classes)


def folder_config(base: Path, folder: DatasetFolder, overrides=(), *, skip_bad=False,
                  log=print) -> tuple[Config, str]:  # fmt: skip
    """The run's config: ``base`` (the folder competition's experiment), the dataset's paths,
    the plan from its fingerprint, then ``overrides`` (which win); and the plan as a table."""
    fixed = [f"data.dataset={folder.root}", *dataset_paths(folder.name),
             f"data.classes={json.dumps(list(folder.classes))}",
             f"data.codes={json.dumps(list(folder.codes))}"]  # fmt: skip
    first = load_config(base, [*fixed, *overrides])
    _, summary = fingerprint_folder(folder, Path(first.data.prepared), skip_bad=skip_bad, log=log)
    gpu = resolve_device(first.train.device).type == "cuda"
    n_val = round(len(folder.train) / first.data.n_folds)
    throughput, memory = first.plan.throughput, []
    if not throughput:  # the faster memory format, measured: channels-last pays more on a GPU
        rates = {cl: measure_throughput(load_config(base, [*fixed, *overrides,
                                                           f"train.channels_last={str(cl).lower()}"]))
                 for cl in (False, True)}  # fmt: skip
        best = max(rates, key=rates.get)
        throughput = rates[best]
        memory = [("train.channels_last", best, f"{rates[True]:.2f} img/s channels-last against "
                   f"{rates[False]:.2f} contiguous, measured here")]  # fmt: skip
    plan = make_plan(summary, n_train=len(folder.train) - n_val, n_val=n_val, gpu=gpu,
                     throughput=throughput, minutes=first.plan.minutes,
                     orientation_sensitive=folder.spec.orientation_sensitive,
                     random_init=not first.model.weights) + memory  # fmt: skip
    if not gpu and not cpu_has_bf16():
        plan.append(("train.amp", "none", "this CPU has no native bfloat16: float32"))
    config = load_config(base, [*fixed, *plan_overrides(plan), *overrides])
    if not config.name:
        config["name"] = Path(base).stem
    effective = {key: _get(config, key) for key, _, _ in plan}
    return config, plan_table(summary, plan, effective)


def measure_throughput(config: Config, side: int = 256, batch: int = 8, steps: int = 3) -> float:
    """Training images of ``side``^2 a second for the config's model, amp and channels-last
    on this machine: ``steps`` timed steps after one warm-up (about 10 s on a 2-core CPU)."""
    import torch

    from common.infer.inference import autocast, effective_amp
    from common.train.runner import build_model_from, resolve_device

    device = resolve_device(config.train.device)
    model = build_model_from(config, max(1, len(config.data.get("classes", ())))).to(device).train()
    x = torch.randn(batch, config.data.in_channels, side, side, device=device)
    if config.train.channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-6)
    amp = effective_amp(device, config.train.amp)
    for step in range(steps + 1):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimiser.zero_grad()
        with autocast(device, amp):
            output = model(x)
        (output["mask"] if isinstance(output, dict) else output).float().mean().backward()
        optimiser.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def _get(config: Config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config.to_dict() if isinstance(config, Config) else config


def prepare_folder(config: Config, folder: DatasetFolder, *, skip_bad=False, log=print) -> Path:
    """The prepared cache at ``data.size`` (train and test images, masks) and the folds (none
    for a folder of test images only: an offline notebook's); returns the cache folder."""
    out = Path(config.data.prepared) / str(config.data.size)
    size = config.data.size
    tables = _refresh(out, [TRAIN, TEST], _entries(folder, size), partial(_prepare_one, size=size),
                      skip_bad=skip_bad, desc=f"prepare {size}px", log=log)  # fmt: skip
    if not folder.train:
        return out
    train = tables["train.csv"]
    log(ensure_folds(train["id"], train["mask_area"], config.data.folds, config.data.n_folds,
                     config.data.fold_seed))  # fmt: skip
    return out


def _training_table(config: Config) -> tuple[Path, pd.DataFrame]:
    """The prepared folder and its train.csv with each image's fold from ``data.folds``."""
    root = Path(config.data.prepared) / str(config.data.size)
    table = pd.read_csv(root / "train.csv", dtype={"id": str})
    folds = read_folds(config.data.folds).rename(columns={"ImageId": "id"})
    return root, table.merge(folds, on="id", how="left", validate="one_to_one")


def make_loaders(config: Config, fold: int, seed: int):
    """The fold's training and validation loaders over the prepared cache."""
    return frame_loaders(config, fold, seed, transforms=TRANSFORMS)


def ensemble_schema(overrides: dict) -> Config:
    """The generic ensemble config with ``overrides`` (e.g. for one fold's own search)."""
    config = yaml.safe_load((COMMON_CONFIGS / "ensemble.yaml").read_text())
    return to_config(config | overrides)


def oof_task(config: Config, folder: DatasetFolder, fold: int | None = None) -> EnsembleTask:
    """The training items (native sizes, folds) with their truth read from the folder."""
    _, train = _training_table(config)
    if fold is not None:
        train = train[train["fold"] == fold]
    return EnsembleTask(channels=tuple(config.data.classes), test=train.iloc[:0], encode=None,
                        header=(), train=train, truth=folder.read_masks)  # fmt: skip


def evaluate_fold(config: Config, folder: DatasetFolder, fold: int, *, log=print) -> dict:
    """The fold's held-out images predicted at their native size (TTA ``predict.tta``), the
    post-processing searched on them (``search``), overlays; adds the score to metrics.json."""
    out = fold_dir(config, fold)
    ensemble = ensemble_schema({"output": config.output, "tta": list(config.predict.tta),
                                "search": dict(config.search), "metric": folder.spec.metric,
                                "batch_size": config.data.val_batch_size})  # fmt: skip
    members = [Member(config.name, (fold,), 1.0)]
    task = oof_task(config, folder, fold)
    found = search_oof(ensemble, task, members, [], out, log)
    _overlays(config, folder, task, found, out, log)
    metric = folder.spec.metric
    kind = "searched triplet" if len(task.channels) == 1 else "per-class thresholds"
    extra = {"empty_score": found["empty_dice"], "n_images": found["n_images"], "fold": fold}
    if len(task.channels) > 1:
        extra["per_class"] = {c: v["oof_dice"] for c, v in found["channels"].items()}
    return write_fold_score(out, metric=f"OOF {metric.capitalize()} (mean per image, {kind})",
                            score=found["oof_dice"], thresholds=found, **extra)  # fmt: skip


def _overlays(config, folder, task, thresholds, fold_dir, log) -> None:
    count = config.predict.overlays
    ordered = task.train.sort_values("mask_area", ascending=False)
    n_pos = min(count - count // 4, int((ordered["has_mask"] > 0).sum()))
    chosen = pd.concat([ordered.head(n_pos), ordered[ordered["has_mask"] == 0].head(count - n_pos)])
    panels = []
    for row in chosen.itertuples():
        shape = (int(row.height), int(row.width))
        maps = [read_png(map_path(fold_dir / "oof", c, row.id, len(task.channels)), shape)
                for c in task.channels]  # fmt: skip
        t = channel_thresholds(thresholds, task.channels)
        pred = np.stack(
            [triplet(m, x["top"], x["min_area"], x["bottom"]) for m, x in zip(maps, t, strict=True)]
        )
        truth = folder.read_masks(row.id, shape)
        image = read_image(folder.train[row.id])
        squeeze = (lambda m: m[0]) if len(maps) == 1 else (lambda m: m)
        panels.append(
            (f"{row.id[-14:]} area {row.mask_area}", image, squeeze(truth), squeeze(pred))
        )
    mask_overlays(panels, fold_dir / "overlays.png")


def run_fold(config: Config, folder: DatasetFolder, fold: int, *, resume=False, log=print) -> dict:
    """Train one fold, then evaluate it (``evaluate_fold``); returns its metrics."""
    channels = list(config.data.classes) if len(config.data.classes) > 1 else None

    def held_out(trainer, last: Config, k: int, out: Path) -> dict:
        return evaluate_fold(last, folder, k, log=log)

    return common_run_fold(config, fold, make_loaders, held_out, channel_names=channels,
                           resume=resume, log=log)  # fmt: skip


def plan_and_prepare(base: Path, folder: DatasetFolder, overrides=(), *, skip_bad=False,
                     log=print) -> Config:  # fmt: skip
    """``folder_config`` (the plan printed and saved beside the run), then ``prepare_folder``."""
    config, table = folder_config(base, folder, overrides, skip_bad=skip_bad, log=log)
    log(f"dataset {folder.name}: {len(folder.train)} train / {len(folder.test)} test images, "
        f"{folder.layout} masks, classes {list(folder.classes)}\n{table}")  # fmt: skip
    log(f"plan saved: {write_plan(config, table)}")
    prepare_folder(config, folder, skip_bad=skip_bad, log=log)
    return config


def write_plan(config: Config, table: str) -> Path:
    run = Path(config.output) / config.name
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "plan.md", table + "\n")
    save_config(config, run / "plan.yaml")
    return run / "plan.md"


def submission_format(folder: DatasetFolder) -> SubmissionFormat:
    """The sample submission's columns and empty marker, else ``ImageId,EncodedPixels`` (one
    class) or ``ImageId,ClassId,EncodedPixels`` (several), empty as the RLE form writes it."""
    spec = folder.spec
    if folder.sample is not None:
        sample = read_table(folder.sample, nrows=1000)
        columns = [c.strip() for c in sample.columns]
        values = set(sample.iloc[:, -1].str.strip())
        empty = "-1" if values == {"-1"} or spec.rle == "relative" else ""
        return SubmissionFormat(columns[0], columns[-1], empty, spec.decode, tuple(columns[1:-1]))
    keys = ("ClassId",) if len(folder.classes) > 1 else ()
    return SubmissionFormat("ImageId", "EncodedPixels", spec.empty, spec.decode, keys)


def encode(folder: DatasetFolder, fmt: SubmissionFormat, image_id: str, masks) -> list[tuple]:
    """The submission rows of one test image's (C, H, W) masks."""
    spec = folder.spec

    def one(mask) -> str:
        if not mask.any():
            return fmt.empty
        return siim_rle_encode(mask) if spec.rle == "relative" else rle_encode(mask, spec.order)

    if not fmt.key_columns:
        return [(image_id, one(masks.any(axis=0)))]
    return [(image_id, code, one(m)) for code, m in zip(folder.codes, masks, strict=True)]


def test_task(config: Config, folder: DatasetFolder, *, with_train: bool = True) -> EnsembleTask:
    """The ensemble's data for a dataset folder (``config`` the ensemble): the training items
    with folds and truth, the test images in the sample's order, the submission format, its
    validation (against the sample, else the test images) and, with ``test/masks/``, its
    score."""
    first = config.members[0]
    run = final_config(config.output, first["experiment"], first["folds"][0])
    root = Path(config.prepared or run.data.prepared) / str(run.data.size)
    test = pd.read_csv(root / "test.csv", dtype={"id": str})
    fmt = submission_format(folder)
    keys = _expected_keys(folder, fmt, test["id"].tolist())
    order = list(dict.fromkeys(k.split(",")[0] for k in keys))
    test = test.set_index("id").loc[order].reset_index()
    shapes = {i: (int(h), int(w)) for i, h, w in zip(test.id, test.height, test.width, strict=True)}
    task = (
        oof_task(run, folder)
        if with_train
        else EnsembleTask(tuple(run.data.classes), test, None, ())
    )
    task.test, task.header = test, fmt.columns
    task.encode = partial(encode, folder, fmt)
    task.images = root / "images"
    task.validate = lambda csv: validate_submission(csv, keys, fmt,
                                                    lambda key: shapes[key.split(",")[0]])  # fmt: skip
    if folder.test_truth:
        task.score = partial(score_submission, folder=folder, fmt=fmt, shapes=shapes)
    return task


def _expected_keys(folder: DatasetFolder, fmt: SubmissionFormat, ids: list[str]) -> list[str]:
    if folder.sample is not None:
        sample = read_table(folder.sample)
        keys = [
            ",".join(v.strip() for v in row) for row in sample.iloc[:, :-1].itertuples(index=False)
        ]
        unknown = sorted({k.split(",")[0] for k in keys} - set(ids))
        if unknown:
            raise ValueError(f"{folder.sample}: {len(unknown)} id(s) without an image in "
                             f"test/images/, e.g. {unknown[0]!r}")  # fmt: skip
        return keys
    if fmt.key_columns:
        return [f"{i},{code}" for i in ids for code in folder.codes]
    return list(ids)


def score_submission(csv: Path, *, folder: DatasetFolder, fmt: SubmissionFormat, shapes) -> dict:
    """The submission's mean score per image (and class) against ``test/masks/``, with the
    empty rule, next to the all-empty baseline: ``test_score``, ``test_empty_score``."""
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    score = jaccard_per_image if folder.spec.metric == "jaccard" else dice_per_image
    scores, empty = [], []
    for image_id, shape in shapes.items():
        truth = folder.read_masks(image_id, shape, "test")
        rows = table[table.iloc[:, 0] == image_id]
        if fmt.key_columns:
            values = dict(zip(rows.iloc[:, 1], rows.iloc[:, -1], strict=True))
            pred = np.stack(
                [_decode(fmt, values.get(code, fmt.empty), shape) for code in folder.codes]
            )
        else:
            pred = _decode(fmt, rows.iloc[0, -1], shape)[None]
            truth = truth.any(axis=0, keepdims=True).astype(np.uint8)
        scores += score(pred, truth).tolist()
        empty += (~truth.reshape(len(truth), -1).any(axis=1)).astype(float).tolist()
    return {"test_score": float(np.mean(scores)), "test_empty_score": float(np.mean(empty)),
            "test_metric": folder.spec.metric}  # fmt: skip


def _decode(fmt: SubmissionFormat, value: str, shape) -> np.ndarray:
    return np.zeros(shape, np.uint8) if value in (fmt.empty, "") else fmt.decode(value, shape)


def predict_folder_submission(bundle, data, working, *, n_jobs: int = 2, log=print) -> Path:
    """An offline notebook's submission (``common.submit.kaggle``): the bundle's ensemble on the test
    images of the dataset folder ``data`` (its training files may be absent), by the steps of
    ``make ensemble DATASET=...``, so the CSV is byte-identical; ``<working>/submission.csv``."""
    from common.io.folder import scan_test
    from common.submit.ensemble import frozen_ensemble, predict_test
    from common.submit.submission import write_rows

    bundle, working = Path(bundle), Path(working)
    config, thresholds, members, classifiers = frozen_ensemble(bundle, working)
    runs = [
        final_config(config.output, m.experiment, k) for m in members + classifiers for k in m.folds
    ]
    folder = scan_test(data, runs[0].data.classes, runs[0].data.codes)
    for size in sorted({run.data.size for run in runs}):
        run = to_config(runs[0].to_dict() | {"data": runs[0].data.to_dict() | {"size": size}})
        run["data"]["prepared"] = str(working / "prepared")
        prepare_folder(run, folder, skip_bad=True, log=log)
    task = test_task(config, folder, with_train=False)
    rows, _, _ = predict_test(config, task, members, classifiers, thresholds, working / "maps", log)
    path = working / "submission.csv"
    write_rows(rows, path, task.header)
    log(f"wrote {path}: {len(rows)} rows for {len(task.test)} test images")
    return path


def folder_ensemble(config: Config, folder: DatasetFolder, train, overrides=(), *, log=print):
    """``run_ensemble`` for a dataset folder: members trained first when missing
    (``train(experiment file, fold)``), the members' planned TTA and search unless ``overrides``
    set them (no flip when orientation matters; per-class thresholds for several classes)."""
    from common.submit.ensemble import check_trained, run_ensemble, train_missing

    train_missing(config, train, log)
    members, _ = check_trained(config)
    first = final_config(config.output, members[0].experiment, members[0].folds[0])
    given = {o.split("=", 1)[0].split(".")[0] for o in overrides}
    if "tta" not in given:
        config["tta"] = list(first.predict.tta)
    if "search" not in given:
        config["search"] = dict(first.search)
    return run_ensemble(config, test_task(config, folder), log=log)
