"""Crop cascades: boxes from masks (margin, square, fallback), crops and paste-back, box files."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.crops import (
    Box,
    crop_image,
    crop_mask,
    find_box,
    paste,
    read_boxes,
    whole,
    write_boxes,
)


def _lungs(shape=(100, 120)):
    masks = np.zeros((3, *shape), np.float32)
    masks[0, 20:70, 10:40] = 0.9  # left
    masks[1, 25:80, 60:95] = 0.8  # right
    return masks


def test_box_around_required_channels_with_margin_and_square():
    masks = _lungs()
    tight = find_box(masks, required=(0, 1), margin=0, square=False)
    assert (tight.y0, tight.y1, tight.x0, tight.x1, tight.fallback) == (20, 80, 10, 95, "")
    box = find_box(masks, required=(0, 1), margin=0.1, square=False)
    assert (box.y0, box.y1, box.x0, box.x1) == (14, 86, 1, 104)  # 6 and 9 px each side
    sq = find_box(masks, required=(0, 1), margin=0.1)
    assert (sq.y0, sq.y1, sq.x0, sq.x1) == (0, 100, 1, 104)  # 103 a side, as far as 100 rows allow
    centred = find_box(masks[:1], required=(0,), margin=0)  # 50 x 30 -> 50 x 50
    assert (centred.y0, centred.y1, centred.x0, centred.x1) == (20, 70, 0, 50)  # shifted inside
    big = find_box(masks, required=(0, 1), margin=1.0)  # wider than the image: clipped to it
    assert (big.y0, big.y1, big.x0, big.x1) == (0, 100, 0, 120)
    assert 0 < tight.kept() < box.kept() <= 1
    masks[2, 90:95, 100:110] = 1  # a third structure: outside the box around the two required
    assert find_box(masks, required=(0, 1), margin=0, square=False) == tight
    everything = find_box(masks, margin=0, square=False)  # none required: around all channels
    assert (everything.y0, everything.y1, everything.x0, everything.x1) == (20, 95, 10, 110)
    masks[2, 0:2, 0:2] = 1  # a stray blob: only the largest blob of a channel counts
    assert find_box(masks, margin=0, square=False) == everything
    assert find_box(masks, margin=0, square=False, largest=False).y0 == 0


def test_missing_structure_falls_back_to_the_whole_image():
    masks = _lungs()
    masks[1] = 0  # the lung model found one side only
    box = find_box(masks, required=(0, 1), min_area=50)
    assert (box.y0, box.y1, box.x0, box.x1) == (
        0,
        100,
        0,
        120,
    ) and "channel 1: 0 px" in box.fallback
    assert find_box(np.zeros((10, 10)), margin=0).fallback == "nothing found"
    small = _lungs()
    small[0] = 0
    small[0, 5, 5] = 1  # a speck under min_area
    assert find_box(small, required=(0, 1), min_area=2).fallback.startswith("channel 0: 1 px")


def test_crop_and_paste_back():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 120), dtype=np.uint8)
    box = Box(10, 60, 20, 70, (100, 120))
    np.testing.assert_array_equal(crop_image(image, box, 50), image[10:60, 20:70])
    assert crop_image(np.dstack([image] * 3), box, 32).shape == (32, 32, 3)
    mask = np.zeros((100, 120), np.uint8)
    mask[20:40, 30:50] = 1
    small = crop_mask(mask, box, 25)  # half size: areas kept
    assert small.sum() == 100 and set(np.unique(small)) == {0, 1}
    prob = paste(small.astype(np.float32), box)
    assert prob.shape == (100, 120) and prob[:10].sum() == 0 and prob[:, :20].sum() == 0
    assert abs(int((prob > 0.5).sum()) - 400) <= 40 and (prob[25:35, 35:45] > 0.5).all()
    exact = paste(mask[10:60, 20:70][None].astype(np.float32), box)  # (C, h, w), same size
    np.testing.assert_array_equal(exact[0], mask * 1.0)
    with pytest.raises(ValueError, match=r"an image of \(50, 50\) with a box for \(100, 120\)"):
        crop_image(image[:50, :50], box, 8)


def test_scaled_boxes_cover_the_same_region():
    box = Box(10, 61, 21, 70, (256, 256))
    big = box.scaled((1024, 1024))
    assert (big.y0, big.y1, big.x0, big.x1, big.shape) == (40, 244, 84, 280, (1024, 1024))
    assert big.scaled((256, 256)) == box
    odd = Box(1, 3, 1, 3, (3, 3)).scaled((10, 10))
    assert (odd.y0, odd.y1) == (3, 10)  # outwards: 3.33 -> 3, 10 -> 10
    assert whole((5, 7)).scaled((10, 14)) == whole((10, 14))


def test_box_files_round_trip_and_bad_rows(tmp_path):
    boxes = {"a": Box(1, 5, 2, 9, (10, 12)), "b.2": whole((10, 12), "channel 1: 0 px < 50")}
    write_boxes(tmp_path / "boxes.csv", boxes)
    assert read_boxes(tmp_path / "boxes.csv") == boxes
    (tmp_path / "bad.csv").write_text(
        "id,y0,y1,x0,x1,height,width,fallback\na,1,5,2,9,10,12,\nb,0,11,0,5,10,12,\n"
    )
    with pytest.raises(
        ValueError, match=r"bad\.csv, line 3 \(b\): box y 0:11, x 0:5 is not inside 10x12"
    ):
        read_boxes(tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("id,y0\na,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_boxes(tmp_path / "cols.csv")
    with pytest.raises(ValueError, match="not inside"):
        Box(0, 0, 0, 5, (10, 10))


def test_a_crop_stage_from_fold_checkpoints(tmp_path):
    import torch

    from common.config import load_config
    from common.infer.cascade import load_stage, predict_boxes
    from common.train.checkpoints import save_checkpoint
    from common.train.models import build_model
    from tests.conftest import REPO

    config = load_config(REPO / "competitions" / "lung" / "configs" / "lungs_only.yaml",
                         ["data.size=64"]).to_dict()  # fmt: skip
    model = build_model(
        task="segmentation",
        arch="Unet",
        encoder="resnet18",
        in_channels=config["data"]["in_channels"],
        classes=2,
    )
    head = model.net.segmentation_head[0]
    torch.nn.init.zeros_(head.weight)
    head.bias.data = torch.tensor([10.0, -10.0])  # channel 0 everywhere, channel 1 nowhere
    (tmp_path / "run" / "fold0").mkdir(parents=True)
    save_checkpoint(
        tmp_path / "run" / "fold0" / "final.pt", {"model": model.state_dict(), "config": config}
    )
    stage = load_stage(tmp_path, "run", [0], torch.device("cpu"))
    assert stage.size == 64 and stage.models[0].model.net.segmentation_head[0].out_channels == 2
    images = [("wide", np.zeros((300, 200), np.uint8)), ("rgb", np.zeros((50, 50, 3), np.uint8))]
    boxes = dict(predict_boxes(stage, images, required=(0, 1), batch_size=1))
    assert boxes["wide"] == whole((300, 200), "channel 1: 0 px < 41")  # 1% of 64 x 64
    found = dict(predict_boxes(stage, images[:1], required=(0,)))["wide"]
    assert (found.y0, found.y1, found.x0, found.x1, found.fallback) == (0, 300, 0, 200, "")
    with pytest.raises(ValueError, match=r"fold1/final\.pt not found: train run fold 1 first"):
        load_stage(tmp_path, "run", [1], torch.device("cpu"))
