"""The lung pipeline on the synthetic set: every config trains, predicts and scores; the
submission CSV reads back to the same masks; folds and the no-flip rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import load_run_config
from common.io.images import read_png
from common.post import channel_evaluate as lung_evaluate
from common.submit.leaderboard import write_leaderboard
from common.train import channel_runner
from competitions.lung import COMPETITION
from competitions.lung.evaluate import CASES, GROUPS, PUBLISHED
from competitions.lung.loaders import assign_folds, transforms, tta_policy
from experiments.lung_ablation import ablate
from tests.reference import ref_rle_decode

main = COMPETITION.entry("train")  # the lung train stage (common.train.channel_runner)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "competitions" / "lung" / "configs"
FAST = [
    "train.epochs=1",
    "train.max_steps=2",
    "data.num_workers=0",
    "data.size=128",
    "data.crop=96",
    "data.score_size=256",
    "data.batch_size=4",
    "predict.overlays=2",
    "train.top_k=1",
]


@pytest.fixture(scope="module")
def workspace(module_tmp):
    return module_tmp


def _config(name, *overrides):
    return load_run_config(CONFIGS / name, [*FAST, *overrides])


@pytest.mark.parametrize(
    "name", ["unet_resnet18_cpu.yaml", "pspnet_resnet18.yaml", "unet_dice.yaml", "lungs_only.yaml"]
)
def test_every_config_runs_on_the_synthetic_set(name, workspace, monkeypatch, capsys):
    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))  # relative config paths land here
    main(["--config", str(CONFIGS / name), "--folds", "0", *FAST])
    out = capsys.readouterr().out
    config = _config(name)
    report = json.loads((Path(config.submissions) / f"{config.name}_fold0.json").read_text())
    assert report["n_cases"] == 20 and report["folds"] == [0]
    assert list(report["structures"]) == list(config.data.structures)
    assert "lungs" in report["groups"] and "Jaccard" in out
    assert "lungs" in report["objects"] and "lungs as one" in out  # both lungs in every config
    assert report["synthetic"] and "SYNTHETIC data" in out and "human observer" not in out
    log = pd.read_csv(Path(config.output) / config.name / "fold0" / "log.csv")
    assert {f"dice_05_{s}" for s in config.data.structures} <= set(log.columns)
    assert (Path(config.output) / config.name / "fold0" / "curves.png").is_file()


def test_both_folds_and_the_csv_round_trip(workspace, monkeypatch):
    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))  # relative config paths land here
    flip = "predict.tta=[none, hflip]"  # the side-swapping flip, end to end
    main(["--config", str(CONFIGS / "unet_resnet18_cpu.yaml"), "--folds", "0,1", *FAST, flip])
    config = _config("unet_resnet18_cpu.yaml", flip)
    csv = Path(config.submissions) / "unet_resnet18_cpu.csv"
    assert csv.is_relative_to(workspace)
    report = json.loads(csv.with_suffix(".json").read_text())
    assert report["n_cases"] == 40 and report["threshold_search"] == "cross"
    assert report["tta"] == ["none", "hflip"]
    assert csv.with_suffix(".png").is_file()
    runs, subs, _ = write_leaderboard("lung")  # under the workspace, as `make leaderboard`
    row = runs.set_index("experiment").loc["unet_resnet18_cpu"]
    folds = [
        json.loads((lung_evaluate.fold_dir(config, f) / "metrics.json").read_text()) for f in (0, 1)
    ]
    assert row["status"] == "done" and row["folds"] == "0,1" and "Jaccard" in row["metric"]
    assert row["cv"] == pytest.approx(np.mean([f["score"] for f in folds]))
    assert "predict.tta" in row["changes"] and folds[0]["thresholds"] == report["thresholds"]["0"]
    sub = subs.set_index("submission").loc["unet_resnet18_cpu"]
    assert sub["cv"] == pytest.approx(report["cv"]) and sub["rows"] == 200
    lines = csv.read_text().splitlines()
    assert lines[0] == "id,structure,rle" and len(lines) == 1 + 40 * 5
    masks = lung_evaluate.read_submission(csv, 256)
    _, cases = CASES.read_cases(config)
    for case, fold in zip(cases["case"], cases["fold"], strict=True):
        for structure in config.data.structures:
            prob = read_png(
                lung_evaluate.fold_dir(config, fold) / "oof" / structure / f"{case}.png"
            )
            threshold = report["thresholds"][str(fold)][structure]
            expected = lung_evaluate.final_mask(config, prob, structure, threshold)
            assert np.array_equal(masks[(case, structure)], expected)
    untrained = _config("unet_resnet18_cpu.yaml", "name=never_trained")
    with pytest.raises(
        ValueError, match=r"fold 0: no held-out map for 20 case\(s\).*train the fold first"
    ):
        lung_evaluate.evaluate(untrained, [0], CASES)
    assert not list(Path(config.submissions).glob("never_trained*"))  # nothing half-written
    ablation = ablate(config, [0, 1])
    assert ablation["n_cases"] == 40 and len(ablation["jaccard"]) == 6
    assert all(0 <= v <= 1 for row in ablation["jaccard"].values() for v in row.values())
    # an independent decoder (1-indexed starts, column-major) reads the same masks
    for line in lines[1:6]:
        case, structure, rle = line.split(",")
        assert np.array_equal(ref_rle_decode(rle, (256, 256), "F"), masks[(case, structure)])


def test_read_submission_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,structure,rle\nJPCLN001,heart,1 3\nJPCLN001,heart,5 2 9\n")
    with pytest.raises(ValueError, match="line 3"):
        lung_evaluate.read_submission(path, 8)
    path.write_text("id,rle\n")
    with pytest.raises(ValueError, match="line 1"):
        lung_evaluate.read_submission(path, 8)


def test_scr_and_kfold_splits():
    cases = pd.DataFrame(
        {
            "case": [f"JPC{'LN' if i % 3 else 'NN'}{i:03d}" for i in range(1, 31)],
            "scr_fold": [0 if i % 2 else 1 for i in range(1, 31)],
            "nodule": [1 if i % 3 else 0 for i in range(1, 31)],
        }
    )
    scr = assign_folds(cases, "scr")
    numbers = cases["case"].str[-3:].astype(int)
    assert (scr[numbers % 2 == 0] == 0).all() and (scr[numbers % 2 == 1] == 1).all()
    kfold = assign_folds(cases, "kfold", 5, seed=1)
    assert sorted(set(kfold)) == [0, 1, 2, 3, 4]
    per_fold = cases.assign(fold=kfold).groupby("fold")["nodule"].agg(["sum", "count"])
    assert (
        per_fold["count"].tolist() == [6] * 5 and per_fold["sum"].max() - per_fold["sum"].min() <= 1
    )
    with pytest.raises(ValueError, match=r"data\.split 'random'"):
        assign_folds(cases, "random")


def test_mirroring_augmentations_and_vflip_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("competitions.lung.loaders.TRANSFORMS", tmp_path)
    (tmp_path / "flips.json").write_text(
        json.dumps(
            {
                "__version__": "2.0.8",
                "transform": {
                    "__class_fullname__": "Compose",
                    "p": 1.0,
                    "transforms": [{"__class_fullname__": "HorizontalFlip", "p": 0.5}],
                },
            }
        )
    )
    with pytest.raises(ValueError, match="HorizontalFlip: a mirrored chest X-ray"):
        transforms(_config("unet_resnet18_cpu.yaml", "data.transforms=flips"))
    structures = ["left_lung", "right_lung", "heart"]
    assert tta_policy(structures).remap["hflip"] == (1, 0, 2)
    with pytest.raises(ValueError, match="vflip"):
        tta_policy(structures).check(["none", "vflip"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_and_builds_its_model(path):
    from common.train.runner import build_model_from

    config = load_run_config(path, [])
    tta_policy(config.data.structures).check(config.predict.tta, len(config.data.structures))
    assert set(config.predict.postprocess) >= set(config.data.structures)
    if config.loss.channel_weights:
        assert len(config.loss.channel_weights) == len(config.data.structures)
    model = build_model_from(config, len(config.data.structures))
    assert model.net.segmentation_head[0].out_channels == len(config.data.structures)


def test_report_shows_the_published_figures_only_for_real_data():
    report = {
        "name": "x",
        "n_cases": 2,
        "folds": [0, 1],
        "score_size": 512,
        "structures": {"heart": {"dice": 0.9, "jaccard": 0.8}},
        "groups": {"heart": {"dice": 0.9, "jaccard": 0.8}},
        "published_jaccard": PUBLISHED,
        "synthetic": False,
    }
    assert "human observer 0.878" in lung_evaluate.format_report(report)
    report["synthetic"] = True
    text = lung_evaluate.format_report(report)
    assert "human observer" not in text and "SYNTHETIC" in text


def test_refinement_stage_on_crops_around_the_clavicles(workspace, monkeypatch, capsys):
    """A second model on crops around the first stage's clavicles (its own fold's boxes), its
    maps pasted back; the cascade is scored on all five structures, lungs and heart from the
    first stage."""
    from common.data.crops import crop_dir, read_box_table

    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))
    stage = ["name=stage"]
    main(["--config", str(CONFIGS / "unet_resnet18_cpu.yaml"), "--folds", "0,1", *FAST, *stage])
    refine = [*FAST, "data.size=64", "data.crop=0", "data.crop_stage.frame=256",
              "data.crop_stage.run=models/lung/stage"]  # fmt: skip
    main(["--config", str(CONFIGS / "clavicles_refine.yaml"), "--folds", "0,1", *refine])
    config = _config("clavicles_refine.yaml", *refine)
    report = json.loads((Path(config.submissions) / "clavicles_refine.json").read_text())
    assert list(report["structures"]) == [
        "left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle",
    ]  # fmt: skip
    first = json.loads((Path(config.submissions) / "stage.json").read_text())
    assert report["groups"]["lungs"] == first["groups"]["lungs"]  # from the first stage
    assert report["n_cases"] == 40
    for fold in (0, 1):
        folder = crop_dir(config.data, fold=fold)
        assert folder.name.endswith(f"_fold{fold}")
        boxes = read_box_table(folder)
        assert len(boxes) == 48  # 40 cases + 8 test images
        assert {p.name for p in (folder / "masks").iterdir()} == set(config.data.structures)
        assert read_png(folder / "images" / f"{next(iter(boxes))}.png").shape == (64, 64)
        held_out = CASES.fold_cases(config, fold)[2]["case"]
        for case in held_out[:5]:  # zero outside the fold's box, at the scoring size
            box = boxes[case].scaled((256, 256))
            oof = read_png(
                lung_evaluate.fold_dir(config, fold) / "oof" / "left_clavicle" / f"{case}.png"
            )
            outside = oof.copy()
            outside[box.y0 : box.y1, box.x0 : box.x1] = 0
            assert oof.shape == (256, 256) and not outside.any()

    trained = []
    monkeypatch.setattr(
        channel_runner, "run_fold", lambda c, k, *_, **__: trained.append((c.name, k))
    )
    monkeypatch.setattr(channel_runner, "prepare_crops", lambda *a, **k: None)
    channel_runner.prepare_sizes(_config("clavicles_refine.yaml", *FAST,
                                         "data.crop_stage.run=models/lung/lungs_only"), CASES, [1])  # fmt: skip
    assert trained == [("lungs_only", 1)]  # the first stage's missing fold, from its config
    with pytest.raises(SystemExit, match=r"fold\(s\) \[0\] not trained and no .*nowhere\.yaml"):
        main(["--config", str(CONFIGS / "clavicles_refine.yaml"), "--folds", "0", *refine,
              "data.crop_stage.run=models/lung/nowhere"])  # fmt: skip


def test_refinement_member_replaces_its_channels_in_the_ensemble(workspace, monkeypatch):
    """After the refinement test: an ensemble of the first stage and the refinement stage takes
    lungs and heart from the first and the clavicles from the second (its crops pasted back)."""
    import torch

    from common.infer.predict import load_fold_model, predict_ids
    from common.submit.ensemble import PredictOptions
    from common.submit.image_ensemble import ensemble as run_ensemble
    from competitions.lung.ensemble import ENSEMBLE

    monkeypatch.setenv("KSEG_WORKSPACE", str(workspace))
    refine = [*FAST, "data.size=64", "data.crop=0", "data.crop_stage.frame=256",
              "data.crop_stage.run=models/lung/stage"]  # fmt: skip
    config = _config("clavicles_refine.yaml", *refine)
    channels = tuple(lung_evaluate.scored_structures(config))
    cpu = torch.device("cpu")
    output = Path(config.output)
    stage = load_fold_model(output, "stage", 0, 1.0, cpu, classes=5, channels=channels)
    second = load_fold_model(output, "clavicles_refine", 0, 1.0, cpu, classes=5, channels=channels)
    assert stage.channels is None and second.channels == (3, 4)
    cases = list(CASES.fold_cases(config, 0)[2]["case"][:3])
    shapes = dict.fromkeys(cases, (256, 256))
    options = PredictOptions(device=cpu, policy=tta_policy(channels))
    both = list(predict_ids(cases, shapes, [stage, second], [], options))
    alone = list(predict_ids(cases, shapes, [stage], [], options))
    for mixed, first in zip(both, alone, strict=True):
        assert np.array_equal(mixed.mask[:3], first.mask[:3])
        for c, structure in ((3, "left_clavicle"), (4, "right_clavicle")):
            oof = read_png(lung_evaluate.map_path(config, 0, structure, mixed.image_id))
            assert np.abs(mixed.mask[c].astype(int) - oof).max() <= 1
    with pytest.raises(ValueError, match="needs a member that predicts them all"):
        list(predict_ids(cases, shapes, [second], [], options))
    flip = PredictOptions(device=cpu, tta=("none", "hflip"), policy=tta_policy(channels))
    with pytest.raises(ValueError, match="cannot be applied to a member of some channels"):
        list(predict_ids(cases, shapes, [stage, second], [], flip))

    ensemble = load_run_config(CONFIGS / "ensembles" / "cascade.yaml", [
        "name=cascade", "num_workers=0", "tta=[none]", "members=[{experiment: stage, folds: [0, 1], "
        "weight: 1.0}, {experiment: clavicles_refine, folds: [0, 1], weight: 1.0}]",
    ])  # fmt: skip
    report = run_ensemble(ensemble, ENSEMBLE, log=lambda _: None)
    masks = lung_evaluate.read_submission(report["csv"], 256)
    assert {s for _, s in masks} == set(channels) and report["n_test"] == 8


def test_two_sided_groups_are_also_scored_as_one_object():
    from common.post.channel_evaluate import object_scores

    truth = {s: np.zeros((10, 10), np.uint8) for s in ("left_lung", "right_lung", "heart")}
    truth["left_lung"][:, 6:] = 1  # 40 px
    truth["right_lung"][:, :2] = 1  # 20 px
    pred = {s: m.copy() for s, m in truth.items()}
    pred["left_lung"][:, 8:] = 0  # 20 of 40 found
    pred["right_lung"][:, 2] = 1  # 10 px too many
    rows = object_scores(pred, truth, GROUPS)
    assert [r["group"] for r in rows] == ["lungs"]  # no clavicles here; the heart is one already
    # union: truth 60 px, prediction 20 + 30 = 50 px, overlap 40 px
    assert rows[0]["jaccard"] == pytest.approx(40 / 70) and rows[0]["dice"] == pytest.approx(
        80 / 110
    )
    # not the mean of the sides' Jaccards (20/40 and 20/30)
    assert rows[0]["jaccard"] != pytest.approx((0.5 + 2 / 3) / 2)


def test_a_bad_training_value_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))  # relative config paths land here
    for override, message in [
        ("train.amp=fp8", r"train\.amp 'fp8' is unknown; valid: none, fp16, bf16"),
        ("data.preprocess.name=hist", r"data\.preprocess\.name 'hist' is unknown"),
    ]:
        with pytest.raises(SystemExit, match=rf"lung train: {message}"):
            main(["--config", str(CONFIGS / "clavicles_refine.yaml"), "--folds", "0", *FAST,
                  override])  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing prepared, no run folder, no crash record
