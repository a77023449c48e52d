"""The trainer's images/s against a bare PyTorch loop, and the data loader against the model.

Same model (Unet/resnet18, the default CPU experiment), same batches (8 images of 128x128 held in
memory, so only the loops differ), same loss (bce + dice) and optimiser (AdamW). The bare loop is
forward, loss, backward, step, zero_grad; ``Trainer.train_epoch`` adds the finite-loss check,
per-term loss logging, the LR scheduler, the (disabled) grad scaler and the progress bar.
Both are timed alternately, best of 3.

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
from common.loaders import train_loader
from common.losses import CombinedLoss
from common.models import build_model
from common.optim import Stepper, build_optimiser
from common.training import Settings, Trainer
from competitions.siim.layout import read_inputs
from competitions.siim.loaders import items
from competitions.siim.prepare import prepare
from competitions.siim.synthetic import SyntheticSpec, generate

CONFIG = Path("competitions/siim/configs/unet_resnet18_cpu.yaml")
STEPS = 12
BATCH = 8
SIZE = 128


class InMemory(Dataset):
    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.masks = (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.9).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        mask = self.masks[i]
        return {"image": self.images[i], "mask": mask, "label": mask.amax(dim=(1, 2)), "index": i}


def _parts():
    torch.manual_seed(0)
    model = build_model(task="segmentation", arch="Unet", encoder="resnet18")
    loss = CombinedLoss([{"name": "bce"}, {"name": "dice"}])
    optimiser = build_optimiser(model, name="adamw", lr=3e-4)
    loader = DataLoader(InMemory(STEPS * BATCH), batch_size=BATCH, shuffle=False)
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


def trainer_loop(out: Path) -> float:
    model, loss, optimiser, loader = _parts()
    stepper = Stepper(optimiser, name="cosine", epochs=1, steps_per_epoch=STEPS)
    trainer = Trainer(
        model,
        loss,
        optimiser,
        stepper,
        loader,
        loader,
        Settings(epochs=1),
        out,
        config={},
        device=torch.device("cpu"),
        log=lambda _: None,
    )
    start = time.perf_counter()
    trainer.train_epoch(0)
    return STEPS * BATCH / (time.perf_counter() - start)


def loader_rate(work: Path) -> float:
    synthetic = generate(work / "synthetic", SyntheticSpec(n_train=200, n_test=1))
    prepare(read_inputs(synthetic, synthetic=True), work / "prepared" / str(SIZE), SIZE)
    config = load_config(CONFIG, [f"data.prepared={work / 'prepared'}"])
    root = work / "prepared" / str(SIZE)
    table = pd.read_csv(root / "train.csv", dtype={"ImageId": str})
    loader = train_loader(config, items(root, table.assign(id=table["ImageId"])), seed=0)
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
        record(
            {
                "trainer_bare_loop_images_per_s": bare,
                "trainer_images_per_s": ours,
                "trainer_vs_bare_loop": ours / bare,
                "loader_images_per_s": loader,
                "loader_vs_model_consumption": loader / ours,
            },
            f"Trainer vs bare loop (Unet/resnet18, batch {BATCH}, {SIZE}px, CPU); SIIM loader",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
