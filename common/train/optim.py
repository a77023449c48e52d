"""Optimiser and scheduler registries.

Parameters are split into the encoder (``model.encoder``) and the rest (decoder and heads), each
with its own learning rate: a pretrained encoder usually wants a smaller one. Each scheduler says
whether it steps per batch or per epoch; ``Stepper`` hides the difference from the train loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OPTIMISERS = {
    "adam": lambda groups, cfg: torch.optim.Adam(groups, weight_decay=cfg["weight_decay"]),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"]),
    "sgd": lambda groups, cfg: torch.optim.SGD(
        groups, momentum=cfg["momentum"], nesterov=True, weight_decay=cfg["weight_decay"]
    ),
}


def build_optimiser(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    encoder_lr: float | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    if name not in OPTIMISERS:
        raise ValueError(f"optim.name {name!r} is unknown; valid: {', '.join(OPTIMISERS)}")
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    encoder_params = [p for p in model.parameters() if id(p) in encoder_ids and p.requires_grad]
    other_params = [p for p in model.parameters() if id(p) not in encoder_ids and p.requires_grad]
    groups = [
        {"params": group, "lr": group_lr, "name": group_name}
        for group, group_lr, group_name in (
            (encoder_params, lr if encoder_lr is None else encoder_lr, "encoder"),
            (other_params, lr, "decoder"),
        )
        if group
    ]
    return OPTIMISERS[name](groups, {"weight_decay": weight_decay, "momentum": momentum})


# name -> (builder(optimiser, cfg, epochs, steps_per_epoch), steps per "batch" or "epoch")
def _cosine(opt, cfg, epochs, steps):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps, eta_min=cfg["min_lr"])


def _restarts(opt, cfg, epochs, steps):
    cycle = max(1, cfg["restart_epochs"]) * steps
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, cycle, eta_min=cfg["min_lr"])


def _plateau(opt, cfg, epochs, steps):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg["factor"], patience=cfg["patience"], min_lr=cfg["min_lr"]
    )


def _onecycle(opt, cfg, epochs, steps):
    max_lr = [group["lr"] for group in opt.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=epochs * steps + 1, pct_start=cfg["warmup"]
    )


def _cyclic(opt, cfg, epochs, steps):
    max_lr = [group["lr"] for group in opt.param_groups]
    half = max(1, cfg["restart_epochs"]) * steps // 2 or 1
    return torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=cfg["min_lr"], max_lr=max_lr, step_size_up=half, cycle_momentum=False
    )


SCHEDULERS = {
    "none": (None, "epoch"),
    "cosine": (_cosine, "batch"),
    "cosine_restarts": (_restarts, "batch"),
    "plateau": (_plateau, "epoch"),
    "onecycle": (_onecycle, "batch"),
    "cyclic": (_cyclic, "batch"),
}


class Stepper:
    """Steps a scheduler at the right moment: ``after_batch`` for per-batch ones, ``after_epoch``
    (with the validation score, for plateau) for per-epoch ones."""

    def __init__(self, optimiser, *, name: str, epochs: int, steps_per_epoch: int, **cfg):
        if name not in SCHEDULERS:
            raise ValueError(f"sched.name {name!r} is unknown; valid: {', '.join(SCHEDULERS)}")
        builder, self.interval = SCHEDULERS[name]
        defaults = {"min_lr": 1e-6, "restart_epochs": 5, "factor": 0.5, "patience": 2}
        defaults |= {"warmup": 0.1}
        self.scheduler = builder and builder(
            optimiser, defaults | cfg, max(epochs, 1), max(steps_per_epoch, 1)
        )

    def after_batch(self) -> None:
        if self.scheduler is not None and self.interval == "batch":
            self.scheduler.step()

    def after_epoch(self, score: float) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score if math.isfinite(score) else -math.inf)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)
