"""The train loop: AMP, gradient accumulation and clipping, EMA, channels_last, validation every
epoch, top-k checkpoints averaged into the final weights, early stopping, resume, DDP.

Files written into ``out`` (all atomically, by rank 0 only):

    checkpoints/epoch<NNN>.pt   the top-k epochs by ``monitor``: {"model", "config", "epoch",
                                "score", "metrics"}
    last.pt                     everything a resume needs, rewritten after every epoch: model,
                                optimiser, scheduler, scaler, EMA, top-k list, history, early-stop
                                counters and the random states (the sampler is a function of the
                                seed and the epoch, so the epoch number restores its position)
    final.pt                    the mean of the top-k weights (epoch = -1)
    log.csv, curves.png         one row per epoch: losses, metrics, learning rates, speed

A run killed at any point resumes (``fit(resume=True)``) from the end of the last finished epoch,
and finishes with the same top-k list and final weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import field, make_dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.config import common_schema
from common.data.datasets import reseed_main_process
from common.data.mixing import BatchMix, apply_mix, mix_generator
from common.infer.inference import (
    autocast,
    collect_validation,
    effective_amp,
    validation_metrics,
)
from common.io.atomic import atomic_path
from common.train import distributed
from common.train.checkpoints import (
    average_state_dicts,
    load_checkpoint,
    random_states,
    restore_random_states,
    save_checkpoint,
)
from common.train.optim import Stepper

AMP_MODES = ("none", "fp16", "bf16")
LAST = "last.pt"


def _check_settings(self) -> None:
    if self.amp not in AMP_MODES:
        raise ValueError(f"train.amp {self.amp!r} is unknown; valid: {', '.join(AMP_MODES)}")
    if self.epochs < 1 or self.accumulate < 1 or self.top_k < 1 or self.validate_every < 1:
        raise ValueError(
            "train.epochs, train.accumulate, train.top_k and train.validate_every must be >= 1"
        )
    if self.validate_every > 1 and self.monitor != "epoch":
        raise ValueError(
            f"train.validate_every={self.validate_every} needs train.monitor=epoch: "
            f"{self.monitor} can only choose among validated epochs"
        )


def _settings_class():
    """``Settings``: one field per key of the generic schema's ``train`` section, with its default
    (``common/configs/experiment.yaml`` is the one source: a key added there is a field here, so
    ``Settings(**config.train)`` never drops one). ``monitor`` is the validation metric to
    maximise (``val_loss`` is minimised); ``epoch`` keeps the last ``top_k`` epochs, so that the
    validation set (a benchmark's test fold) chooses nothing."""
    fields = []
    for key, default in common_schema()["train"].items():
        kind = type(default) if default is not None else object
        value = field(default_factory=lambda d=default: copy.deepcopy(d))
        fields.append((key, kind, value))
    namespace = {"__post_init__": _check_settings, "__doc__": _settings_class.__doc__}
    return make_dataclass("Settings", fields, namespace=namespace, frozen=True)


Settings = _settings_class()


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
        channel_names: list[str] | None = None,
        mix: BatchMix | None = None,
        seed: int = 0,
    ):
        self.loss, self.optimiser, self.stepper = loss, optimiser, stepper
        self.channel_names = channel_names
        self.mix, self.seed = (
            mix,
            seed,
        )  # CutMix / Cutout on each training batch (common.data.mixing)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.settings, self.out, self.config, self.device = settings, Path(out), config, device
        self.log = log if distributed.is_main() else (lambda _: None)
        self.amp = effective_amp(device, settings.amp)
        if settings.amp != "none" and self.amp == "none":
            why = "needs CUDA"
            if settings.amp == "bf16" and device.type == "cpu":
                why = (
                    "needs a CPU with native bfloat16 (AVX-512 BF16 or AMX); emulated, it is slower"
                )
            self.log(f"note: train.amp={settings.amp} {why}; training in float32 on {device}")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        if settings.sync_bn and distributed.active():
            if distributed.backend() != "nccl":
                raise ValueError("train.sync_bn needs the NCCL backend (DDP on GPUs)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory = torch.channels_last if settings.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=memory)  # the bare module
        self.net: nn.Module = self.model
        if distributed.active():
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.loss.to(device)
        self.ema = EMA(self.model, settings.ema) if settings.ema > 0 else None
        self.top: list[tuple[float, int, Path]] = []  # (score, epoch, path), best first
        self.history: list[dict] = []
        self.best, self.stale = -math.inf, 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def _sign(self) -> float:
        return -1.0 if self.settings.monitor == "val_loss" else 1.0

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        reseed_main_process(self.train_loader)
        steps = len(self.train_loader)
        if self.settings.max_steps:
            steps = min(steps, self.settings.max_steps)
        totals: dict[str, float] = {}
        seen = 0
        self.optimiser.zero_grad(set_to_none=True)
        show = None if distributed.is_main() else True
        bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="batch", leave=False, disable=show)
        rng = mix_generator(self.seed, epoch, distributed.rank()) if self.mix else None
        for step, batch in enumerate(self.train_loader):
            if step >= steps:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if self.mix:
                batch = apply_mix(batch, self.mix, rng)
            x = batch["image"]
            if self.settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp):
                outputs = self.net(x)
            loss, parts = self.loss(outputs, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"epoch {epoch}, step {step}: the loss is {float(loss.detach())} ({parts}); "
                    "stopping, the checkpoints written so far are intact"
                )
            self.scaler.scale(loss / self.settings.accumulate).backward()
            if (step + 1) % self.settings.accumulate == 0 or step + 1 == steps:
                self._optimiser_step()
            n = len(x)
            seen += n
            for name, value in {"loss": float(loss.detach()), **parts}.items():
                totals[name] = totals.get(name, 0.0) + value * n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
            bar.update()
        bar.close()
        means = distributed.mean({f"train_{k}": v / max(seen, 1) for k, v in totals.items()})
        return means | {"images": seen * distributed.world_size()}

    def _optimiser_step(self) -> None:
        distributed.average_gradients(self.loss.parameters())  # learned loss weights
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
        """Metrics over the whole validation set; under DDP each rank scores its shard."""
        part = collect_validation(
            self.eval_model,
            self.val_loader,
            self.loss,
            device=self.device,
            amp=self.amp,
            channels_last=self.settings.channels_last,
            channel_names=self.channel_names,
        )
        return validation_metrics(distributed.gather(part))

    def fit(self, resume: bool = False) -> dict:
        """Train every epoch (from ``last.pt`` when resuming), keep the top-k, write
        ``final.pt``; returns a summary."""
        if distributed.is_main():
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        start_epoch = self._resume() if resume else 0
        start = time.perf_counter()
        for epoch in range(start_epoch, self.settings.epochs):
            if self._run_epoch(epoch):
                break
        final = self.write_final()
        return {
            "top_k": [(epoch, score) for score, epoch, _ in self.top],
            "final": str(final),
            "train_seconds": time.perf_counter() - start,
            "epochs_run": len(self.history),
        }

    def _run_epoch(self, epoch: int) -> bool:
        """One epoch with its validation and bookkeeping; True when early stopping says stop."""
        began = time.perf_counter()
        lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimiser.param_groups)}
        row = {"epoch": epoch, **self.train_epoch(epoch), **lrs}
        train_time = time.perf_counter() - began
        every = self.settings.validate_every
        validated = (epoch + 1) % every == 0 or epoch + 1 == self.settings.epochs
        metrics = self.validate() if validated else {}
        scores = metrics | {"epoch": float(epoch)}
        if self.settings.monitor not in scores:
            raise ValueError(
                f"train.monitor {self.settings.monitor!r} is not a validation metric; "
                f"valid: {', '.join(sorted(scores))}"
            )
        score = scores[self.settings.monitor]
        self.stepper.after_epoch(score * self._sign())
        row |= metrics | {"seconds": time.perf_counter() - began}
        row["images_per_s"] = row["images"] / train_time
        self.history.append({k: float(v) if k != "epoch" else int(v) for k, v in row.items()})
        dropped = self._keep_top_k(epoch, score, metrics)
        if score * self._sign() > self.best:
            self.best, self.stale = score * self._sign(), 0
        else:
            self.stale += 1
        self._write_last(epoch)
        for path in dropped:  # only once last.pt no longer lists them
            path.unlink(missing_ok=True)
        self._write_log()
        self.log(_summary(row, self.settings.monitor))
        if self.settings.early_stop and self.stale >= self.settings.early_stop:
            self.log(f"early stop: no better {self.settings.monitor} for {self.stale} epochs")
            return True
        return False

    def _keep_top_k(self, epoch: int, score: float, metrics: dict) -> list[Path]:
        """Add this epoch if it is among the best k; returns the files that fell out."""
        key = score * self._sign()
        key = key if math.isfinite(key) else -math.inf
        worst = self.top[-1][0] * self._sign() if self.top else math.inf
        if len(self.top) >= self.settings.top_k and key <= worst:
            return []
        path = self.out / "checkpoints" / f"epoch{epoch:03d}.pt"
        if distributed.is_main():
            state = {"model": self.eval_model.state_dict(), "config": self.config}
            save_checkpoint(path, state | {"epoch": epoch, "score": score, "metrics": metrics})
        self.top.append((score, epoch, path))
        self.top.sort(key=lambda item: (-item[0] * self._sign(), item[1]))
        dropped = [path for _, _, path in self.top[self.settings.top_k :]]
        del self.top[self.settings.top_k :]
        return dropped

    def _write_last(self, epoch: int) -> None:
        if not distributed.is_main():
            return
        generator = getattr(self.train_loader, "generator", None)
        save_checkpoint(
            self.out / LAST,
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimiser": self.optimiser.state_dict(),
                "loss": self.loss.state_dict(),  # learned loss weights, if any
                "stepper": self.stepper.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema is not None else None,
                "top": [(score, e, str(path)) for score, e, path in self.top],
                "history": self.history,
                "best": self.best,
                "stale": self.stale,
                "random": random_states(generator),
                "config": self.config,
            },
        )

    def _resume(self) -> int:
        """Restore ``last.pt`` (every rank reads it); returns the epoch to start from."""
        path = self.out / LAST
        if not path.is_file():
            self.log(f"resume: no {path}, starting from epoch 0")
            return 0
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        if state.get("loss"):
            self.loss.load_state_dict(state["loss"])
        self.stepper.load_state_dict(state["stepper"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.top = [(score, epoch, Path(p)) for score, epoch, p in state["top"]]
        self.history, self.best, self.stale = state["history"], state["best"], state["stale"]
        restore_random_states(state["random"], getattr(self.train_loader, "generator", None))
        if distributed.is_main():  # files of a top-k list that a kill left half-updated
            listed = {p.name for _, _, p in self.top}
            for stray in (self.out / "checkpoints").glob("epoch*.pt"):
                if stray.name not in listed:
                    stray.unlink()
        self.log(f"resumed from {path}: epoch {state['epoch']} done, top-k {state['top']}")
        return state["epoch"] + 1

    def write_final(self) -> Path:
        """Average the top-k checkpoints into ``final.pt`` and load it into the model."""
        distributed.barrier()  # rank 0's checkpoint files are complete
        states = [load_checkpoint(path)["model"] for _, _, path in self.top]
        mean = average_state_dicts(states)
        path = self.out / "final.pt"
        if distributed.is_main():
            epochs = [epoch for _, epoch, _ in self.top]
            state = {"model": mean, "config": self.config, "epoch": -1}
            save_checkpoint(path, state | {"averaged_epochs": epochs})
        self.model.load_state_dict(mean)
        return path

    def _write_log(self) -> None:
        if not distributed.is_main():
            return
        from common.plots import training_curves

        frame = pd.DataFrame(self.history)
        with atomic_path(self.out / "log.csv") as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        training_curves(frame, self.out / "curves.png")


def _summary(row: dict, monitor: str) -> str:
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("val_loss", "dice_05", "jaccard_05", "dice_triplet", "empty_dice", "auc"):
        if key in row:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['images_per_s']:.1f} img/s, {row['seconds']:.0f}s")
    return " | ".join(shown) + f"  (monitor: {monitor})"
