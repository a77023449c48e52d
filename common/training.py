"""The train loop: AMP, gradient accumulation and clipping, EMA, channels_last, validation every
epoch, top-k checkpoints averaged into the final weights, early stopping, a CSV log and curves.

Files written into ``out`` (all atomically):

    checkpoints/epoch<NNN>.pt   the top-k epochs by ``monitor``: {"model", "config", "epoch",
                                "score", "metrics"}; loaded with ``torch.load(weights_only=True)``
    final.pt                    the mean of the top-k weights (same format, epoch = -1)
    log.csv, curves.png         one row per epoch: losses, metrics, learning rates, time
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from common.atomic import atomic_path
from common.inference import autocast, evaluate
from common.optim import Stepper

AMP_MODES = ("none", "fp16", "bf16")


@dataclass
class Settings:
    epochs: int
    accumulate: int = 1
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    amp: str = "none"  # none | fp16 | bf16 (CUDA only)
    ema: float = 0.0  # EMA decay per optimiser step; 0 = off
    channels_last: bool = False
    top_k: int = 3
    early_stop: int = 0  # epochs without improvement before stopping; 0 = off
    monitor: str = "dice_triplet"  # validation metric to maximise (val_loss is minimised)
    max_steps: int = 0  # cap on batches per epoch (smoke tests); 0 = all

    def __post_init__(self):
        if self.amp not in AMP_MODES:
            raise ValueError(f"train.amp {self.amp!r} is unknown; valid: {', '.join(AMP_MODES)}")
        if self.epochs < 1 or self.accumulate < 1 or self.top_k < 1:
            raise ValueError("train.epochs, train.accumulate and train.top_k must be >= 1")


class EMA:
    """Exponential moving average of a model's floating-point weights (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, value in zip(
            self.model.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if shadow.dtype.is_floating_point:
                shadow.mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)
            else:
                shadow.copy_(value)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``save_checkpoint``; ``ValueError`` naming the file otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: checkpoint not found") from None
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint: {error}") from None


def average_state_dicts(states: list[dict]) -> dict:
    """The element-wise mean of floating-point tensors; other tensors from the first state."""
    if not states:
        raise ValueError("no checkpoints to average")
    mean = {}
    for key, first in states[0].items():
        if first.dtype.is_floating_point:
            mean[key] = sum(s[key].double() for s in states).div(len(states)).to(first.dtype)
        else:
            mean[key] = first.clone()
    return mean


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimiser: torch.optim.Optimizer,
        stepper: Stepper,
        train_loader,
        val_loader,
        settings: Settings,
        out: str | os.PathLike,
        *,
        config: dict,
        device: torch.device,
        log: Callable[[str], None] = print,
    ):
        self.model, self.loss, self.optimiser, self.stepper = model, loss, optimiser, stepper
        self.train_loader, self.val_loader = train_loader, val_loader
        self.settings, self.out, self.config, self.device, self.log = (
            settings,
            Path(out),
            config,
            device,
            log,
        )
        self.amp = settings.amp if device.type == "cuda" else "none"
        if settings.amp != "none" and self.amp == "none":
            log(f"note: train.amp={settings.amp} needs CUDA; training in float32 on {device}")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        memory = torch.channels_last if settings.channels_last else torch.preserve_format
        self.model.to(device=device, memory_format=memory)
        self.loss.to(device)
        self.ema = EMA(self.model, settings.ema) if settings.ema > 0 else None
        self.top: list[tuple[float, int, Path]] = []  # (score, epoch, path), best first
        self.history: list[dict] = []

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def _sign(self) -> float:
        return -1.0 if self.settings.monitor == "val_loss" else 1.0

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        steps = len(self.train_loader)
        if self.settings.max_steps:
            steps = min(steps, self.settings.max_steps)
        totals: dict[str, float] = {}
        seen = 0
        self.optimiser.zero_grad(set_to_none=True)
        bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False, disable=None)
        for step, batch in enumerate(self.train_loader):
            if step >= steps:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            x = batch["image"]
            if self.settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp):
                outputs = self.model(x)
            loss, parts = self.loss(outputs, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}, step {step}: the loss is {float(loss.detach())} ({parts}); "
                    "stopping, the checkpoints written so far are intact"
                )
            self.scaler.scale(loss / self.settings.accumulate).backward()
            last = step + 1 == steps
            if (step + 1) % self.settings.accumulate == 0 or last:
                self._optimiser_step()
            n = len(x)
            seen += n
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                totals[name] = totals.get(name, 0.0) + value * n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
            bar.update()
        bar.close()
        return {f"train_{k}": v / max(seen, 1) for k, v in totals.items()} | {"images": seen}

    def _optimiser_step(self) -> None:
        if self.settings.clip_grad > 0:
            self.scaler.unscale_(self.optimiser)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.optimiser.zero_grad(set_to_none=True)
        self.stepper.after_batch()
        if self.ema is not None:
            self.ema.update(self.model)

    def validate(self) -> dict[str, float]:
        return evaluate(
            self.eval_model,
            self.val_loader,
            self.loss,
            device=self.device,
            amp=self.amp,
            channels_last=self.settings.channels_last,
        )

    def fit(self) -> dict:
        """Train every epoch, keep the top-k, write ``final.pt``; returns a summary."""
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        best, stale = -math.inf, 0
        start = time.perf_counter()
        for epoch in range(self.settings.epochs):
            began = time.perf_counter()
            lrs = {
                f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimiser.param_groups)
            }
            row = {"epoch": epoch, **self.train_epoch(epoch), **lrs}
            train_time = time.perf_counter() - began
            metrics = self.validate()
            if self.settings.monitor not in metrics:
                raise ValueError(
                    f"train.monitor {self.settings.monitor!r} is not a validation metric; "
                    f"valid: {', '.join(sorted(metrics))}"
                )
            score = metrics[self.settings.monitor]
            self.stepper.after_epoch(score * self._sign())
            row |= metrics | {"seconds": time.perf_counter() - began}
            row["images_per_s"] = row["images"] / train_time
            self.history.append(row)
            self._keep_top_k(epoch, score, metrics)
            self._write_log()
            self.log(_summary(row, self.settings.monitor))
            if score * self._sign() > best:
                best, stale = score * self._sign(), 0
            else:
                stale += 1
                if self.settings.early_stop and stale >= self.settings.early_stop:
                    self.log(f"early stop: no better {self.settings.monitor} for {stale} epochs")
                    break
        final = self.write_final()
        return {
            "top_k": [(epoch, score) for score, epoch, _ in self.top],
            "final": str(final),
            "train_seconds": time.perf_counter() - start,
            "epochs_run": len(self.history),
        }

    def _keep_top_k(self, epoch: int, score: float, metrics: dict) -> None:
        key = score * self._sign()
        if not math.isfinite(key):
            key = -math.inf
        if len(self.top) >= self.settings.top_k and key <= self.top[-1][0] * self._sign():
            return
        path = self.out / "checkpoints" / f"epoch{epoch:03d}.pt"
        state = self.eval_model.state_dict()
        save_checkpoint(
            path,
            {"model": state, "config": self.config, "epoch": epoch, "score": score}
            | {"metrics": metrics},
        )
        self.top.append((score, epoch, path))
        self.top.sort(key=lambda item: (-item[0] * self._sign(), item[1]))
        for _, _, dropped in self.top[self.settings.top_k :]:
            dropped.unlink(missing_ok=True)
        del self.top[self.settings.top_k :]

    def write_final(self) -> Path:
        """Average the top-k checkpoints into ``final.pt`` and load it into the model."""
        states = [load_checkpoint(path)["model"] for _, _, path in self.top]
        mean = average_state_dicts(states)
        path = self.out / "final.pt"
        epochs = [epoch for _, epoch, _ in self.top]
        save_checkpoint(
            path, {"model": mean, "config": self.config, "epoch": -1, "averaged_epochs": epochs}
        )
        self.model.load_state_dict(mean)
        return path

    def _write_log(self) -> None:
        from common.plots import training_curves

        frame = pd.DataFrame(self.history)
        with atomic_path(self.out / "log.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        training_curves(frame, self.out / "curves.png")


def _summary(row: dict, monitor: str) -> str:
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_loss", "dice_05", "dice_triplet", "empty_dice", "auc"):
        if key in row:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['images_per_s']:.1f} img/s, {row['seconds']:.0f}s")
    return " | ".join(shown) + f"  (monitor: {monitor})"
