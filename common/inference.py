"""Prediction with test-time augmentation, and validation metrics computed while streaming.

TTA transforms come in inverse pairs (``tta_augment`` / ``tta_deaugment``) over (N, C, H, W)
tensors; the de-augmented probabilities are averaged. Masks come out as uint8 quantised maps
(``common.postprocess.quantise``), one image at a time, so memory does not grow with the
number of images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.postprocess import quantise
from common.threshold_search import ImageStats, reduce_pairs, search_triplets_from_stats

TTA_NAMES = ("none", "hflip", "vflip")


def tta_augment(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "none":
        return x
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    raise ValueError(f"unknown TTA {name!r}; valid: {', '.join(TTA_NAMES)}")


def tta_deaugment(y: torch.Tensor, name: str) -> torch.Tensor:
    return tta_augment(y, name)  # flips are their own inverse


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` in none / fp16 / bf16 (CUDA only; off on the CPU)."""
    if amp == "none" or device.type != "cuda":
        return nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    return torch.autocast(device_type="cuda", dtype=dtype)


def forward(
    model: nn.Module, x: torch.Tensor, *, device: torch.device, amp: str, channels_last: bool
) -> dict[str, torch.Tensor]:
    """The model's logits for a batch of images, moved to ``device`` with the chosen AMP and
    memory format."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        return model(x)


@torch.no_grad()
def predict_tensor(
    model: nn.Module,
    image: torch.Tensor,
    *,
    device: torch.device,
    tta: tuple[str, ...] = ("none",),
    scales: tuple[int, ...] = (),
    amp: str = "none",
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities for a batch of images (N, C, H, W): ``mask`` (N, H, W) float32 and/or
    ``label`` (N,) float32, each the mean over the TTA flips (de-augmented) and the input sizes:
    the batch's own and each of ``scales`` (multi-scale TTA: the images are resized bilinearly to
    side ``s`` and the maps resized back)."""
    model.eval()
    size = image.shape[-2:]
    sums: dict[str, torch.Tensor] = {}
    views = 0
    for scale in (None, *scales):
        x = image if scale is None else F.interpolate(image, (scale, scale), mode="bilinear")
        for name in tta:
            out = forward(
                model, tta_augment(x, name), device=device, amp=amp, channels_last=channels_last
            )
            for key, logits in out.items():
                prob = torch.sigmoid(logits.float())
                if key == "mask":
                    prob = tta_deaugment(prob, name)
                    if scale is not None:
                        prob = F.interpolate(prob, size, mode="bilinear")
                sums[key] = sums[key] + prob if key in sums else prob
            views += 1
    return {k: (v / views).cpu().numpy()[:, 0] for k, v in sums.items()}


def predict_batches(model: nn.Module, loader, **options) -> Iterator[tuple[dict, dict]]:
    """``predict_tensor`` over a loader: yields (batch, probabilities) per batch."""
    for batch in loader:
        yield batch, predict_tensor(model, batch["image"], **options)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    loss: nn.Module,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> dict[str, float]:
    """Validation metrics in one streamed pass (no TTA).

    Segmentation: ``dice_05`` (Kaggle mean Dice at 0.5), ``dice_triplet`` (at the best point of
    the default triplet grid, from the same per-image histograms), ``empty_dice`` (every image
    predicted empty). With labels: ``auc`` and ``accuracy`` of the classification output.
    Always ``val_loss``.
    """
    part = collect_validation(
        model, loader, loss, device=device, amp=amp, channels_last=channels_last
    )
    return validation_metrics([part])


@torch.no_grad()
def collect_validation(
    model: nn.Module,
    loader,
    loss: nn.Module,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
) -> dict:
    """What ``validation_metrics`` needs from one shard of the validation set: per-image
    histogram rows, per-batch losses and sizes, classification scores and labels. Small (a few
    KB per image), so DDP ranks can gather them."""
    model.eval()
    part: dict = {"loss_sums": [], "sizes": [], "scores": [], "labels": []}

    def mask_pairs():
        for batch in loader:
            out = forward(
                model, batch["image"], device=device, amp=amp, channels_last=channels_last
            )
            targets = {k: batch[k].to(device) for k in ("mask", "label") if k in batch}
            size = len(batch["image"])
            part["loss_sums"].append(float(loss(out, targets)[0]) * size)
            part["sizes"].append(size)
            if "label" in out:
                part["scores"].extend(torch.sigmoid(out["label"].float())[:, 0].tolist())
                part["labels"].extend(batch["label"][:, 0].tolist())
            if "mask" in out:
                probs = torch.sigmoid(out["mask"].float())[:, 0].cpu().numpy()
                truths = batch["mask"][:, 0].numpy().astype(np.uint8)
                yield from zip(map(quantise, probs), truths, strict=True)

    pairs = mask_pairs()
    first = next(pairs, None)  # runs the loader until the first mask (or to the end)
    if first is not None:
        stats = reduce_pairs(itertools.chain([first], pairs), workers=1)
        part["above"], part["above_true"] = stats.above, stats.above_true
    return part


def validation_metrics(parts: list[dict]) -> dict[str, float]:
    """Metrics over the union of ``collect_validation`` shards (one per DDP rank)."""
    metrics: dict[str, float] = {}
    with_maps = [p for p in parts if "above" in p]
    if with_maps:
        above = np.concatenate([p["above"] for p in with_maps])
        above_true = np.concatenate([p["above_true"] for p in with_maps])
        stats = ImageStats(above=above, above_true=above_true, n_true=above_true[:, 0])
        at_half = search_triplets_from_stats(stats, [0.5], [0], [0.5]).best["dice"]
        grid = search_triplets_from_stats(stats)
        metrics |= {"dice_05": float(at_half), "dice_triplet": float(grid.best["dice"])}
        metrics["empty_dice"] = float(grid.empty_dice)
    scores = [s for p in parts for s in p["scores"]]
    labels = [label for p in parts for label in p["labels"]]
    if scores:
        metrics |= {"auc": roc_auc(labels, scores), "accuracy": _accuracy(labels, scores)}
    total = sum(sum(p["sizes"]) for p in parts)
    loss_sum = sum(sum(p["loss_sums"]) for p in parts)
    metrics["val_loss"] = loss_sum / total if total else float("nan")
    return metrics


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0  # 1-based mean rank of each tie group
    ranks[order] = np.repeat(average_rank, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _accuracy(labels, scores) -> float:
    return float(np.mean((np.asarray(scores) > 0.5) == np.asarray(labels, dtype=bool)))
