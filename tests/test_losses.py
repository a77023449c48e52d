"""common.train.losses: every registered loss, the weighted BCE formula, combinations, bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.train.losses import SEGMENTATION_LOSSES, CombinedLoss, SymmetricLovasz, WeightedBCE


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 1, 16, 16, generator=g, requires_grad=True)
    mask = (torch.rand(4, 1, 16, 16, generator=g) > 0.8).float()
    mask[0] = 0  # one empty image
    return logits, {"mask": mask, "label": mask.amax(dim=(2, 3))}


@pytest.mark.parametrize("name", sorted(SEGMENTATION_LOSSES))
def test_each_loss_is_finite_differentiable_and_prefers_the_truth(name):
    logits, batch = _batch()
    loss = CombinedLoss([{"name": name, "weight": 1.0}])
    value, parts = loss({"mask": logits}, batch)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0 and set(parts) == {name}
    perfect = (batch["mask"] * 2 - 1) * 8
    assert float(loss({"mask": perfect}, batch)[0]) < float(value.detach())


def test_weighted_bce_matches_its_formula():
    logits, batch = _batch(1)
    mask = batch["mask"]
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    expected = 0.25 * bce[mask == 1].mean() + 0.75 * bce[mask == 0].mean()
    assert torch.allclose(WeightedBCE()(logits, mask), expected)


def test_symmetric_lovasz_is_symmetric():
    logits, batch = _batch(2)
    loss = SymmetricLovasz()
    assert torch.allclose(loss(logits, batch["mask"]), loss(-logits, 1 - batch["mask"]))


def test_combination_with_classification_term():
    logits, batch = _batch(3)
    label_logits = torch.randn(4, 1)
    terms = [{"name": "bce", "weight": 2.7}, {"name": "dice", "weight": 0.9}]
    loss = CombinedLoss(terms, cls_weight=0.1)
    value, parts = loss({"mask": logits, "label": label_logits}, batch)
    expected = 2.7 * parts["bce"] + 0.9 * parts["dice"] + 0.1 * parts["cls"]
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    focal = CombinedLoss([], cls_weight=1.0, cls_loss={"name": "focal", "gamma": 2.0})
    assert set(focal({"label": label_logits}, batch)[1]) == {"cls"}


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([{"name": "bcee"}], r"loss.terms\[0\]: unknown loss 'bcee'; valid: bce, boundary, dice"),
        (["bce"], r"expected a mapping with 'name'"),
        ([{"name": "focal", "gama": 2}], r"bad parameters for loss 'focal'"),
        ([], r"nothing to train"),
    ],
)
def test_bad_loss_specs(terms, message):
    with pytest.raises(ValueError, match=message):
        CombinedLoss(terms)


def test_channel_weights_weigh_each_channel_alone():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    mask = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    batch = {"mask": mask}
    per_channel = [
        float(
            CombinedLoss([{"name": "dice"}])(
                {"mask": logits[:, c : c + 1]}, {"mask": mask[:, c : c + 1]}
            )[0]
        )
        for c in range(3)
    ]
    weighted = CombinedLoss([{"name": "dice"}], channel_weights=[1, 1, 2])({"mask": logits}, batch)[
        0
    ]
    assert float(weighted) == pytest.approx(
        (per_channel[0] + per_channel[1] + 2 * per_channel[2]) / 4
    )
    plain = CombinedLoss([{"name": "dice"}])({"mask": logits}, batch)[0]
    assert float(plain) == pytest.approx(sum(per_channel) / 3, rel=1e-5)  # dice: mean over channels
    with pytest.raises(ValueError, match="2 values for 3 mask channels"):
        CombinedLoss([{"name": "bce"}], channel_weights=[1, 1])({"mask": logits}, batch)
    with pytest.raises(ValueError, match="channel_weights"):
        CombinedLoss([{"name": "bce"}], channel_weights=[0, 0])


def _square(size=12, lo=3, hi=8):
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 1
    return mask


def test_signed_and_boundary_distances():
    from common.train.distance_losses import boundary_distance, signed_distance

    mask = _square()
    phi = signed_distance(mask[None, None])[0, 0]
    assert phi[5, 5] == pytest.approx(-3 / 12)  # 3 px to the nearest outside pixel
    assert phi[5, 10] == pytest.approx(3 / 12) and phi[0, 0] == pytest.approx(np.hypot(3, 3) / 12)
    assert (phi[mask > 0] < 0).all() and (phi[mask == 0] > 0).all()
    assert (signed_distance(np.zeros((1, 4, 4), np.uint8)) == 1).all()  # empty: every pixel costs
    d = boundary_distance(mask[None])[0]
    np.testing.assert_allclose(d, np.abs(phi))
    assert not boundary_distance(np.ones((1, 5, 5), np.uint8)).any()


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(mask > 0, 30.0, -30.0).astype(np.float32))[None, None]


def test_boundary_and_hausdorff_losses():
    from common.train.losses import SEGMENTATION_LOSSES

    target = torch.from_numpy(_square().astype(np.float32))[None, None]
    for name in ("boundary", "hausdorff"):
        loss = SEGMENTATION_LOSSES[name]()
        assert float(loss(_logits(_square()), target)) == pytest.approx(0, abs=1e-6)  # perfect
        near, far = _square(), _square()
        near[8, 3:8] = 1  # one extra row touching the object
        far[11, 3:8] = 1  # the same row three pixels further out
        assert 0 < float(loss(_logits(near), target)) < float(loss(_logits(far), target))
        logits = torch.zeros(2, 3, 12, 12, requires_grad=True)
        loss(logits, target.expand(2, 3, 12, 12)).backward()
        assert logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha must be > 0"):
        SEGMENTATION_LOSSES["hausdorff"](alpha=0)


def test_learned_loss_weights():
    from common.train.losses import CombinedLoss

    terms = [{"name": "bce", "weight": 1.0}, {"name": "dice", "weight": 2.0}]
    plain = CombinedLoss(terms)
    learned = CombinedLoss(terms, learned_weights=True)
    assert not list(plain.parameters()) and learned.log_vars.shape == (2,)
    target = torch.from_numpy(_square().astype(np.float32))[None, None]
    batch = {"mask": target}
    outputs = {"mask": torch.zeros(1, 1, 12, 12)}
    total, parts = learned(outputs, batch)  # s = 0: the plain weighted sum
    assert float(total.detach()) == pytest.approx(float(plain(outputs, batch)[0]))
    assert parts["weight_bce"] == 1.0 and parts["weight_dice"] == 1.0
    optimiser = torch.optim.SGD(learned.parameters(), lr=0.5)
    for _ in range(20):
        optimiser.zero_grad()
        learned(outputs, batch)[0].backward()
        optimiser.step()
    _, parts = learned(outputs, batch)
    # each weight moves towards 1 / (weight * value): the larger term is weighed down
    values = {"bce": 1.0 * parts["bce"], "dice": 2.0 * parts["dice"]}
    big, small = sorted(values, key=values.get, reverse=True)
    assert parts[f"weight_{big}"] < parts[f"weight_{small}"]
