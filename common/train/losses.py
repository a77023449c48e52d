"""Loss registry: segmentation losses on logits (N, C, H, W) against targets in {0, 1} of the same
shape (C = 1, or one channel per class of a multi-label task; ``dice`` is the mean of the
per-channel soft Dice), classification losses on logits (N, 1) against (N, 1), and their weighted sum.

A config names the terms (``loss.terms``), each ``{name, weight, **params}``; ``cls_weight`` adds
an empty/non-empty classification term on the model's classification head, e.g. the 4th place
SIIM combination ``2.7 bce + 0.9 dice + 0.1 cls_bce``. The smp losses are used where smp has them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import nn

from common.train.distance_losses import BoundaryLoss, HausdorffLoss


class WeightedBCE(nn.Module):
    """BCE averaged separately over positive and negative pixels, then mixed
    ``pos_weight * mean_pos + neg_weight * mean_neg`` (SIIM 8th place: 0.25 / 0.75), so the
    few positive pixels are not drowned by the background."""

    def __init__(self, pos_weight: float = 0.25, neg_weight: float = 0.75):
        super().__init__()
        self.pos_weight, self.neg_weight = pos_weight, neg_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pos, neg = target, 1.0 - target
        pos_mean = (loss * pos).sum() / pos.sum().clamp_min(1e-6)
        neg_mean = (loss * neg).sum() / neg.sum().clamp_min(1e-6)
        return self.pos_weight * pos_mean + self.neg_weight * neg_mean


class SymmetricLovasz(nn.Module):
    """The mean of the Lovasz hinge on (logits, target) and on (-logits, 1 - target): the second
    term also rewards getting the background right, which matters with many empty images."""

    def __init__(self, per_image: bool = True):
        super().__init__()
        self.lovasz = LovaszLoss(mode="binary", per_image=per_image, from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.lovasz(logits, target) + self.lovasz(-logits, 1.0 - target))


class BCE(nn.Module):
    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


SEGMENTATION_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCE,
    "weighted_bce": WeightedBCE,
    "focal": lambda **kw: FocalLoss(mode="binary", **kw),
    "dice": lambda **kw: DiceLoss(mode="multilabel", from_logits=True, **kw),
    "lovasz": lambda per_image=True: LovaszLoss(mode="binary", per_image=per_image),
    "symmetric_lovasz": SymmetricLovasz,
    "boundary": BoundaryLoss,
    "hausdorff": HausdorffLoss,
}
CLASSIFICATION_LOSSES: dict[str, Callable[..., nn.Module]] = {
    "bce": BCE,
    "focal": lambda **kw: FocalLoss(mode="binary", **kw),
}


def _build(registry: dict, spec, where: str) -> tuple[str, float, nn.Module]:
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{where}: expected a mapping with 'name' (and 'weight'), got {spec!r}")
    params = dict(spec)
    name, weight = params.pop("name"), float(params.pop("weight", 1.0))
    if name not in registry:
        raise ValueError(f"{where}: unknown loss {name!r}; valid: {', '.join(sorted(registry))}")
    try:
        return name, weight, registry[name](**params)
    except TypeError as error:
        raise ValueError(f"{where}: bad parameters for loss {name!r}: {error}") from None


class CombinedLoss(nn.Module):
    """``sum(weight * term(mask_logits, mask)) + cls_weight * cls(label_logits, label)``.

    ``forward`` takes the model's output dict (``mask`` and/or ``label`` logits) and the batch
    dict, and returns (total, {term name: value}) so each term can be logged.

    ``channel_weights`` (multi-label tasks) computes every term on each mask channel alone and
    takes the weighted mean over channels, so a thin structure can weigh more than a large one.

    ``learned_weights`` (uncertainty weighting, Kendall et al. 2018) learns one log-variance
    ``s`` per mask term: the term counts ``exp(-s) * weight * value + s``, so each settles near
    ``1 / (weight * value)``; the effective weights ``exp(-s)`` are returned as ``weight_<name>``
    parts, logged per epoch. The parameters are the module's: give them to the optimiser
    (``common.train.runner`` does).
    """

    def __init__(
        self,
        terms: list,
        *,
        cls_weight: float = 0.0,
        cls_loss: dict | None = None,
        channel_weights: list[float] | None = None,
        learned_weights: bool = False,
    ):
        super().__init__()
        weights = [float(w) for w in channel_weights or []]
        if any(w < 0 for w in weights) or (weights and sum(weights) <= 0):
            raise ValueError(f"loss.channel_weights {weights}: need non-negative, not all zero")
        self.channel_weights = [w / sum(weights) for w in weights] if weights else None
        built = [_build(SEGMENTATION_LOSSES, t, f"loss.terms[{i}]") for i, t in enumerate(terms)]
        self.names = [name for name, _, _ in built]
        self.weights = [weight for _, weight, _ in built]
        self.terms = nn.ModuleList(module for _, _, module in built)
        self.log_vars = nn.Parameter(torch.zeros(len(built))) if learned_weights and built else None
        self.cls_weight = cls_weight
        self.cls = None
        if cls_weight > 0:
            self.cls = _build(CLASSIFICATION_LOSSES, cls_loss or {"name": "bce"}, "loss.cls")[2]
        if not built and self.cls is None:
            raise ValueError("loss: no terms and no classification weight: nothing to train")

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        total = None
        if self.terms and "mask" in outputs:
            logits, target = outputs["mask"].float(), batch["mask"]
            if self.channel_weights and len(self.channel_weights) != logits.shape[1]:
                raise ValueError(
                    f"loss.channel_weights has {len(self.channel_weights)} values for "
                    f"{logits.shape[1]} mask channels"
                )
            for index, (name, weight, term) in enumerate(
                zip(self.names, self.weights, self.terms, strict=True)
            ):
                parts[name] = self._term(term, logits, target)
                value = weight * parts[name]
                if self.log_vars is not None:
                    s = self.log_vars[index]
                    value = torch.exp(-s) * value + s
                    parts[f"weight_{name}"] = torch.exp(-s.detach())
                total = value if total is None else total + value
        if self.cls is not None:
            parts["cls"] = self.cls(outputs["label"].float(), batch["label"])
            term = self.cls_weight * parts["cls"]
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"loss: the model gave {sorted(outputs)}, which no loss term uses")
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def _term(self, term: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.channel_weights:
            return term(logits, target)
        values = [
            w * term(logits[:, c : c + 1], target[:, c : c + 1])
            for c, w in enumerate(self.channel_weights)
        ]
        return torch.stack(values).sum()
