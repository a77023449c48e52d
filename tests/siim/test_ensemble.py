"""SIIM ensemble end to end on tiny synthetic data: training what is missing, the OOF search,
thresholds read back from their file, a validated submission scored against the test truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from common.config import load_config
from common.io.images import read_png
from common.io.rle import siim_rle_decode
from common.io.rle_csv import merged_masks, read_rle_csv
from common.post.postprocess import triplet
from common.submit.image_ensemble import ensemble as run_ensemble
from competitions.siim.ensemble import ENSEMBLE
from tests.conftest import REPO
from tests.siim.tiny import tiny_siim

CONFIGS = REPO / "competitions" / "siim" / "configs"


@pytest.fixture(scope="module")
def workspace(module_tmp):
    root = module_tmp
    tiny_siim(root, n_train=40, n_test=8, size=48)
    data = {"size": 48, "prepared": str(root / "prepared"), "folds": str(root / "folds.csv")}
    data |= {"batch_size": 4, "val_batch_size": 8, "num_workers": 0}
    common = {"base": str(CONFIGS / "base.yaml"), "data": data, "predict": {"overlays": 0}}
    common["train"] = {"epochs": 2, "max_steps": 3}
    (root / "configs").mkdir()
    seg = common | {"model": {"cls_head": True}, "loss": {"cls_weight": 0.1}}
    cls = common | {"model": {"task": "classification"}, "loss": {"terms": [], "cls_weight": 1.0}}
    cls["train"] = common["train"] | {"monitor": "auc"}
    (root / "configs" / "tiny_seg.yaml").write_text(yaml.safe_dump(seg))
    (root / "configs" / "tiny_cls.yaml").write_text(yaml.safe_dump(cls))
    return root


def _ensemble(workspace, name, *extra):
    overrides = [
        f"name={name}",
        f"output={workspace / 'models'}",
        f"submissions={workspace / 'submissions'}",
        f"configs={workspace / 'configs'}",
        f"test_truth={workspace / 'synthetic' / 'test-rle.csv'}",
        "train_missing=true",
        "members=[{experiment: tiny_seg, folds: [0, 1], weight: 1.0}]",
        "classifiers=[{experiment: tiny_cls, folds: [0, 1], weight: 2.0}]",
        "num_workers=0",
        "overlays=4",
        *extra,
    ]
    return load_config(CONFIGS / "ensembles" / "base.yaml", overrides)


def test_triplet_ensemble_end_to_end(workspace):
    config = _ensemble(workspace, "tiny")
    report = run_ensemble(config, ENSEMBLE)
    out = workspace / "models" / "tiny"
    thresholds = yaml.safe_load((out / "thresholds.yaml").read_text())
    assert thresholds["combine"] == "triplet" and report["thresholds"] == thresholds
    assert report["validated"]["rows"] == 8
    folds = pd.read_csv(workspace / "folds.csv", dtype={"ImageId": str})
    assert sorted(p.stem for p in (out / "oof").iterdir()) == sorted(
        folds.loc[folds["fold"] < 2, "ImageId"]
    )
    assert (out / "search.png").stat().st_size and (out / "search.csv").stat().st_size
    csv = workspace / "submissions" / "tiny.csv"
    rows = read_rle_csv(csv).set_index("ImageId")["EncodedPixels"]
    truth = merged_masks(read_rle_csv(workspace / "synthetic" / "test-rle.csv"), (64, 64))
    dice = []
    for image_id, encoded in rows.items():
        q = read_png(out / "test" / f"{image_id}.png", (64, 64))  # maps at the native size
        expected = triplet(q, thresholds["top"], thresholds["min_area"], thresholds["bottom"])
        pred = siim_rle_decode(encoded, (64, 64))
        np.testing.assert_array_equal(pred, expected)  # the masks come from thresholds.yaml
        true = truth[image_id]
        both = pred.sum() + true.sum()
        dice.append(1.0 if both == 0 else 2 * (pred & true).sum() / both)
    assert report["test_dice"] == pytest.approx(np.mean(dice))
    saved = json.loads(csv.with_suffix(".json").read_text())
    assert saved["members"][0]["experiment"] == "tiny_seg" and "test_dice" in saved
    assert csv.with_suffix(".png").is_file() or report["n_test_non_empty"] == 0


@pytest.mark.parametrize("combine", ["head", "classifier", "max_pixel", "product"])
def test_other_combinations(workspace, combine):
    extra = ["search.tops=[0.3, 0.5]", "search.bottoms=[0.3, 0.5]", "search.min_areas=[0, 10]"]
    config = _ensemble(workspace, f"tiny_{combine}", f"combine={combine}", "scales=[64]", *extra)
    report = run_ensemble(config, ENSEMBLE)
    thresholds = report["thresholds"]
    assert thresholds["combine"] == combine
    if combine in ("head", "classifier", "max_pixel"):
        assert {"cls_threshold", "seg_threshold", "min_area"} <= set(thresholds)
    assert 0 <= report["test_dice"] <= 1 and report["validated"]["rows"] == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["train_missing=false", "members=[{experiment: nope, folds: [0]}]"], "not trained yet"),
        (["combine=average"], "combine 'average' is unknown"),
        (["members=[{experiment: tiny_seg, folds: [], weight: 1}]"], "non-empty list"),
        (["members=[{experiment: tiny_seg, weight: -1}]"], "positive number"),
        (["combine=classifier", "classifiers=[]"], "needs at least one entry in classifiers"),
    ],
)
def test_bad_ensembles(workspace, extra, message):
    with pytest.raises(ValueError, match=message):
        run_ensemble(_ensemble(workspace, "bad", *extra), ENSEMBLE)


def test_pseudo_labels_from_the_ensemble_and_leakage(workspace, monkeypatch):
    from common.data.datasets import WithExtraSampler
    from common.submit.image_ensemble import make_pseudo, pseudo_folder
    from common.submit.pseudo import read_pseudo_set
    from competitions.siim.loaders import FRAMES

    make_loaders = FRAMES.make_loaders

    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))  # data/siim/pseudo/ lands here
    rules = ["pseudo.positive_above=0.02", "pseudo.negative_below=0.01", "classifiers=[]"]
    config = _ensemble(workspace, "tiny_pl", *rules)
    run_ensemble(config, ENSEMBLE)
    found = workspace / "models" / "tiny_pl" / "thresholds.yaml"  # a 2-epoch model's search keeps
    searched = yaml.safe_load(found.read_text())  # nothing; the stage reads the file: widen it
    found.write_text(yaml.safe_dump(searched | {"top": 0.3, "min_area": 1, "bottom": 0.3}))
    record = make_pseudo(config, ENSEMBLE, "siim", log=lambda _: None)
    out = pseudo_folder("siim", config)
    table = read_pseudo_set(out, 48)
    counts = record["counts"]
    assert counts["kept"] + counts["left_out_unsure"] + counts["left_out_leakage"] == 8
    assert counts["kept"] == len(table) > 0 and counts["left_out_leakage"] == 0
    test_ids = set(pd.read_csv(workspace / "prepared" / "48" / "test.csv")["ImageId"].astype(str))
    assert set(table["id"]) <= test_ids  # never a training image
    for row in table.itertuples():
        mask = read_png(out / "48" / "masks" / f"{row.id}.png") > 0
        assert mask.any() == bool(row.has_mask) and mask.sum() == row.mask_area
        image = read_png(out / "48" / "images" / f"{row.id}.png")
        np.testing.assert_array_equal(
            image, read_png(workspace / "prepared" / "48" / "images" / f"{row.id}.png")
        )
    saved = json.loads((out / "provenance.json").read_text())
    assert saved["ensemble"] == "tiny_pl" and saved["thresholds"]["combine"] == "triplet"
    assert (
        saved["members"][0]["experiment"] == "tiny_seg" and saved["rules"]["positive_above"] == 0.02
    )

    # an outside folder holding a training image (brighter, another name) and a training id
    extra = workspace / "extra"
    extra.mkdir()
    train_id = pd.read_csv(workspace / "prepared" / "48" / "train.csv")["ImageId"].astype(str)[0]
    train_image = read_png(workspace / "prepared" / "48" / "images" / f"{train_id}.png")
    from common.io.images import write_png

    write_png(
        extra / "copy.png",
        (train_image * 0.8 + 20).astype(np.uint8),  # another window
    )
    write_png(extra / f"{train_id}.png", np.full((48, 48), 7, np.uint8))
    first_test = sorted(test_ids)[0]
    write_png(
        extra / "new.png", read_png(workspace / "prepared" / "48" / "images" / f"{first_test}.png")
    )
    outside = _ensemble(workspace, "tiny_pl", *rules, f"pseudo.images={extra}")
    record = make_pseudo(outside, ENSEMBLE, "siim", log=lambda _: None)
    assert (
        set(record["excluded"]) == {"copy", train_id} and record["counts"]["left_out_leakage"] == 2
    )
    assert (
        "near duplicate" in record["excluded"]["copy"]
        and "training image id" in record["excluded"][train_id]
    )

    # training adds the set to the training items only; a pseudo id that is a training id is refused
    experiment = load_config(workspace / "configs" / "tiny_seg.yaml",
                             [f"data.pseudo.folder={out}", "data.pseudo.share=0.25"])  # fmt: skip
    train_loader, val_loader = make_loaders(experiment, 0, 0)
    assert isinstance(train_loader.sampler, WithExtraSampler)
    n_real = len(train_loader.dataset.datasets[0])
    indices = train_loader.sampler.epoch_indices()
    assert (indices >= n_real).sum() == round(n_real * 0.25 / 0.75)
    assert not set(val_loader.dataset.ids) & set(table["id"])
    table.assign(id=train_id).to_csv(out / "48" / "train.csv", index=False)
    with pytest.raises(
        ValueError, match=f"pseudo-labelled images are training images, e.g. {train_id}"
    ):
        make_loaders(experiment, 0, 0)


def test_pseudo_inputs_that_are_refused(workspace, tmp_path, monkeypatch):
    from common.io.images import write_png
    from common.submit.image_ensemble import _stage_folder
    from competitions.siim.loaders import FRAMES

    make_loaders = FRAMES.make_loaders

    with pytest.raises(ValueError, match=r"pseudo\.images .*empty: no PNG images"):
        (tmp_path / "empty").mkdir()
        _stage_folder(tmp_path / "empty", 48, tmp_path / "staged")
    (tmp_path / "bad").mkdir()
    write_png(tmp_path / "bad" / ".hidden.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "bad" / "ok.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(
        ValueError, match=r"\.hidden\.png: image id '\.hidden' is not a plain file name"
    ):
        _stage_folder(tmp_path / "bad", 48, tmp_path / "staged")
    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))
    missing = load_config(
        workspace / "configs" / "tiny_seg.yaml", [f"data.pseudo.folder={tmp_path / 'none'}"]
    )
    with pytest.raises(
        ValueError, match=r"none/48/train\.csv not found: build the pseudo set at 48"
    ):
        make_loaders(missing, 0, 0)
