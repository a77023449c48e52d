"""The trainer's images/s against a bare PyTorch loop, and the data loader against the model.

Same model (Unet/resnet18, the default CPU experiment), same batches (8 images of 128x128 held in
memory, so only the loops differ), same loss (bce + dice) and optimiser (AdamW). The bare loop is
forward, loss, backward, step, zero_grad; ``Trainer.train_epoch`` adds the finite-loss check,
per-term loss logging, the LR scheduler, the (disabled) grad scaler and the progress bar.
Both are timed alternately, best of 3.

Precision: the same trainer in bfloat16 autocast against float32 (``train.amp``), both
channels_last, on the lung default's shape (1 input channel, 5 structures, 352 px crops, batch 8),
timed alternately, best of 3. On a CPU with AVX-512 BF16 or AMX oneDNN runs the convolutions in
bfloat16; elsewhere it emulates them and the ratio falls below 1.

The data loader is the SIIM training loader (PNG decode, light augmentations, normalisation,
2 workers) over the prepared synthetic set at 128, timed without a model.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks._util import record
from common.config import load_config
from common.data.frames import frame_items
from common.data.loaders import train_loader
from common.train.losses import CombinedLoss
from common.train.models import build_model
from common.train.optim import Stepper, build_optimiser
from common.train.training import Settings, Trainer
from competitions.siim.layout import read_inputs
from competitions.siim.prepare import prepare
from competitions.siim.synthetic import SyntheticSpec, generate

CONFIG = Path("competitions/siim/configs/unet_resnet18_cpu.yaml")
STEPS = 12
BATCH = 8
SIZE = 128


class InMemory(Dataset):
    def __init__(self, n: int, size: int = SIZE, channels: int = 3, classes: int = 1):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, channels, size, size, generator=g)
        self.masks = (torch.rand(n, classes, size, size, generator=g) > 0.9).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        mask = self.masks[i]
        return {"image": self.images[i], "mask": mask, "label": mask.amax(dim=(1, 2)), "index": i}


def _parts(steps=STEPS, size=SIZE, channels=3, classes=1):
    torch.manual_seed(0)
    model = build_model(
        task="segmentation", arch="Unet", encoder="resnet18", in_channels=channels, classes=classes
    )
    loss = CombinedLoss([{"name": "bce"}, {"name": "dice"}])
    optimiser = build_optimiser(model, name="adamw", lr=3e-4)
    data = InMemory(steps * BATCH, size=size, channels=channels, classes=classes)
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    return model, loss, optimiser, loader


def bare_loop() -> float:
    model, loss, optimiser, loader = _parts()
    model.train()
    start = time.perf_counter()
    for batch in loader:
        out = model(batch["image"])
        value, _ = loss(out, batch)
        value.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return STEPS * BATCH / (time.perf_counter() - start)


def trainer_loop(out: Path, parts=None, **settings) -> float:
    model, loss, optimiser, loader = parts or _parts()
    steps = len(loader)
    stepper = Stepper(optimiser, name="cosine", epochs=1, steps_per_epoch=steps)
    trainer = Trainer(
        model,
        loss,
        optimiser,
        stepper,
        loader,
        loader,
        Settings(epochs=1, **settings),
        out,
        config={},
        device=torch.device("cpu"),
        log=lambda _: None,
    )
    start = time.perf_counter()
    trainer.train_epoch(0)
    return steps * BATCH / (time.perf_counter() - start)


LUNG = {"steps": 3, "size": 352, "channels": 1, "classes": 5}  # the lung default's training shape


def precision_rates(out: Path) -> tuple[float, float]:
    """Images/s of the trainer at the lung default's shape in float32 and in bfloat16."""
    trainer_loop(out, _parts(**LUNG), channels_last=True, amp="bf16")  # warm-up
    best = {"none": 0.0, "bf16": 0.0}
    for _ in range(3):
        for amp in best:
            rate = trainer_loop(out, _parts(**LUNG), channels_last=True, amp=amp)
            best[amp] = max(best[amp], rate)
    return best["none"], best["bf16"]


def loader_rate(work: Path) -> float:
    synthetic = generate(work / "synthetic", SyntheticSpec(n_train=200, n_test=1))
    prepare(read_inputs(synthetic, synthetic=True), work / "prepared" / str(SIZE), SIZE)
    config = load_config(CONFIG, [f"data.prepared={work / 'prepared'}"])
    root = work / "prepared" / str(SIZE)
    table = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
    loader = train_loader(
        config, frame_items(config, root, table.assign(id=table["ImageId"])), seed=0
    )
    best = 0.0
    for _ in range(2):
        start = time.perf_counter()
        seen = sum(len(batch["image"]) for batch in loader)
        best = max(best, seen / (time.perf_counter() - start))
    return best


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_trainer."))
    try:
        bare_loop()  # warm-up: allocator, oneDNN kernels
        bare, ours = 0.0, 0.0
        for _ in range(3):
            bare = max(bare, bare_loop())
            ours = max(ours, trainer_loop(work / "run"))
        loader = loader_rate(work)
        fp32, bf16 = precision_rates(work / "precision")
        record(
            {
                "trainer_lung_352_float32_images_per_s": fp32,
                "trainer_lung_352_bf16_images_per_s": bf16,
                "trainer_bf16_vs_float32": bf16 / fp32,
                "trainer_bare_loop_images_per_s": bare,
                "trainer_images_per_s": ours,
                "trainer_vs_bare_loop": ours / bare,
                "loader_images_per_s": loader,
                "loader_vs_model_consumption": loader / ours,
            },
            f"Trainer vs bare loop (Unet/resnet18, batch {BATCH}, {SIZE}px, CPU); SIIM loader; "
            "bf16 vs float32 at the lung default's 352 px",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
