"""SIIM prepare: synthetic and real (stage-2 layout) inputs, incremental re-runs, bad input, folds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.folds import ensure_folds, read_folds
from common.io.cache import CacheError
from common.io.dicom import read_dicom
from common.io.images import read_mask, read_png, resize_mask
from common.io.rle_csv import merged_masks, read_rle_csv
from competitions.siim.layout import read_inputs, resolve_inputs
from competitions.siim.prepare import full_mask_path, main, prepare
from competitions.siim.synthetic import SyntheticSpec, generate
from tests.conftest import shared_path

SPEC = SyntheticSpec(size=64, n_train=30, n_test=6, seed=0)
SIIM_307 = "1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("siim") / "synthetic", SPEC, n_jobs=1)


def _copy_synthetic(synthetic: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic, tmp_path / "raw"))


def test_synthetic_is_announced_and_prepared(synthetic, tmp_path):
    messages = []
    inputs = resolve_inputs(tmp_path / "absent", synthetic, SPEC, n_jobs=1, log=messages.append)
    assert inputs.synthetic and "SYNTHETIC" in messages[0]
    counts = prepare(inputs, tmp_path / "out", 48, n_jobs=1)
    assert counts == {"train": 30, "test": 6, "done": 36, "cached": 0, "bad": 0}
    train = pd.read_csv(tmp_path / "out" / "train.csv", dtype={"ImageId": str})
    test = pd.read_csv(tmp_path / "out" / "test.csv", dtype={"ImageId": str})
    assert list(test["ImageId"]) == list(read_rle_csv(synthetic / "sample_submission.csv").ImageId)
    truth = merged_masks(read_rle_csv(synthetic / "train-rle.csv"), (64, 64))
    for row in train.itertuples():
        mask = truth[row.ImageId]
        assert row.mask_area == mask.sum() and row.has_mask == int(mask.any())
        assert (row.height, row.width) == (64, 64)
        stored = read_mask(tmp_path / "out" / "masks" / f"{row.ImageId}.png", (48, 48))
        np.testing.assert_array_equal(stored, resize_mask(mask, 48))
        full = full_mask_path(tmp_path / "out", row.ImageId, (64, 64), 48)
        np.testing.assert_array_equal(read_mask(full, (64, 64)), mask)
    assert 0 < train["has_mask"].mean() < 0.6
    assert (train["n_annotations"] > 1).any()
    assert set(train["PhotometricInterpretation"]) <= {"MONOCHROME1", "MONOCHROME2"}
    image = read_png(tmp_path / "out" / "images" / f"{test.ImageId[0]}.png", (48, 48))
    assert image.std() > 5


def test_rerun_is_incremental(synthetic, tmp_path):
    raw = _copy_synthetic(synthetic, tmp_path)
    out = tmp_path / "out"
    prepare(read_inputs(raw, synthetic=False), out, 64, n_jobs=1)
    before = (out / "train.csv").read_bytes()
    again = prepare(read_inputs(raw, synthetic=False), out, 64, n_jobs=1)
    assert (again["done"], again["cached"]) == (0, 36)
    assert (out / "train.csv").read_bytes() == before
    touched = next(raw.rglob("*.dcm"))
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    (out / "images" / f"{next(raw.rglob('*.dcm')).stem}.png").unlink(missing_ok=True)
    third = prepare(read_inputs(raw, synthetic=False), out, 64, n_jobs=1)
    assert (third["done"], third["cached"]) == (1, 35)
    assert not (out / "full_masks").exists()  # native size: the training masks are the truth
    first = next(iter(read_rle_csv(raw / "train-rle.csv").ImageId))
    assert full_mask_path(out, first, (64, 64), 64) == out / "masks" / f"{first}.png"
    bigger = prepare(read_inputs(raw, synthetic=False), tmp_path / "out96", 96, n_jobs=1)
    assert bigger["done"] == 36


def test_bad_images_are_listed_then_skipped_on_request(synthetic, tmp_path):
    raw = _copy_synthetic(synthetic, tmp_path)
    dicoms = sorted(raw.rglob("*.dcm"))
    dicoms[0].write_bytes(dicoms[0].read_bytes()[:400])  # truncated
    dicoms[1].unlink()  # listed in a CSV, no file
    out = tmp_path / "out"
    with pytest.raises(CacheError) as caught:
        prepare(read_inputs(raw, synthetic=False), out, 64, n_jobs=2)
    assert {bad[0] for bad in caught.value.bad} == {dicoms[0].stem, dicoms[1].stem}
    assert "--skip-bad" in str(caught.value) and dicoms[0].stem in str(caught.value)
    assert not (out / "train.csv").exists() and not (out / "test.csv").exists()
    counts = prepare(read_inputs(raw, synthetic=False), out, 64, n_jobs=2, skip_bad=True)
    assert counts["bad"] == 2 and counts["train"] + counts["test"] == 34
    listed = pd.read_csv(out / "bad_ids.csv")
    assert set(listed["id"]) == {dicoms[0].stem, dicoms[1].stem}
    kept = pd.concat([pd.read_csv(out / f"{s}.csv", dtype=str) for s in ("train", "test")])
    assert not {dicoms[0].stem, dicoms[1].stem} & set(kept["ImageId"])


def test_bad_rle_names_the_line(synthetic, tmp_path):
    raw = _copy_synthetic(synthetic, tmp_path)
    csv = raw / "train-rle.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ", 5 7 3"  # odd token count
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match=r"train-rle.csv, line 3"):
        prepare(read_inputs(raw, synthetic=False), tmp_path / "out", 64, n_jobs=1)


def test_raw_folder_without_csv_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"train-rle\.csv"):
        resolve_inputs(tmp_path / "raw", tmp_path / "syn", SPEC)


def test_folds_kept_while_ids_match(synthetic, tmp_path):
    inputs = read_inputs(synthetic, synthetic=True)
    prepare(inputs, tmp_path / "out", 64, n_jobs=1)
    train = pd.read_csv(tmp_path / "out" / "train.csv", dtype={"ImageId": str})
    assert ensure_folds(
        train["ImageId"], train["mask_area"], tmp_path / "folds.csv", 5, 42
    ).startswith("wrote")
    assert ensure_folds(
        train["ImageId"], train["mask_area"], tmp_path / "folds.csv", 5, 42
    ).startswith("kept")
    assert ensure_folds(
        train["ImageId"][1:], train["mask_area"][1:], tmp_path / "folds.csv", 5, 42
    ).startswith("wrote")
    assert len(read_folds(tmp_path / "folds.csv")) == 29


def test_main_end_to_end(synthetic, tmp_path, capsys):
    spec = ["--synthetic-size", "64", "--synthetic-train", "30", "--synthetic-test", "6"]
    paths = ["--raw", str(tmp_path / "absent"), "--synthetic", str(synthetic)]
    paths += ["--out", str(tmp_path / "p"), "--folds", str(tmp_path / "folds.csv")]
    main([*spec, *paths, "--size", "64", "--jobs", "1"])
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "prepared 30 train + 6 test" in out
    assert sorted(read_folds(tmp_path / "folds.csv")["fold"].unique()) == [0, 1, 2, 3, 4]


def test_real_stage2_layout(tmp_path):
    """Stage 2: stage-1 folders, a flat ID_* test folder, stage_2_train.csv without spaces."""
    dicom_dir, stage2_dir = shared_path("siim", "dicom"), shared_path("siim", "stage2_test_dicom")
    annotations = read_rle_csv(shared_path("siim", "train-rle.reconstructed.csv"))
    raw = tmp_path / "raw"
    train_ids = []
    for path in sorted(dicom_dir.glob("*.dcm")):
        if path.stem in set(annotations["ImageId"]):
            target = raw / "dicom-images-train" / "study" / path.stem / path.name
            target.parent.mkdir(parents=True)
            shutil.copy(path, target)
            train_ids.append(path.stem)
    shutil.copytree(stage2_dir, raw / "stage_2_images")
    rows = annotations[annotations["ImageId"].isin(train_ids)]
    text = "ImageId,EncodedPixels\n" + "".join(f"{i},{e}\n" for i, e in rows.iloc[:, :2].values)
    (raw / "stage_2_train.csv").write_text(text)
    test_ids = sorted(p.stem for p in stage2_dir.glob("*.dcm"))
    sample = "ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in test_ids)
    (raw / "stage_2_sample_submission.csv").write_text(sample)

    inputs = resolve_inputs(raw, tmp_path / "unused", n_jobs=1)
    assert not inputs.synthetic and inputs.train_csv.name == "stage_2_train.csv"
    counts = prepare(inputs, tmp_path / "out", 256, n_jobs=2)
    assert (counts["train"], counts["test"], counts["bad"]) == (len(train_ids), 8, 0)
    train = pd.read_csv(tmp_path / "out" / "train.csv", dtype={"ImageId": str}).set_index("ImageId")
    union = merged_masks(annotations[annotations["ImageId"] == SIIM_307])[SIIM_307]
    assert train.loc[SIIM_307, "n_annotations"] == 4
    assert train.loc[SIIM_307, "mask_area"] == union.sum() > 0
    assert (train["height"] == 1024).all() and set(train["ViewPosition"]) <= {"AP", "PA"}
    test = pd.read_csv(tmp_path / "out" / "test.csv", dtype={"ImageId": str})
    assert sorted(test["ImageId"]) == test_ids
    image = read_png(tmp_path / "out" / "images" / f"{test_ids[0]}.png", (256, 256))
    native = read_dicom(stage2_dir / f"{test_ids[0]}.dcm")
    assert abs(float(image.mean()) - float(native.mean())) < 1.0


def test_config_prepares_every_part_size(synthetic, tmp_path, capsys):
    base = Path(__file__).resolve().parents[2] / "competitions" / "siim" / "configs" / "base.yaml"
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"base: {base}\ndata: {{size: 48, prepared: {tmp_path / 'p'}, folds: {tmp_path / 'f.csv'}}}\n"
        "train: {parts: [{}, {data: {size: 64}}]}\n"
    )
    spec = ["--synthetic-size", "64", "--synthetic-train", "30", "--synthetic-test", "6"]
    paths = ["--raw", str(tmp_path / "absent"), "--synthetic", str(synthetic)]
    main([*spec, *paths, "--config", str(config), "--jobs", "1"])
    assert (tmp_path / "p" / "48" / "train.csv").is_file()
    assert (tmp_path / "p" / "64" / "train.csv").is_file() and (tmp_path / "f.csv").is_file()
