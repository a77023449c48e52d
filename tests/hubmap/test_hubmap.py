"""HuBMAP on a small synthetic set: the slides' layouts and annotations, the tiles, then the
whole pipeline (fold, search, tile filter, ensemble, bundle) on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import load_run_config, to_config
from common.io.polygons import rasterize, read_geojson
from common.io.rle import rle_decode, rle_decode_window
from common.io.slides import open_slide, slide_shape
from competitions.hubmap.synthetic import SyntheticSpec, generate

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "competitions" / "hubmap" / "configs"
FAST = ["train.epochs=1", "train.max_steps=2", "data.num_workers=0", "data.window=256", "data.size=64",
        "data.batch_size=4", "train.top_k=1", "predict.overlap=16", "predict.tta=[none,rot90]",
        "data.n_folds=3"]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hubmap") / "synthetic", SyntheticSpec(scale=0.1))


def test_synthetic_layouts_and_annotations_agree(synthetic):
    info = pd.read_csv(synthetic / "HuBMAP-20-dataset_information.csv", dtype={"image_file": str})
    assert set(info["layout"]) == {"tiled", "striped", "channels-first", "5d", "pages", "pyramid"}
    train = pd.read_csv(synthetic / "train.csv", dtype=str, keep_default_na=False)
    messages = []
    for row in train.itertuples():
        with open_slide(synthetic / "train" / f"{row.id}.tiff") as slide:
            shape = slide.shape
        polygons = read_geojson(synthetic / "train" / f"{row.id}.json", log=messages.append)
        mask = rle_decode(row.encoding, shape)  # column-major, as Kaggle's
        np.testing.assert_array_equal(mask, rasterize(polygons, shape))
        assert 0.002 < mask.mean() < 0.1  # glomeruli keep their size at this scale: denser
    assert len(messages) == len(train)  # each file's LineString note skipped with a message
    assert sum(len(p) > 1 for r in train.itertuples()
               for p in read_geojson(synthetic / "train" / f"{r.id}.json", log=lambda _: None)) > 0  # fmt: skip
    sample = pd.read_csv(synthetic / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sample.columns) == ["id", "predicted"] and (sample["predicted"] == "").all()
    assert set(sample["id"]) == set(pd.read_csv(synthetic / "test_truth.csv", dtype=str)["id"])


def _config(name, workspace, synthetic, *more):
    paths = [f"data.synthetic={synthetic}", f"data.raw={workspace / 'raw'}",
             f"data.prepared={workspace / 'prepared'}", f"output={workspace / 'models'}",
             "data.synthetic_scale=0.1"]  # fmt: skip
    return load_run_config(CONFIGS / name, [*FAST, *paths, *more])


def test_tiles_folds_and_bad_input(synthetic, tmp_path):
    from common.data.slide_tiles import prepare as prepare_slides
    from common.data.slide_tiles import read_tiles
    from competitions.hubmap.data import SLIDES

    def prepare(config, **kwargs):
        return prepare_slides(config, SLIDES, **kwargs)

    config = _config("unet_resnet18_cpu.yaml", tmp_path, synthetic)
    out = prepare(config, log=lambda _: None)
    _, _, tiles = read_tiles(config)
    assert set(tiles["kind"]) == {"grid", "object"}
    assert tiles.groupby("slide")["fold"].nunique().max() == 1  # a slide's tiles in one fold
    info = pd.read_csv(synthetic / "HuBMAP-20-dataset_information.csv", dtype=str)
    patient = dict(zip(info["image_file"].str[:-5], info["patient_number"], strict=True))
    by_patient = tiles.assign(patient=tiles["slide"].map(patient)).groupby("patient")["fold"]
    assert by_patient.nunique().max() == 1 and tiles["fold"].nunique() == 3  # grouped by patient
    assert tiles.groupby("fold")["slide"].nunique().max() > 1  # a fold holds several slides
    with pytest.raises(ValueError, match=r"data.n_folds = 4, but the slides come from 3 patients"):
        read_tiles(_config("unet_resnet18_cpu.yaml", tmp_path, synthetic, "data.n_folds=4"))
    assert (tiles["tissue"][tiles["kind"] == "grid"] >= config.data.min_tissue).all()
    assert all((out / "images" / f"{i}.png").is_file() and (out / "masks" / f"{i}.png").is_file()
               for i in tiles["id"])  # fmt: skip
    before = (out / "slides.csv").stat().st_mtime_ns
    prepare(config, log=lambda _: None)  # nothing changed: nothing redone
    assert (out / "slides.csv").stat().st_mtime_ns == before
    assert tiles["id"].is_unique  # object tiles clipped to one corner get their own names
    # extra annotations: a square no RLE holds, OR-ed into the masks with an object tile of its own
    slide = tiles["slide"].iloc[0]
    height, width = (int(v) for v in pd.read_csv(out / "slides.csv", dtype={"id": str})
                     .set_index("id").loc[slide, ["height", "width"]])  # fmt: skip
    x0, y0 = width // 2 - 15, height // 2 - 15
    extras = tmp_path / "extras"
    extras.mkdir()
    square = [[x0, y0], [x0 + 30, y0], [x0 + 30, y0 + 30], [x0, y0 + 30], [x0, y0]]
    (extras / f"{slide}.json").write_text(json.dumps([{"type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [square]}}]))  # fmt: skip
    merged = _config(
        "unet_resnet18_cpu.yaml", tmp_path, synthetic, f"data.extra_annotations={extras}"
    )
    prepare(merged, log=lambda _: None)
    _, slides_after, after = read_tiles(merged)
    assert slides_after.set_index("id").loc[slide, "extra_objects"] == 1
    new = after[(after["slide"] == slide) & ~after["id"].isin(tiles["id"])]
    assert (new["kind"] == "object").any()
    covering = after[(after["slide"] == slide) & (after["y"] <= y0) & (after["x"] <= x0)
                     & (after["y"] + config.data.window >= y0 + 30)
                     & (after["x"] + config.data.window >= x0 + 30)]  # fmt: skip
    encoding = pd.read_csv(synthetic / "train.csv", dtype=str, keep_default_na=False)
    encoding = encoding.set_index("id").loc[slide, "encoding"]
    overlap = int(rle_decode_window(encoding, (height, width), (y0, y0 + 30, x0, x0 + 30)).sum())
    old = tiles.set_index("id")["mask_area"]
    grown = [r.mask_area - old[r.id] for r in covering.itertuples() if r.id in old.index]
    assert grown and all(g == 900 - overlap for g in grown)  # 30 x 30 pixel centres, no more
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    first = pd.read_csv(synthetic / "train.csv", dtype=str).iloc[:1]
    (raw / "train" / f"{first.id[0]}.tiff").write_bytes(
        (synthetic / "train" / f"{first.id[0]}.tiff").read_bytes()
    )
    first.assign(encoding="5 10 999999999 3").to_csv(raw / "train.csv", index=False)
    with pytest.raises(ValueError, match=rf"train.csv, id {first.id[0]} .*past the end"):
        prepare(config, log=lambda _: None)
    first.assign(id="0000absent").to_csv(raw / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train.csv line 2: .*0000absent\.tiff not found"):
        prepare(config, log=lambda _: None)
    first.rename(columns={"encoding": "rle"}).to_csv(raw / "train.csv", index=False)
    with pytest.raises(
        ValueError, match=r"train.csv: columns \['id', 'rle'\], expected id,encoding"
    ):
        prepare(config, log=lambda _: None)
    first.assign(id="../escape").to_csv(raw / "train.csv", index=False)
    with pytest.raises(ValueError, match=r"train.csv line 2: image id '../escape'"):
        prepare(config, log=lambda _: None)
    first.to_csv(raw / "train.csv", index=False)  # a slide without a row is named, left out
    (raw / "train" / "extra0001.tiff").write_bytes(
        (raw / "train" / f"{first.id[0]}.tiff").read_bytes()
    )
    said = []
    prepare(config, log=said.append)
    assert any("1 slide(s)" in line and "extra0001.tiff" in line for line in said)
    assert list(pd.read_csv(out / "slides.csv", dtype=str)["id"]) == [first.id[0]]


def test_fold_filter_ensemble_and_bundle(synthetic, tmp_path, monkeypatch):
    from common.data.slide_tiles import make_loaders
    from common.post.slide_evaluate import evaluate
    from common.submit import kaggle
    from common.submit import slide_ensemble as ensemble
    from common.train.slide_runner import score_fold, train_folds
    from competitions.hubmap import COMPETITION
    from competitions.hubmap.data import SLIDES

    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    first = _config("unet_resnet18_cpu.yaml", tmp_path, synthetic)
    train_folds(first, [0], SLIDES)
    summary = evaluate(first, SLIDES, log=lambda _: None)
    run = tmp_path / "models" / "unet_resnet18_cpu"
    for name in ("thresholds.yaml", "search.csv", "search.png", "oof.csv", "oof.json", "oof.png"):
        assert (run / name).is_file(), name
    assert 0 <= summary["oof_dice"] <= 1 and summary["empty_dice"] == 0
    assert (run / "fold0" / "oof").is_dir()
    fold = json.loads((run / "fold0" / "metrics.json").read_text())  # what the leaderboard reads
    assert fold["score"] == pytest.approx(np.mean(list(summary["per_slide"].values())), abs=1e-4)
    assert fold["thresholds"] == {
        "threshold": summary["threshold"],
        "min_size": summary["min_size"],
    }
    stats = score_fold(first, 0, log=lambda _: None)
    scores = pd.read_csv(run / "fold0" / "tile_filter.csv")
    assert len(scores) == stats["tiles"] and scores["dice"].between(0, 1).all()
    filtered = _config("filtered.yaml", tmp_path, synthetic, "data.tile_filter.min_dice=0.0")
    with pytest.raises(ValueError, match="would drop every tile"):
        make_loaders(filtered, 0, 1)
    missing = _config("filtered.yaml", tmp_path, synthetic, "data.tile_filter.run=never_trained")
    with pytest.raises(
        ValueError, match=r"tile_filter.run 'never_trained': .*tile_filter.csv not found"
    ):
        make_loaders(missing, 0, 1)
    other = _config("unet_1536_256.yaml", tmp_path, synthetic, "data.window=384")
    with pytest.raises(ValueError, match=r"members tile differently \[\(256, 64\), \(384, 64\)\]"):
        ensemble.tile_plan(load_run_config(CONFIGS / "ensembles" / "default.yaml"), [first, other])
    # a run from before data.preprocess had stretch's parameters preprocesses like a new one
    older = first.to_dict()
    older["data"]["preprocess"] = {"name": "none", "clip_limit": 2.0, "tiles": 8}
    plan_config = load_run_config(CONFIGS / "ensembles" / "default.yaml", ["overlap=16"])
    ensemble.tile_plan(plan_config, [first, to_config(older)])
    older["data"]["preprocess"] = {"name": "clahe"}
    with pytest.raises(ValueError, match=r"members preprocess differently \(data\.preprocess\)"):
        ensemble.tile_plan(plan_config, [first, to_config(older)])
    kept = _config("filtered.yaml", tmp_path, synthetic, "data.tile_filter.min_dice=1.01")
    loader, _ = make_loaders(kept, 0, 1)
    assert len(loader.dataset) == stats["tiles"]
    ensemble_config = load_run_config(
        CONFIGS / "ensembles" / "default.yaml",
        [
            f"output={tmp_path / 'models'}",
            f"synthetic={synthetic}",
            f"raw={tmp_path / 'raw'}",
            f"submissions={tmp_path / 'subs'}",
            "tta=[none]",
            "synthetic_scale=0.1",
            "overlap=16",
            "geojson.write=true",
        ],
    )
    result = ensemble.run(ensemble_config, SLIDES, log=lambda _: None)
    csv = tmp_path / "subs" / "default.csv"
    assert result["rows"]["rows"] == 2 and 0 <= result["test_dice"] <= 1
    assert json.loads(csv.with_suffix(".json").read_text())["thresholds"]["threshold"] > 0
    # predicted glomeruli as GeoJSON: a test slide's polygons draw exactly its submitted mask
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    shapes = {i: slide_shape(Path(result["source"]) / "test" / f"{i}.tiff") for i in rows["id"]}
    for image_id, rle in rows.itertuples(index=False):
        polygons = read_geojson(
            tmp_path / "models" / "default" / "geojson" / "test" / f"{image_id}.geojson"
        )
        drawn = rasterize(polygons, shapes[image_id]) if polygons else 0
        assert np.array_equal(drawn, rle_decode(rle, shapes[image_id])), image_id
    flags = pd.read_csv(
        tmp_path / "models" / "default" / "geojson" / "flags.csv", dtype={"id": str}
    )
    assert len(flags) == len(summary["per_slide"]) and (flags["flagged"] <= flags["objects"]).all()
    for image_id in flags["id"]:
        assert (
            tmp_path / "models" / "default" / "geojson" / "train" / f"{image_id}.geojson"
        ).is_file()
    spec = kaggle.BundleSpec(package="hubmap", **COMPETITION.bundle)
    root = kaggle.build(ensemble_config, tmp_path / "dist", "me", spec=spec, wheels=False,
                        log=lambda _: None)  # fmt: skip
    notebook = (root / "kernel" / "inference.ipynb").read_text()
    assert 'load_competition(\\"hubmap\\").entry(\\"offline\\")' in notebook
    offline = COMPETITION.entry("offline")(
        root / "dataset", synthetic, tmp_path / "working", log=lambda _: None
    )
    assert offline.read_bytes() == csv.read_bytes()


def test_test_slides_are_shared_out_across_ranks(synthetic, monkeypatch):
    from common.infer.slide_inference import TilePlan
    from common.submit import slide_ensemble as ensemble
    from common.train import distributed

    ids, paths = ensemble.test_slides(synthetic)
    (synthetic.parent / "incomplete" / "test").mkdir(parents=True)
    (synthetic.parent / "incomplete" / "sample_submission.csv").write_text(
        "id,predicted\nabsent01,\n"
    )
    with pytest.raises(ValueError, match=r"sample_submission.csv names slides that are absent"):
        ensemble.test_slides(synthetic.parent / "incomplete")
    paths = {i: paths[i] for i in ids} | {"copy": paths[ids[0]]}  # three slides, two ranks
    plan = TilePlan(tile=64, scale=8, overlap=8)
    seen = {}

    def fake_predictor(models, **_):
        return lambda images: np.zeros(images.shape[:3], np.float32)

    monkeypatch.setattr(ensemble, "tile_predictor", fake_predictor)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "active", lambda: True)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(
            distributed, "gather", lambda rows, rank=rank: seen.setdefault(rank, rows) and [rows]
        )
        ensemble.predict_slides([], plan, ["none"], paths, {"threshold": 0.5, "min_size": 0}, "cpu",
                                log=lambda _: None)  # fmt: skip
    assert [i for i, _ in seen[0]] == [ids[0], "copy"] and [i for i, _ in seen[1]] == [ids[1]]
    assert all(rle == "" for rows in seen.values() for _, rle in rows)


def test_windows_drawn_every_epoch(synthetic, tmp_path):
    """data.sampling: epoch: one window per object (area bins balanced) plus tissue windows,
    fresh every epoch and repeatable; a window reads what prepare cuts at the same place."""
    from common.data.slide_tiles import make_loaders, prepare, read_tiles
    from common.data.slide_windows import epoch_windows, object_table
    from common.io.images import read_mask, read_png
    from competitions.hubmap.data import SLIDES

    config = _config("unet_resnet18_cpu.yaml", tmp_path, synthetic, "data.sampling=epoch")
    out = prepare(config, SLIDES, log=lambda _: None)
    _, slides, tiles = read_tiles(config)
    train = pd.read_csv(synthetic / "train.csv", dtype=str)
    for row in slides.itertuples(index=False):  # the objects are the mask's components
        objects = pd.read_csv(out / "objects" / f"{row.id}.csv")
        encoding = train.set_index("id").loc[row.id, "encoding"]
        mask = rle_decode(encoding, (row.height, row.width))
        import cv2

        assert len(objects) == cv2.connectedComponents(mask, connectivity=8)[0] - 1
        assert objects["area"].sum() == mask.sum()
        assert object_table(encoding, (row.height, row.width)).equals(objects)
    loader, _ = make_loaders(config, 0, seed=3)
    data = loader.dataset
    sources = data.slides
    n_objects = sum(len(s.objects) for s in sources)
    first = data.windows.copy()
    static = (tiles["fold"] != 0).sum()
    assert len(first) == static  # as many windows as static tiles: the same steps an epoch
    assert n_objects and (first[:, 0] >= 0).all()
    data.set_epoch(1)
    assert len(data.windows) == len(first) and not np.array_equal(data.windows, first)
    data.set_epoch(0)
    assert np.array_equal(data.windows, first)  # seeded by (seed, epoch): a run repeats
    for k, y0, x0 in first:
        assert 0 <= y0 <= sources[k].shape[0] - 256 and 0 <= x0 <= sources[k].shape[1] - 256
    many = epoch_windows(sources, 256, size=400, jitter=0.0, random_share=0.0, area_bins=2, seed=0,
                         epoch=0)  # fmt: skip
    centres = {(k, y + 128, x + 128) for k, y, x in many}
    areas = {
        (k, int(o.y), int(o.x)): o.area
        for k, s in enumerate(sources)
        for o in s.objects.itertuples()
    }
    small = np.median(list(areas.values()))
    drawn = [areas[c] <= small for c in centres if c in areas]
    assert 0.25 < np.mean(drawn) < 0.75  # both halves of the areas drawn
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    # a window at a static grid tile's place reads what prepare wrote there
    grid = tiles[(tiles["kind"] == "grid") & (tiles["fold"] != 0) & (tiles["mask_area"] > 0)].iloc[
        0
    ]
    k = next(i for i, s in enumerate(sources) if s.id == grid["slide"])
    data.windows = np.array([[k, grid["y"], grid["x"]]])
    image, mask = data._load(0)
    assert np.array_equal(
        image, read_png(out / "images" / f"{grid['id']}.png", (64, 64), channels=0)
    )
    assert np.array_equal(mask, read_mask(out / "masks" / f"{grid['id']}.png", (64, 64)))
    for bad, message in (("data.epoch_windows=-5", r"data\.epoch_windows = -5: must be a count >= 0"),
                         ("data.random_share=1.0", r"data\.random_share = 1\.0: must be a share in \[0, 1\)"),
                         ("data.area_bins=0", r"data\.area_bins = 0: must be a count >= 1")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            make_loaders(
                _config("unet_resnet18_cpu.yaml", tmp_path, synthetic, "data.sampling=epoch", bad),
                0,
                1,
            )
    with pytest.raises(ValueError, match=r"data\.sampling 'fresh'; valid: static, epoch"):
        make_loaders(
            _config("unet_resnet18_cpu.yaml", tmp_path, synthetic, "data.sampling=fresh"), 0, 1
        )


def test_slide_pseudo_rules_judge_blobs_not_pixels():
    """A blob (connected map above negative_below) is confident when its peak reaches
    positive_above: windows touching only confident blobs with label pixels are positives,
    windows touching no blob negatives, the rest unsure; negatives drawn per positive."""
    from common.data.tiles import tile_grid
    from common.submit.pseudo import Rules
    from common.submit.slide_pseudo import (
        NEGATIVE,
        POSITIVE,
        UNSURE,
        confident_labels,
        pick,
        window_kinds,
    )

    prob = np.zeros((64, 96), np.uint8)
    prob[4:12, 4:12] = 100  # a confident object: a soft rim and a sure core
    prob[6:10, 6:10] = 250
    prob[40:48, 40:48] = 200  # an unsure blob: peak 0.78
    prob[4:6, 70:72] = 250  # a confident speck under the minimum size
    rules = Rules(positive_above=0.9, negative_below=0.1)
    label, unsure, blob = confident_labels(prob, rules, threshold=0.5, min_size=10)
    assert label.sum() == 16 + 64 and label[6:10, 6:10].all()  # cores above 0.5
    assert not label[4:6, 70:72].any()  # the speck is under the minimum size
    assert unsure.sum() == 64 and unsure[40:48, 40:48].all()
    assert blob.sum() == 64 + 64 + 4
    tiles = tile_grid(64, 96, 32)  # 2 x 3 windows
    kinds = window_kinds(label, unsure, blob, tiles)
    assert kinds == [POSITIVE, NEGATIVE, UNSURE, NEGATIVE, UNSURE, NEGATIVE]
    assert pick(kinds, 1.0, seed=0) in ([0, 1], [0, 3], [0, 5])
    assert pick(kinds, -1, seed=0) == [0, 1, 3, 5]
    assert pick(kinds, 0.0, seed=0) == [0]


def test_slide_pseudo_labels_from_an_ensemble(synthetic, tmp_path, monkeypatch):
    """The pseudo stage on the synthetic test slides: with a map equal to the test truth every
    blob is sure, so each positive window's mask is the truth there; an extra slide that is a
    training slide under another name is left out as a near duplicate; training draws the set
    into every fold's epoch (static and per-epoch windows) and refuses windows of a labelled
    slide."""
    import shutil

    import cv2
    import yaml

    from common.data.slide_tiles import make_loaders
    from common.infer.slide_inference import TilePlan
    from common.io.images import read_mask
    from common.post.postprocess import PROB_SCALE, quantise
    from common.submit import slide_pseudo
    from common.train.slide_runner import train_folds
    from competitions.hubmap.data import SLIDES

    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    train_folds(_config("unet_resnet18_cpu.yaml", tmp_path, synthetic), [0], SLIDES)
    truth = pd.read_csv(synthetic / "test_truth.csv", dtype=str, keep_default_na=False)
    truth = truth.set_index("id").iloc[:, 0]

    def known_map(slide, predictor, plan, small_rgb=None):  # the test truth, blurred: soft rims
        full = rle_decode(truth[slide.path.stem], slide.shape).astype(np.float32)
        h, w = plan.model_shape(slide.shape)
        small = cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA)
        yield 0, cv2.GaussianBlur(small, (5, 5), 1.0)

    monkeypatch.setattr(slide_pseudo, "predict_slide", known_map)
    extra = tmp_path / "extra"
    extra.mkdir()
    first_train = pd.read_csv(synthetic / "train.csv", dtype=str)["id"].iloc[0]
    shutil.copy(synthetic / "train" / f"{first_train}.tiff", extra / "renamed.tiff")
    for i in truth.index:
        shutil.copy(synthetic / "test" / f"{i}.tiff", extra / f"{i}.tiff")
    overrides = [f"output={tmp_path / 'models'}", f"synthetic={synthetic}", f"raw={tmp_path / 'raw'}",
                 "tta=[none]", "synthetic_scale=0.1", "overlap=16", "name=check",
                 f"pseudo.images={extra}", "pseudo.negatives_per_positive=2"]  # fmt: skip
    config = load_run_config(CONFIGS / "ensembles" / "default.yaml", overrides)
    (tmp_path / "models" / "check").mkdir(parents=True)
    (tmp_path / "models" / "check" / "thresholds.yaml").write_text(
        yaml.safe_dump({"threshold": 0.5, "min_size": 0}))  # fmt: skip
    record = slide_pseudo.build_slide_pseudo(config, SLIDES, "hubmap", log=lambda _: None)
    out = tmp_path / "data" / "hubmap" / "pseudo" / "check"
    c = record["counts"]
    assert record["excluded"] == {
        "renamed": "a near duplicate of a training image (correlation >= 0.995)"
    }
    assert c["slides"] == len(truth) and c["positive"] > 0 and c["negative"] <= 2 * c["positive"]
    assert c["windows"] == sum(
        c[k] for k in ("background", "positive", "negative", "negative_not_kept", "unsure")
    )
    table = pd.read_csv(out / "256_64" / "train.csv", dtype={"id": str, "slide": str})
    assert len(table) == c["kept"] and table["has_mask"].sum() == c["positive"]
    for row in table.itertuples():  # the label is the whole slide's map above 0.5, cut
        shape = slide_shape(extra / f"{row.slide}.tiff")
        with open_slide(extra / f"{row.slide}.tiff") as slide:
            (_, blurred), = known_map(slide, None, TilePlan(tile=64, scale=4.0))  # fmt: skip
        y, x = (
            round(row.y * blurred.shape[0] / shape[0]),
            round(row.x * blurred.shape[1] / shape[1]),
        )
        expected = quantise(blurred[y : y + 64, x : x + 64]) / PROB_SCALE > 0.5
        mask = read_mask(out / "256_64" / "masks" / f"{row.id}.png", (64, 64))
        assert np.array_equal(mask > 0, expected), row.id
        assert row.has_mask == int(expected.any()) and row.mask_area == expected.sum() * 16
    assert table["has_mask"].any() and not table["has_mask"].all()
    assert (out / f"{truth.index[0]}.png").is_file() and (out / "provenance.json").is_file()
    for sampling in ("static", "epoch"):
        trained = _config("unet_resnet18_cpu.yaml", tmp_path, synthetic, f"data.sampling={sampling}",
                          f"data.pseudo.folder={out}", "data.pseudo.share=0.5")  # fmt: skip
        loader, _ = make_loaders(trained, 0, seed=1)
        drawn = list(loader.sampler)
        n_base = len(loader.dataset.datasets[0])
        assert len(loader.dataset.datasets[1]) == len(table)
        assert sum(i >= n_base for i in drawn) == pytest.approx(len(drawn) / 2, abs=1)
    (extra / "broken.tiff").write_bytes(b"not a tiff")  # bad input: one error naming the file
    with pytest.raises(ValueError, match=r"broken\.tiff: not a readable TIFF"):
        slide_pseudo.build_slide_pseudo(config, SLIDES, "hubmap", log=lambda _: None)
    assert len(pd.read_csv(out / "256_64" / "train.csv")) == len(table)  # the old set stays whole
    table.loc[0, "slide"] = first_train
    table.to_csv(out / "256_64" / "train.csv", index=False)
    with pytest.raises(
        ValueError, match=rf"pseudo-labelled windows come from training slides, e.g. {first_train}"
    ):
        make_loaders(trained, 0, seed=1)


def test_tile_filter_uses_the_pair_searched_without_the_fold(tmp_path):
    """The filter's threshold for fold k's training tiles is the cross-fitted pair fold k was scored
    with (searched on the other folds' slides), not the pair searched on every slide."""
    from common.train.slide_runner import fold_pair

    config = to_config({"name": "run", "output": str(tmp_path)})
    assert fold_pair(config, 0) == {}  # before a search
    run = tmp_path / "run"
    run.mkdir()
    (run / "thresholds.yaml").write_text("threshold: 0.5\nmin_size: 2000\n")
    pairs = {"0": {"threshold": 0.35, "min_size": 1000}, "1": {"threshold": 0.6, "min_size": 0}}
    summary = {"threshold_search": "cross-fitted", "fold_thresholds": pairs}
    (run / "oof.json").write_text(json.dumps(summary))
    assert fold_pair(config, 0) == pairs["0"] and fold_pair(config, 1) == pairs["1"]
    assert fold_pair(config, 2) == {"threshold": 0.5, "min_size": 2000}  # a fold never scored
    summary["threshold_search"] = "in-sample (one fold)"
    (run / "oof.json").write_text(json.dumps(summary))
    assert fold_pair(config, 0) == {"threshold": 0.5, "min_size": 2000}


def test_organisers_misses_and_where_extra_annotations_count(synthetic, tmp_path, monkeypatch):
    """synthetic_unannotated leaves glomeruli out of train.csv and <id>.json and writes them as
    extra GeoJSON: the slides are the same, and train.csv OR-ed with the extras is the complete
    truth. data.extra_use says whether the extras reach the training tiles and the OOF truth."""
    from common.data.slide_tiles import prepare, read_tiles
    from common.io.polygons import union_rle
    from common.post import slide_evaluate
    from common.post.slide_evaluate import oof_slides
    from competitions.hubmap.data import SLIDES

    missed = generate(tmp_path / "missed", SyntheticSpec(scale=0.1, unannotated=0.4))
    complete = pd.read_csv(synthetic / "train.csv", dtype=str, keep_default_na=False)
    partial = pd.read_csv(missed / "train.csv", dtype=str, keep_default_na=False)
    assert list(complete["id"]) == list(partial["id"])
    shapes = {}
    for image_id, full, part in zip(
        complete["id"], complete["encoding"], partial["encoding"], strict=True
    ):
        a, b = synthetic / "train" / f"{image_id}.tiff", missed / "train" / f"{image_id}.tiff"
        assert a.read_bytes() == b.read_bytes()  # the same slide, fewer annotations
        with open_slide(a) as slide:
            shapes[image_id] = shape = slide.shape
        extra = read_geojson(missed / "extra_annotations" / f"{image_id}.json")
        drawn = read_geojson(missed / "train" / f"{image_id}.json", log=lambda _: None)
        assert len(extra) >= 1 and len(drawn) + len(extra) == len(
            read_geojson(synthetic / "train" / f"{image_id}.json", log=lambda _: None)
        )
        assert rle_decode(part, shape).sum() < rle_decode(full, shape).sum()
        assert union_rle(part, shape, extra) == full
    assert not (synthetic / "extra_annotations").exists()  # the default set misses nothing
    with pytest.raises(ValueError, match=r"unannotated share 0\.95"):
        SyntheticSpec(unannotated=0.95)

    def config(use):
        return _config("unet_resnet18_cpu.yaml", tmp_path, missed, f"data.raw={missed}",
                       f"data.extra_annotations={missed / 'extra_annotations'}",
                       f"data.extra_use={use}", f"output={tmp_path / use}")  # fmt: skip

    prepare(config("score"), SLIDES, log=lambda _: None)
    _, slides, plain = read_tiles(config("score"))
    assert (slides["extra_objects"] == 0).all()  # the truth only: the tiles are train.csv's
    prepare(config("both"), SLIDES, log=lambda _: None)
    _, slides, tiles = read_tiles(config("both"))
    assert (slides["extra_objects"] >= 1).all() and tiles["mask_area"].sum() > plain[
        "mask_area"
    ].sum()
    unions = []
    monkeypatch.setattr(slide_evaluate, "union_rle", lambda *a: unions.append(a) or union_rle(*a))
    slide_evaluate._with_extras.cache_clear()
    for use in ("both", "score", "train"):
        for row in slides.itertuples():
            oof = tmp_path / use / "unet_resnet18_cpu" / f"fold{row.fold}" / "oof"
            oof.mkdir(parents=True, exist_ok=True)
            (oof / f"{row.id}.tiff").touch()  # only its presence matters to the truth
        truth = {s["id"]: s["rle"] for s in oof_slides(config(use), SLIDES)}
        expected = complete if use != "train" else partial
        assert truth == dict(zip(expected["id"], expected["encoding"], strict=True)), use
    assert len(unions) == len(slides)  # once a slide: "score" reuses what "both" merged
    with pytest.raises(
        ValueError, match=r"data.extra_use = 'all': expected one of both, train, score"
    ):
        prepare(config("all"), SLIDES, log=lambda _: None)
    nowhere = _config("unet_resnet18_cpu.yaml", tmp_path / "other", missed, f"data.raw={missed}",
                      f"data.extra_annotations={tmp_path / 'nowhere'}")  # fmt: skip
    with pytest.raises(ValueError, match=r"data.extra_annotations: .*nowhere is not a folder"):
        prepare(nowhere, SLIDES, log=lambda _: None)
    assert not (tmp_path / "other" / "prepared").exists()  # nothing half-written
    share = _config("unet_resnet18_cpu.yaml", tmp_path / "bad", tmp_path / "bad" / "set",
                    "data.synthetic_unannotated=0.95")  # fmt: skip
    with pytest.raises(ValueError, match=r"data.synthetic_unannotated=0.95: .* expected 0 .. 0.9"):
        prepare(share, SLIDES, log=lambda _: None)
    assert not (tmp_path / "bad").exists()  # the key is named before anything is written
