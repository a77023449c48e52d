"""common.data.datasets: JSON pipelines, per-worker and per-epoch augmentation seeds, non-empty samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.data.datasets import (
    NonEmptyRateSampler,
    SegmentationDataset,
    linear_rate,
    load_transforms,
    seed_worker,
)
from common.io.images import write_png
from tests.conftest import REPO

TRANSFORMS = REPO / "competitions" / "siim" / "transforms"


@pytest.fixture
def prepared(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_png(tmp_path / "images" / f"{name}.png", rng.integers(0, 256, (64, 64), np.uint8))
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 5:20] = 255 if name == "a" else 0
        write_png(tmp_path / "masks" / f"{name}.png", mask)
    return tmp_path


@pytest.mark.parametrize("name", ["light", "heavy"])
def test_pipelines_load_at_any_size(prepared, name):
    for size in (64, 96):
        pipeline = load_transforms(TRANSFORMS / f"{name}.json", size)
        out = pipeline(
            image=np.zeros((size, size), np.uint8), mask=np.zeros((size, size), np.uint8)
        )
        assert out["image"].shape[:2] == (size, size) and out["mask"].shape == (size, size)


def test_bad_pipeline_files(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_transforms(tmp_path / "absent.json", 64)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_transforms(tmp_path / "bad.json", 64)
    spec = {"transform": {"__class_fullname__": "NoSuchTransform", "p": 1.0}}
    (tmp_path / "unknown.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="not an albumentations pipeline"):
        load_transforms(tmp_path / "unknown.json", 64)


def test_dataset_tensors(prepared):
    dataset = SegmentationDataset(["a", "b"], prepared / "images", prepared / "masks", size=64)
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and float(item["mask"].sum()) == 20 * 15
    assert float(item["label"]) == 1.0 and float(dataset[1]["label"]) == 0.0
    single = SegmentationDataset(["a"], prepared / "images", size=64, in_channels=1)
    assert single[0]["image"].shape == (1, 64, 64) and "mask" not in single[0]
    with pytest.raises(ValueError, match=r"expected \(32, 32\)"):
        SegmentationDataset(["a"], prepared / "images", size=32)[0]


def _epochs(prepared, worker_init_fn, epochs=2):
    """Images of the same input picture, per epoch, as seen through 2 forked workers."""
    transform = load_transforms(TRANSFORMS / "light.json", 64)
    dataset = SegmentationDataset(["a"] * 8, prepared / "images", size=64, transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=1,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(0),
        multiprocessing_context="fork",
    )
    return [[batch["image"][0].numpy() for batch in loader] for _ in range(epochs)]


def _same(xs, ys) -> int:
    return sum(np.array_equal(x, y) for x, y in zip(xs, ys, strict=True))


def test_workers_and_epochs_see_different_augmentations(prepared):
    first, second = _epochs(prepared, seed_worker)
    # batches alternate between the workers; each step of the pipeline fires with p = 0.5, so an
    # identical pair happens by chance (1 in 8 or less), a replayed stream makes all 4 identical
    assert _same(first[0::2], first[1::2]) <= 1
    assert _same(first, second) <= 2


def test_without_reseeding_the_albumentations_pitfall_shows(prepared):
    """Evidence that the test above can fail: forked workers replay the parent's stream."""
    first, second = _epochs(prepared, None)
    assert _same(first[0::2], first[1::2]) == 4 and _same(first, second) == 8


def test_sampler_rate_schedule_and_determinism():
    has_mask = np.r_[np.ones(30, bool), np.zeros(170, bool)]
    rate = linear_rate(0.8, 0.2, epochs=4)
    sampler = NonEmptyRateSampler(has_mask, rate, epoch_size=100, seed=1)
    for epoch, expected in enumerate([0.8, 0.6, 0.4, 0.2]):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler) == 100
        assert has_mask[indices].mean() == pytest.approx(expected)
        assert len(set(np.asarray(indices)[has_mask[indices]])) == min(30, round(100 * expected))
    sampler.set_epoch(1)
    again = NonEmptyRateSampler(has_mask, rate, epoch_size=100, seed=1)
    again.set_epoch(1)
    assert list(sampler) == list(again)


def test_plain_shuffle_covers_every_index_once():
    sampler = NonEmptyRateSampler(np.zeros(37, bool))
    assert sorted(sampler) == list(range(37))
    with pytest.raises(ValueError, match="both empty and non-empty"):
        NonEmptyRateSampler(np.zeros(10, bool), lambda epoch: 0.5)


def test_replicas_split_an_epoch_disjointly():
    has_mask = np.r_[np.ones(20, bool), np.zeros(80, bool)]
    shards = []
    for rank in range(3):
        sampler = NonEmptyRateSampler(has_mask, epoch_size=99, seed=2, num_replicas=3, rank=rank)
        sampler.set_epoch(5)
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [33, 33, 33]
    assert sorted(i for shard in shards for i in shard) == sorted(sampler.epoch_indices().tolist())


def test_in_process_loading_is_reproducible(prepared):
    """num_workers=0: the pipeline is reseeded per epoch from the loader's generator, so two
    fresh loaders with the same seed draw the same augmentations (albumentations would
    otherwise seed itself from the OS)."""
    from common.data.datasets import reseed_main_process

    def epoch_images():
        transform = load_transforms(TRANSFORMS / "light.json", 64)
        dataset = SegmentationDataset(["a"] * 4, prepared / "images", size=64, transform=transform)
        loader = DataLoader(dataset, batch_size=1, generator=torch.Generator().manual_seed(3))
        reseed_main_process(loader)
        return [batch["image"][0].numpy() for batch in loader]

    first, second = epoch_images(), epoch_images()
    assert _same(first, second) == 4 and _same(first[:2], first[2:]) < 2


def test_multi_channel_masks_share_the_augmentation(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    write_png(tmp_path / "images" / "x.png", image)
    left, right = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    left[10:30, 5:20], right[40:50, 30:60] = 255, 255
    write_png(tmp_path / "masks" / "left" / "x.png", left)
    write_png(tmp_path / "masks" / "right" / "x.png", right)
    plain = SegmentationDataset(
        ["x"], tmp_path / "images", tmp_path / "masks", size=64, mask_channels=["left", "right"]
    )[0]
    assert plain["mask"].shape == (2, 64, 64)
    assert float(plain["mask"][0].sum()) == 20 * 15 and float(plain["mask"][1].sum()) == 10 * 30
    spec = {
        "__version__": "2.0.8",
        "transform": {"__class_fullname__": "Compose", "p": 1.0, "transforms": []},
    }
    (tmp_path / "t.json").write_text(json.dumps(spec))
    crop = load_transforms(tmp_path / "t.json", 64, crop=48)
    crop.set_random_seed(3)
    item = SegmentationDataset(
        ["x"],
        tmp_path / "images",
        tmp_path / "masks",
        size=64,
        transform=crop,
        mask_channels=["left", "right"],
    )[0]
    assert item["image"].shape == (3, 48, 48) and item["mask"].shape == (2, 48, 48)
    with pytest.raises(ValueError, match="crop 80"):
        load_transforms(tmp_path / "t.json", 64, crop=80)


def test_weighted_sampling_follows_the_weights():
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    sampler = NonEmptyRateSampler(np.zeros(4, bool), weights=weights, epoch_size=4000, seed=3)
    counts = np.bincount(sampler.epoch_indices(), minlength=4)
    assert counts[0] == counts[3] == 0
    assert counts[2] / counts[1] == pytest.approx(3.0, rel=0.1)
    sampler.set_epoch(1)
    assert not np.array_equal(
        sampler.epoch_indices(),
        NonEmptyRateSampler(
            np.zeros(4, bool), weights=weights, epoch_size=4000, seed=3
        ).epoch_indices(),
    )
    with pytest.raises(ValueError, match="all zero"):
        NonEmptyRateSampler(np.zeros(2, bool), weights=[0, 0])
    with pytest.raises(ValueError, match="one finite value"):
        NonEmptyRateSampler(np.zeros(2, bool), weights=[1.0])


def test_common_loaders_from_an_item_table(tmp_path):
    import pandas as pd

    from common.config import load_config
    from common.data.loaders import Items, eval_loader, train_loader
    from common.io.images import write_png

    for i in range(6):
        write_png(tmp_path / "images" / f"i{i}.png", np.full((32, 32), i * 40, np.uint8))
        write_png(tmp_path / "masks" / f"i{i}.png", np.full((32, 32), 255 * (i % 2), np.uint8))
    frame = pd.DataFrame(
        {
            "id": [f"i{i}" for i in range(6)],
            "has_mask": [i % 2 for i in range(6)],
            "weight": [0, 0, 0, 0, 1, 1],
        }
    )
    items = Items(frame, tmp_path / "images", tmp_path / "masks")
    config = load_config(
        REPO / "competitions" / "siim" / "configs" / "base.yaml",
        [
            "data.size=32",
            "data.num_workers=0",
            "data.batch_size=2",
            "data.sample_rate.kind=weighted",
        ],
    )
    ids = [items.ids[int(i)] for b in train_loader(config, items, seed=0) for i in b["index"]]
    assert len(ids) == 6 and set(ids) <= {"i4", "i5"}
    batch = next(iter(eval_loader(config, items)))
    assert (
        batch["image"].shape == (6, 3, 32, 32) and batch["mask"][:, 0, 0, 0].tolist() == [0, 1] * 3
    )
    with pytest.raises(ValueError, match="'id' column"):
        Items(frame.drop(columns="id"), tmp_path)


@pytest.mark.parametrize("colour", [False, True])
def test_dataset_feeds_grey_and_rgb_images(tmp_path, colour):
    from common.data.datasets import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3) if colour else (16, 16), dtype=np.uint8)
    write_png(tmp_path / "a.png", image)
    item = SegmentationDataset(["a"], tmp_path, size=16, in_channels=3)[0]["image"].numpy()
    rgb = image if colour else np.repeat(image[..., None], 3, axis=2)
    expected = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item, expected.transpose(2, 0, 1), atol=1e-5)
    if colour:
        with pytest.raises(ValueError, match=r"3 channels, data\.in_channels is 1"):
            SegmentationDataset(["a"], tmp_path, size=16, in_channels=1)[0]


def test_loader_config_errors_name_the_key(tmp_path):
    import pandas as pd

    from common.config import load_config
    from common.data.loaders import Items, sampler

    frame = pd.DataFrame({"id": ["a", "b"], "has_mask": [0, 1]})
    items = Items(frame, tmp_path)
    base = REPO / "competitions" / "siim" / "configs" / "base.yaml"
    weighted = load_config(base, ["data.sample_rate.kind=weighted"])
    with pytest.raises(ValueError, match="kind weighted needs a 'weight' column"):
        sampler(weighted, items, seed=0)
    with pytest.raises(ValueError, match=r"data\.sample_rate\.kind 'random'; valid: none"):
        sampler(load_config(base, ["data.sample_rate.kind=random"]), items, seed=0)
    with pytest.raises(ValueError, match="kind fixed needs a 'has_mask' column"):
        sampler(
            load_config(base, ["data.sample_rate.kind=fixed"]), Items(frame[["id"]], tmp_path), 0
        )


def test_histogram_equalisation_preprocess(tmp_path):
    import cv2

    from common.data.datasets import SegmentationDataset, normalise, preprocess
    from common.io.images import write_png

    rng = np.random.default_rng(0)
    grey = np.clip(rng.normal(100, 10, (64, 64)), 0, 255).astype(np.uint8)  # a narrow histogram
    flat = preprocess(grey, {"name": "equalize"})
    np.testing.assert_array_equal(flat, cv2.equalizeHist(grey))
    assert flat.std() > 3 * grey.std()
    local = preprocess(grey, {"name": "clahe", "clip_limit": 2.0, "tiles": 4})
    assert local.std() > grey.std() and not np.array_equal(local, flat)
    assert preprocess(grey, {"name": "none"}) is grey and preprocess(grey, None) is grey
    rgb = np.stack([grey, grey // 2, np.full_like(grey, 200)], axis=-1)
    out = preprocess(rgb, {"name": "clahe"})
    assert out.shape == rgb.shape and out.dtype == np.uint8
    lab_in, lab_out = (cv2.cvtColor(a, cv2.COLOR_RGB2LAB) for a in (rgb, out))
    assert np.abs(lab_in[..., 1:].astype(int) - lab_out[..., 1:]).mean() < 3  # colour kept
    with pytest.raises(
        ValueError,
        match=r"data\.preprocess\.name 'hist' is unknown; valid: none, clahe, equalize, stretch",
    ):
        preprocess(grey, {"name": "hist"})
    # canonical: the method's own parameters with defaults; other methods' parameters dropped,
    # so runs whose configs carried different parameter sets still compare equal
    from common.data.datasets import check_preprocess

    old = {"name": "none", "clip_limit": 2.0, "tiles": 8}
    assert check_preprocess(old) == check_preprocess(old | {"low": 0.5}) == {"name": "none"}
    assert check_preprocess({"name": "clahe", "low": 1.0}) == {
        "name": "clahe",
        "clip_limit": 2.0,
        "tiles": 8,
    }
    with pytest.raises(ValueError, match=r"data\.preprocess: \['clip'\] unknown; valid: clip_li"):
        preprocess(grey, {"name": "clahe", "clip": 2})
    write_png(tmp_path / "a.png", grey)
    data = SegmentationDataset(
        ["a"], tmp_path, size=64, in_channels=1, preprocess={"name": "clahe"}
    )
    mean, std = np.array([[[0.485]]], np.float32), np.array([[[0.229]]], np.float32)
    np.testing.assert_allclose(
        data[0]["image"].numpy(), normalise(preprocess(grey, {"name": "clahe"}), mean, std)
    )


def test_percentile_stretch_rescues_a_washed_out_image_and_leaves_a_good_one():
    from common.data.datasets import preprocess

    rng = np.random.default_rng(0)
    exposed = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    exposed[0, :4] = (0, 0, 255, 255)
    # a well exposed image (its 0.5 and 99.5 percentiles at 0 and 255 or near) barely changes
    stretched = preprocess(exposed, {"name": "stretch", "low": 0.5, "high": 99.5})
    assert np.abs(stretched.astype(int) - exposed).max() <= 2
    # a washed-out one (grey levels 237..255, as 7 SCR images in the shared set) spans 0..255
    washed = (237 + exposed // 14).astype(np.uint8)
    out = preprocess(washed, {"name": "stretch", "low": 0.0, "high": 100.0})
    assert (washed.min(), washed.max()) == (237, 255) and (out.min(), out.max()) == (0, 255)
    # linear and monotonic: an independent reference (float percentiles, the same mapping)
    lo, hi = np.percentile(washed, [0, 100])
    reference = np.clip(np.rint((washed.astype(float) - lo) * 255 / (hi - lo)), 0, 255)
    np.testing.assert_array_equal(out, reference.astype(np.uint8))
    # percentiles clip: on a ramp of 100 levels, the 10 below the 10th percentile's level and
    # that level go to 0, the 90th percentile's level and the 10 above it to 255
    ramp = np.repeat(np.arange(100, 200, dtype=np.uint8)[None], 10, axis=0)
    out = preprocess(ramp, {"name": "stretch", "low": 10, "high": 90})
    assert (out == 0).mean() == pytest.approx(0.11) and (out == 255).mean() == pytest.approx(0.11)
    assert np.all(np.diff(out[0].astype(int)) >= 0)
    flat = np.full((8, 8), 240, np.uint8)
    np.testing.assert_array_equal(preprocess(flat, {"name": "stretch"}), flat)
    rgb = np.stack([washed, washed - 5, washed - 10], axis=-1)
    out = preprocess(rgb, {"name": "stretch"})
    assert out.shape == rgb.shape and out.dtype == np.uint8 and out.std() > 5 * rgb.std()
    with pytest.raises(ValueError, match=r"low 60\.0 and high 40\.0 must be percentiles"):
        preprocess(washed, {"name": "stretch", "low": 60, "high": 40})
