"""CutMix and Cutout on training batches: same-place rectangles with the masks mixed alike (no
side swap), holes with the masks kept or erased, labels recomputed, draws reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.data.mixing import BatchMix, apply_mix, batch_mix, mix_generator


def _batch(n=6, size=32):
    position = torch.arange(size * size, dtype=torch.float32).reshape(1, size, size)
    images = torch.stack([position + 10_000 * k for k in range(n)])  # (N, 1, H, W)
    masks = torch.zeros(n, 2, size, size)
    for k in range(n):
        masks[k, 0, :, : size // 2] = k % 2  # a "right lung" on the image's left for odd k
        masks[k, 1, :, size // 2 :] = 1 - k % 2
    masks[0] = 0  # one empty image
    return {"image": images, "mask": masks, "label": masks.flatten(1).amax(1, keepdim=True)}


def test_cutmix_takes_the_same_place_of_another_image_with_its_masks():
    batch = _batch()
    mixed = apply_mix(batch, BatchMix(cutmix_p=1.0), mix_generator(0, 0))
    source = (mixed["image"] // 10_000).long()  # which image each pixel came from
    position = mixed["image"] % 10_000
    assert torch.equal(position, batch["image"][0].expand_as(position))  # never moved
    changed = source != torch.arange(6).view(6, 1, 1, 1)
    assert changed.any() and not changed.all()
    for i in range(6):
        for c in range(2):  # each mask pixel is the one of the image the pixel came from
            taken = batch["mask"][source[i, 0], c, torch.arange(32)[:, None], torch.arange(32)]
            assert torch.equal(mixed["mask"][i, c], taken)
    assert torch.equal(mixed["label"][:, 0], mixed["mask"].flatten(1).amax(1))
    assert torch.equal(batch["image"], _batch()["image"])  # the input is left alone


def test_cutout_keeps_or_erases_the_masks():
    batch = _batch()
    options = {"cutout_p": 1.0, "cutout_holes": 2, "cutout_size": 0.25}
    kept = apply_mix(batch, BatchMix(**options), mix_generator(1, 0))
    holes = kept["image"] == 0
    holes[:, :, 0, 0] = False  # the position pattern is 0 there
    assert holes.any() and torch.equal(kept["mask"], batch["mask"])
    erased = apply_mix(batch, BatchMix(**options, cutout_mask="erase"), mix_generator(1, 0))
    assert torch.equal(erased["image"], kept["image"])  # the same draws
    assert not (erased["mask"] * holes).any() and (erased["mask"] <= batch["mask"]).all()


def test_draws_follow_seed_epoch_and_rank():
    mix = BatchMix(cutmix_p=0.5, cutout_p=0.5)
    first = apply_mix(_batch(), mix, mix_generator(3, 2))["image"]
    assert torch.equal(first, apply_mix(_batch(), mix, mix_generator(3, 2))["image"])
    assert not torch.equal(first, apply_mix(_batch(), mix, mix_generator(3, 3))["image"])
    assert not torch.equal(first, apply_mix(_batch(), mix, mix_generator(3, 2, 1))["image"])
    shares = [
        (apply_mix(_batch(64), BatchMix(cutmix_p=0.5), mix_generator(s, 0))["image"] // 10_000
         != torch.arange(64).view(64, 1, 1, 1)).flatten(1).any(1).float().mean()
        for s in range(5)
    ]  # fmt: skip
    assert 0.3 < float(np.mean(shares)) < 0.6  # about p of the images are mixed


def test_config_section_and_errors():
    assert batch_mix({}) is None
    assert batch_mix({"mix": {"cutmix": {"p": 0.0}, "cutout": {"p": 0.0}}}) is None
    mix = batch_mix({"mix": {"cutmix": {"p": 0.5, "alpha": 0.4}, "cutout": {"p": 0.0}}})
    assert mix == BatchMix(cutmix_p=0.5, cutmix_alpha=0.4)
    with pytest.raises(ValueError, match=r"cutout\.mask"):
        batch_mix({"mix": {"cutout": {"p": 0.5, "mask": "blur"}}})
    with pytest.raises(ValueError, match=r"cutmix_p must be in \[0, 1\]"):
        BatchMix(cutmix_p=1.5)
