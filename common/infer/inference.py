"""Prediction with test-time augmentation, and validation metrics computed while streaming.

TTA transforms come in inverse pairs (``tta_augment`` / ``tta_deaugment``) over (N, C, H, W)
tensors; the de-augmented probabilities are averaged. A flip is wrong for a task whose channels
have a side (a left and a right lung swap places in a mirrored image): ``TtaPolicy`` lets a
competition forbid a flip or remap the channels after undoing it. Masks come out as uint8 quantised maps
(``common.post.postprocess.quantise``), one image at a time, so memory does not grow with the
number of images. Prediction (``predict_tensor`` and all built on it: out-of-fold, held-out and
test maps) runs in float32 whatever the training's ``train.amp``, so the thresholds searched on
out-of-fold maps meet test maps of the same precision; autocast is for training and its
validation (``forward``, ``collect_validation``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.io.images import write_png
from common.post.metrics import jaccard_from_counts
from common.post.postprocess import quantise
from common.post.threshold_search import ImageStats, reduce_pairs, search_triplets_from_stats

# The dihedral group D4 of the square: identity, the two flips, three rotations (counter-
# clockwise, in the image's (row, column) plane) and the two diagonal mirrors.
TTA_NAMES = ("none", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
D4 = TTA_NAMES
ORIENTING = frozenset(TTA_NAMES) - {"none", "hflip"}  # what turns an image upside down or sideways
_INVERSE = {"rot90": "rot270", "rot270": "rot90"}  # every other view is its own inverse


def tta_augment(x: torch.Tensor, name: str) -> torch.Tensor:
    """One D4 view of (..., H, W) tensors (rotations and diagonal mirrors swap H and W)."""
    if name == "none":
        return x
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name in ("rot90", "rot180", "rot270"):
        return torch.rot90(x, int(name[3:]) // 90, dims=(-2, -1))
    if name == "transpose":
        return x.transpose(-2, -1)
    if name == "antitranspose":
        return x.flip(-2, -1).transpose(-2, -1)
    raise ValueError(f"unknown TTA {name!r}; valid: {', '.join(TTA_NAMES)}")


def tta_deaugment(y: torch.Tensor, name: str, policy: TtaPolicy | None = None) -> torch.Tensor:
    """Undo ``name`` on the model's output, then apply the policy's channel remap for it, if
    any."""
    y = tta_augment(y, _INVERSE.get(name, name))
    order = policy.remap.get(name) if policy is not None else None
    return y[:, list(order)] if order is not None else y


@dataclass(frozen=True)
class TtaPolicy:
    """What a competition allows: ``forbidden`` TTA names, and ``remap[name]``, the channel
    order of the de-augmented output (``out[:, c] = y[:, remap[c]]``, e.g. (1, 0) swaps a
    left and a right channel after an hflip)."""

    forbidden: frozenset[str] = frozenset()
    remap: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reason: str = ""

    def check(self, names, channels: int | None = None) -> tuple[str, ...]:
        """The TTA names, validated: known, not forbidden, and each remap a permutation of
        ``channels``; ``ValueError`` otherwise."""
        names = tuple(names)
        for name in names:
            if name not in TTA_NAMES:
                raise ValueError(f"unknown TTA {name!r}; valid: {', '.join(TTA_NAMES)}")
            if name in self.forbidden:
                why = f": {self.reason}" if self.reason else ""
                raise ValueError(f"TTA {name!r} is not allowed here{why}")
        for name, order in self.remap.items():
            if channels is not None and sorted(order) != list(range(channels)):
                raise ValueError(
                    f"TTA {name!r}: channel remap {order} is not a permutation of {channels} channels"
                )
        return names


def side_swap(channels, pairs=(("left", "right"),)) -> tuple[int, ...]:
    """The channel order that swaps each ``left_*`` channel with its ``right_*`` twin (the
    remap after a horizontal flip); other channels stay."""
    channels = list(channels)
    order = []
    for name in channels:
        twin = name
        for a, b in pairs:
            if name.startswith(a):
                twin = b + name[len(a) :]
            elif name.startswith(b):
                twin = a + name[len(b) :]
        if twin not in channels:
            raise ValueError(f"channel {name!r} has no mirrored twin {twin!r} in {channels}")
        order.append(channels.index(twin))
    return tuple(order)


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` in none / fp16 / bf16: both on CUDA; bf16 also on a CPU
    with AVX-512 BF16 or AMX (oneDNN's bfloat16 kernels: about 1.8x faster training,
    ``docs/PERFORMANCE.md``); off elsewhere (``effective_amp``)."""
    if effective_amp(device, amp) == "none":
        return nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def effective_amp(device: torch.device, amp: str) -> str:
    """The AMP mode that ``autocast`` applies on ``device``: ``amp``, or none where it is off:
    fp16 off the GPU, and bf16 on a CPU without native bfloat16, where oneDNN would emulate it
    more slowly than float32 (so a config may ask for bf16 on any machine)."""
    if device.type == "cuda" or (device.type == "cpu" and amp == "bf16" and cpu_has_bf16()):
        return amp
    return "none"


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
    channels_last: bool = False,
    policy: TtaPolicy | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities for a batch of images (N, C, H, W): ``mask`` (N, K, H, W) float32 (K mask
    channels) and/or ``label`` (N,) float32, each the mean over the TTA flips (de-augmented,
    remapped by ``policy``) and the input sizes: the batch's own and each of ``scales``
    (multi-scale TTA: the images are resized bilinearly to side ``s`` and the maps resized
    back). Always in float32, whatever the training's AMP (the module's docstring)."""
    model.eval()
    if policy is not None:
        policy.check(tta)
    size = image.shape[-2:]
    sums: dict[str, torch.Tensor] = {}
    views = 0
    for scale in (None, *scales):
        x = image if scale is None else F.interpolate(image, (scale, scale), mode="bilinear")
        for name in tta:
            out = forward(
                model, tta_augment(x, name), device=device, amp="none", channels_last=channels_last
            )
            for key, logits in out.items():
                prob = torch.sigmoid(logits.float())
                if key == "mask":
                    prob = tta_deaugment(prob, name, policy)
                    if scale is not None:
                        prob = F.interpolate(prob, size, mode="bilinear")
                sums[key] = sums[key] + prob if key in sums else prob
            views += 1
    out = {k: (v / views).cpu().numpy() for k, v in sums.items()}
    if "label" in out:
        out["label"] = out["label"][:, 0]
    return out


def predict_batches(model: nn.Module, loader, **options) -> Iterator[tuple[dict, dict]]:
    """``predict_tensor`` over a loader: yields (batch, probabilities) per batch."""
    for batch in loader:
        yield batch, predict_tensor(model, batch["image"], **options)


def write_maps(
    batches, ids: Sequence[str], channels: Sequence[str], path, *, size: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Each image of ``batches`` (``predict_batches``, in ``ids`` order): its (C, H, W)
    probabilities, resized to ``size`` x ``size`` (bilinear) when given, quantised to uint8 and
    written one PNG a channel to ``path(id, channel)``; yields (id, uint8 maps)."""
    names = iter(ids)
    for _, probs in batches:
        maps = torch.from_numpy(probs["mask"])
        if size is not None and maps.shape[-2:] != (size, size):
            maps = F.interpolate(maps, (size, size), mode="bilinear", align_corners=False)
        for image_maps in maps.numpy():
            image_id = next(names)
            quantised = quantise(image_maps)
            for channel, q in zip(channels, quantised, strict=True):
                write_png(path(image_id, channel), q)
            yield image_id, quantised


@torch.no_grad()
def collect_validation(
    model: nn.Module,
    loader,
    loss: nn.Module,
    *,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    channel_names: Sequence[str] | None = None,
) -> dict:
    """What ``validation_metrics`` needs from one shard of the validation set: per-image (and
    per-channel) histogram rows, per-batch losses and sizes, classification scores and labels.
    Small (a few KB per image), so DDP ranks can gather them."""
    model.eval()
    part: dict = {"loss_sums": [], "sizes": [], "scores": [], "labels": []}
    if channel_names is not None:
        part["channel_names"] = list(channel_names)

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
                probs = torch.sigmoid(out["mask"].float()).cpu().numpy()
                truths = batch["mask"].numpy().astype(np.uint8)
                part["channels"] = probs.shape[1]
                for prob, truth in zip(probs, truths, strict=True):  # image-major, channel-minor
                    yield from zip(map(quantise, prob), truth, strict=True)

    pairs = mask_pairs()
    first = next(pairs, None)  # runs the loader until the first mask (or to the end)
    if first is not None:
        stats = reduce_pairs(itertools.chain([first], pairs), workers=1)
        part["above"], part["above_true"] = stats.above, stats.above_true
    return part


def validation_metrics(parts: list[dict]) -> dict[str, float]:
    """Metrics over the union of ``collect_validation`` shards (one per DDP rank), no TTA.

    Segmentation: ``dice_05`` (Kaggle mean Dice at 0.5), ``jaccard_05`` (the same with
    Jaccard), ``dice_triplet`` (at the best point of the default triplet grid, from the same
    per-image histograms), ``empty_dice`` (every image predicted empty). With several mask
    channels each of these is also given per channel (``dice_05_<name>``) and the plain name is
    the mean over channels. With labels: ``auc`` and ``accuracy`` of the classification output.
    Always ``val_loss``.
    """
    metrics: dict[str, float] = {}
    with_maps = [p for p in parts if "above" in p]
    if with_maps:
        channels = with_maps[0]["channels"]
        names = with_maps[0].get("channel_names") or [f"c{c}" for c in range(channels)]
        if len(names) != channels:
            raise ValueError(f"{len(names)} channel names {names} for {channels} mask channels")
        above = np.concatenate([p["above"] for p in with_maps])
        above_true = np.concatenate([p["above_true"] for p in with_maps])
        per_channel = [
            _map_metrics(above[c::channels], above_true[c::channels]) for c in range(channels)
        ]
        if channels == 1:
            metrics |= per_channel[0]
        else:
            for name, values in zip(names, per_channel, strict=True):
                metrics |= {f"{key}_{name}": value for key, value in values.items()}
            for key in per_channel[0]:
                metrics[key] = float(np.mean([values[key] for values in per_channel]))
    scores = [s for p in parts for s in p["scores"]]
    labels = [label for p in parts for label in p["labels"]]
    if scores:
        metrics |= {"auc": roc_auc(labels, scores), "accuracy": _accuracy(labels, scores)}
    total = sum(sum(p["sizes"]) for p in parts)
    loss_sum = sum(sum(p["loss_sums"]) for p in parts)
    metrics["val_loss"] = loss_sum / total if total else float("nan")
    return metrics


def _map_metrics(above: np.ndarray, above_true: np.ndarray) -> dict[str, float]:
    stats = ImageStats(above=above, above_true=above_true, n_true=above_true[:, 0])
    at_half = search_triplets_from_stats(stats, [0.5], [0], [0.5]).best["dice"]
    n_pred, n_inter = stats.areas(0.5)
    jaccard = jaccard_from_counts(n_inter, n_pred, stats.n_true).mean()
    grid = search_triplets_from_stats(stats)
    return {
        "dice_05": float(at_half),
        "jaccard_05": float(jaccard),
        "dice_triplet": float(grid.best["dice"]),
        "empty_dice": float(grid.empty_dice),
    }


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
