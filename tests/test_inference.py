"""TTA policies (a flip that swaps left and right channels) and per-channel validation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.infer.inference import (
    TtaPolicy,
    collect_validation,
    predict_tensor,
    side_swap,
    validation_metrics,
    write_maps,
)
from common.io.images import read_png
from common.post.postprocess import quantise
from common.train.losses import CombinedLoss
from tests.reference import ref_dice, ref_jaccard


class ByPosition(nn.Module):
    """A model that learnt anatomy from upright chest X-rays only: channel 0 ("left_lung") is
    the image's right half, channel 1 ("right_lung") its left half, whatever the picture shows.
    On a mirrored image it still labels the image's right half "left": flipping its answer
    back puts the label on the wrong side unless the channels are swapped too."""

    def forward(self, x):
        right = torch.zeros_like(x[:, :1])
        right[..., x.shape[-1] // 2 :] = 1
        return {"mask": torch.cat([right, 1 - right], dim=1) * 20 - 10}


def _image():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 6:] = 1  # the marker, on the image's right
    return x


def test_hflip_without_the_remap_would_blur_left_and_right():
    model, x = ByPosition(), _image()
    plain = predict_tensor(model, x, device=torch.device("cpu"), tta=("none",))["mask"][0]
    both = predict_tensor(model, x, device=torch.device("cpu"), tta=("none", "hflip"))["mask"][0]
    assert plain[0, 0, 7] > 0.99 and plain[0, 0, 0] < 0.01
    assert np.allclose(both, 0.5, atol=0.01)  # the flipped view says the opposite


def test_hflip_with_the_side_swap_agrees_with_the_plain_prediction():
    model, x = ByPosition(), _image()
    policy = TtaPolicy(remap={"hflip": side_swap(["left_lung", "right_lung"])})
    plain = predict_tensor(model, x, device=torch.device("cpu"), tta=("none",))["mask"]
    both = predict_tensor(
        model, x, device=torch.device("cpu"), tta=("none", "hflip"), policy=policy
    )["mask"]
    assert both.shape == (1, 2, 8, 8) and np.allclose(both, plain, atol=1e-5)


def test_side_swap_and_policy_checks():
    structures = ["left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"]
    assert side_swap(structures) == (1, 0, 2, 4, 3)
    assert side_swap(["heart"]) == (0,)
    with pytest.raises(ValueError, match="no mirrored twin 'right_lung'"):
        side_swap(["left_lung", "heart"])
    policy = TtaPolicy(forbidden=frozenset({"vflip"}), remap={"hflip": (1, 0)}, reason="upright")
    assert policy.check(["none", "hflip"], 2) == ("none", "hflip")
    with pytest.raises(ValueError, match="'vflip' is not allowed here: upright"):
        policy.check(["vflip"])
    with pytest.raises(ValueError, match="not a permutation of 3 channels"):
        policy.check(["hflip"], 3)
    with pytest.raises(ValueError, match="unknown TTA 'rot45'"):
        policy.check(["rot45"])


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return {"mask": self.logits[: len(x)]}


def test_validation_metrics_per_channel_match_a_reference():
    rng = np.random.default_rng(0)
    truth = (rng.random((4, 3, 16, 16)) > 0.6).astype(np.float32)
    truth[1, 2] = 0  # one empty truth
    logits = torch.from_numpy(rng.normal(size=(4, 3, 16, 16)).astype(np.float32) + 2 * truth - 1)
    loader = [{"image": torch.zeros(4, 1, 16, 16), "mask": torch.from_numpy(truth)}]
    part = collect_validation(
        Fixed(logits),
        loader,
        CombinedLoss([{"name": "bce"}]),
        device=torch.device("cpu"),
        channel_names=["a", "b", "c"],
    )
    metrics = validation_metrics([part])
    pred = (torch.sigmoid(logits).numpy() * 255).round() / 255 > 0.5
    for c, name in enumerate("abc"):
        dice = np.mean([ref_dice(pred[i, c], truth[i, c] > 0) for i in range(4)])
        jaccard = np.mean([ref_jaccard(pred[i, c], truth[i, c] > 0) for i in range(4)])
        assert metrics[f"dice_05_{name}"] == pytest.approx(dice)
        assert metrics[f"jaccard_05_{name}"] == pytest.approx(jaccard)
    assert metrics["dice_05"] == pytest.approx(np.mean([metrics[f"dice_05_{n}"] for n in "abc"]))
    assert "dice_05_c0" not in metrics and "dice_triplet" in metrics


def test_single_channel_metric_names_are_unchanged():
    truth = torch.zeros(2, 1, 8, 8)
    truth[0, 0, :4] = 1
    loader = [{"image": torch.zeros(2, 1, 8, 8), "mask": truth}]
    part = collect_validation(
        Fixed(truth * 20 - 10), loader, CombinedLoss([{"name": "bce"}]), device=torch.device("cpu")
    )
    metrics = validation_metrics([part])
    assert metrics["dice_05"] == 1.0 and metrics["jaccard_05"] == 1.0
    assert not any(k.startswith("dice_05_") for k in metrics)


def test_write_maps_resizes_quantises_and_writes_each_channel(tmp_path):
    probs = np.random.default_rng(0).random((3, 2, 8, 8)).astype(np.float32)
    batches = [({}, {"mask": probs[:2]}), ({}, {"mask": probs[2:]})]
    out = list(
        write_maps(batches, ["a", "b", "c"], ["x", "y"], lambda i, c: tmp_path / c / f"{i}.png")
    )
    assert [i for i, _ in out] == ["a", "b", "c"]
    np.testing.assert_array_equal(out[1][1], quantise(probs[1]))
    np.testing.assert_array_equal(read_png(tmp_path / "y" / "c.png"), quantise(probs[2, 1]))
    resized = list(
        write_maps(
            batches, ["a", "b", "c"], ["x", "y"], lambda i, c: tmp_path / f"{c}{i}.png", size=16
        )
    )
    assert resized[0][1].shape == (2, 16, 16) and read_png(tmp_path / "xa.png").shape == (16, 16)
    with pytest.raises(ValueError):
        list(write_maps(batches, ["a", "b", "c"], ["only"], lambda i, c: tmp_path / f"{i}.png"))
