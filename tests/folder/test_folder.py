"""The dataset-folder competition: every documented layout read to the same masks, the RLE
forms against the codecs, one clear error per bad input, the plan, and the stages end to end."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from common.data.plan import fingerprint, make_plan, plan_overrides, plan_table
from common.io.folder import DatasetError, read_image, scan
from tests.folder.layouts import draw, write_folder

LAYOUTS = ("png", "indexed", "classes", "csv", "long", "relative")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {layout: write_folder(root / layout, layout, test_masks=True) for layout in LAYOUTS}


def test_every_layout_reads_the_masks_that_were_drawn(folders):
    rng = np.random.default_rng(0)  # the generator's draws, in its order
    expected = {}
    for split, n in (("train", 12), ("test", 4)):
        for k in range(n):
            expected[f"{split}{k:03d}"] = draw(rng, (64, 80), empty=k % 4 == 3)[1]
    for layout, path in folders.items():
        folder = scan(path)
        multi = layout in ("indexed", "classes", "long")
        assert len(folder.classes) == (2 if multi else 1), layout
        assert sorted(folder.train) == [f"train{k:03d}" for k in range(12)]
        for image_id, masks in expected.items():
            split = image_id[:-3]
            got = folder.read_masks(image_id, (64, 80), split)
            want = masks if multi else masks.any(axis=0, keepdims=True).astype(np.uint8)
            np.testing.assert_array_equal(got, want, err_msg=f"{layout} {image_id}")
        assert folder.test_truth


def test_class_names_codes_and_spec(tmp_path):
    folder = scan(write_folder(tmp_path / "c", "classes"))
    assert folder.classes == ("disc", "square") and folder.codes == ("disc", "square")
    named = write_folder(
        tmp_path / "n", "indexed", spec={"classes": ["disc", "square"], "metric": "jaccard"}
    )
    folder = scan(named)
    assert folder.classes == ("disc", "square") and folder.codes == ("1", "2")
    assert folder.spec.metric == "jaccard" and folder.name == "n"
    (named / "dataset.yaml").write_text(yaml.safe_dump({"metrics": "dice"}))
    with pytest.raises(ValueError, match=r"dataset\.yaml: unknown key\(s\) \['metrics'\]"):
        scan(named)


def test_sixteen_bit_and_rgb_images(tmp_path):
    folder = scan(write_folder(tmp_path / "deep", "png", bits=16, ext=".tif"))
    image = read_image(folder.train["train000"])
    assert image.dtype == np.uint8 and image.shape == (64, 80) and image.max() == 255


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_mask", r"train001\.png: image without a mask"),
        ("two_ext", r"train002\.png: id 'train002' also as train002\.jpg"),
        ("unknown_ext", r"train000\.gif: unknown extension '\.gif'"),
        ("bad_values", r"mask values \[0, 7, 200\] are neither binary"),
        ("wrong_size", r"train003\.png: mask is 10x10, its image 64x80"),
    ],
)
def test_bad_input_is_one_clear_error_and_skip_bad_leaves_it_out(tmp_path, breakage, message):
    root = write_folder(tmp_path / breakage, "png", n_test=0)
    masks, images = root / "train" / "masks", root / "train" / "images"
    if breakage == "no_mask":
        (masks / "train001.png").unlink()
    elif breakage == "two_ext":
        (images / "train002.jpg").write_bytes((images / "train002.png").read_bytes())
    elif breakage == "unknown_ext":
        (images / "train000.gif").write_bytes(b"GIF89a")
    elif breakage == "bad_values":
        import cv2

        cv2.imwrite(str(masks / "train004.png"), np.array([[0, 7], [200, 0]], np.uint8))
    elif breakage == "wrong_size":
        import cv2

        cv2.imwrite(str(masks / "train003.png"), np.zeros((10, 10), np.uint8))
    if breakage == "wrong_size":  # found when the mask is read (prepare), named alike
        with pytest.raises(ValueError, match=message):
            scan(root).read_masks("train003", (64, 80))
        return
    with pytest.raises(DatasetError, match=message):
        scan(root)
    kept = scan(root, skip_bad=True)
    assert len(kept.bad) == 1 and len(kept.train) == (12 if breakage == "unknown_ext" else 11)


def test_rle_past_the_image_names_the_row_and_empty_folder(tmp_path):
    root = write_folder(tmp_path / "csv", "csv", n_test=0)
    lines = (root / "train.csv").read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",5115 10"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.csv line 2 \(train000\): .*past"):
        scan(root).read_masks("train000", (64, 80))
    (tmp_path / "empty" / "train" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty folder"):
        scan(tmp_path / "empty")


def test_plan_follows_the_fingerprint():
    import pandas as pd

    rows = pd.DataFrame({"height": [512] * 40, "width": [512] * 40, "channels": 1, "p01": 3.0,
                         "p99": 250.0, "mean": 100.0, "objects": [1] * 10 + [0] * 30,
                         "median_object": [30.0] * 10 + [0.0] * 30,
                         "area_mask": [30] * 10 + [0] * 30})  # fmt: skip
    summary = fingerprint(rows, ["mask"])
    assert summary["empty_share"] == 0.75 and summary["side"] == 512
    plan = dict((k, v) for k, v, _ in make_plan(summary, n_train=32, n_val=8, throughput=8.0,
                                                 minutes=2))  # fmt: skip
    assert plan["data.size"] == 512 and plan["data.crop"] == 256  # small objects: crops
    assert plan["data.sample_rate.kind"] == "fixed" and plan["predict.tta"] == ["none", "hflip"]
    assert 8 <= plan["train.epochs"] <= 80 and plan["data.batch_size"] == 8
    assert plan["data.num_workers"] == 0 and plan["optim.lr"] == 1e-3  # CPU, random init
    slower = dict((k, v) for k, v, _ in make_plan(summary, n_train=32, n_val=8, throughput=4.0,
                                                   minutes=2))  # fmt: skip
    assert slower["train.epochs"] < plan["train.epochs"]  # the epochs fit the minutes
    large = summary | {"median_object": 5000.0}
    plan = dict((k, v) for k, v, _ in make_plan(large, n_train=32, n_val=8, throughput=8.0,
                                                 minutes=2, orientation_sensitive=True,
                                                 random_init=False, gpu=True))  # fmt: skip
    assert plan["data.size"] == 256 and plan["data.crop"] == 0 and plan["predict.tta"] == ["none"]
    assert "optim.lr" not in plan and "data.num_workers" not in plan
    assert "data.size=256" in plan_overrides([("data.size", 256, "")])
    assert "| data.size | 300 | overridden" in plan_table(summary, [("data.size", 256, "x")],
                                                          {"data.size": 300})  # fmt: skip


TINY = ["plan.throughput=1000", "plan.minutes=0.5", "train.epochs=1", "data.num_workers=0", "train.amp=none",
        "predict.overlays=2", "data.n_folds=3"]  # fmt: skip


@pytest.mark.parametrize("layout", ["png", "long"])
def test_fold0_then_ensemble_from_the_command_line(tmp_path, monkeypatch, layout):
    import json

    from common.cli import main

    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path / "ws"))
    root = write_folder(tmp_path / layout, layout, test_masks=True, sample=True)
    main(["train", "--dataset", str(root), *TINY])
    run = tmp_path / "ws" / "models" / layout / "auto"
    metrics = json.loads((run / "fold0" / "metrics.json").read_text())
    assert metrics["metric"].startswith("OOF Dice") and 0 <= metrics["score"] <= 1
    assert metrics["empty_score"] == pytest.approx(1 / 4, abs=0.26)  # a quarter are empty
    assert "| train.epochs | 1 | overridden" in (run / "plan.md").read_text()
    for name in ("overlays.png", "search.png", "curves.png", "thresholds.yaml", "config.yaml"):
        assert (run / "fold0" / name).stat().st_size > 0, name
    main(["ensemble", "--dataset", str(root)])
    csv = tmp_path / "ws" / "submissions" / layout / "default.csv"
    sample = (root / "sample_submission.csv").read_text().splitlines()
    lines = csv.read_text().splitlines()
    assert lines[0] == sample[0] and len(lines) == len(sample)
    assert [line.rsplit(",", 1)[0] for line in lines] == [s.rsplit(",", 1)[0] for s in sample]
    report = json.loads(csv.with_suffix(".json").read_text())
    assert report["validated"]["rows"] == len(sample) - 1 and 0 <= report["test_score"] <= 1
    with pytest.raises(SystemExit, match=r"folder train: .*no train/images"):
        main(["train", "--dataset", str(tmp_path / "nowhere")])
