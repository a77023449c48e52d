"""Test-set inference: peak memory for 100 against 1,000 images, and throughput against a bare
model forward loop.

The real stage code runs (``competitions.siim.ensemble.predict_test``): loading prepared test
images, the model (Unet/resnet18 at 128 px, random weights: speed and memory do not depend on
them), resizing each map to the native 256x256, quantising, writing it as PNG, the triplet and
the RLE of the submission row. Peak RSS is measured in a fresh process per image count. The
bare loop runs the same model on the same batches (``torch.no_grad``, sigmoid) and nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks._util import record
from common.config import load_config
from common.data.datasets import SegmentationDataset
from common.data.folds import ensure_folds
from common.submit.ensemble import Member, predict_test
from common.train.checkpoints import save_checkpoint
from common.train.models import build_model
from competitions.siim.ensemble import task
from competitions.siim.layout import read_inputs
from competitions.siim.prepare import prepare
from competitions.siim.synthetic import SyntheticSpec, generate

EXPERIMENT = Path("competitions/siim/configs/unet_resnet18_cpu.yaml")
ENSEMBLE = Path("competitions/siim/configs/ensembles/base.yaml")
SIZE = 128
THRESHOLDS = {"combine": "triplet", "top": 0.6, "min_area": 64, "bottom": 0.4}
N_SMALL, N_LARGE = 100, 1000


def build(work: Path) -> None:
    """1,000 synthetic test images prepared at 128 px and one saved fold model."""
    synthetic = generate(work / "synthetic", SyntheticSpec(n_train=20, n_test=N_LARGE))
    prepare(read_inputs(synthetic, synthetic=True), work / "prepared" / str(SIZE), SIZE)
    import pandas as pd

    train = pd.read_csv(work / "prepared" / str(SIZE) / "train.csv", dtype={"ImageId": str})
    ensure_folds(train["ImageId"], train["mask_area"], work / "folds.csv", 2, 0)
    config = load_config(
        EXPERIMENT, [f"data.prepared={work / 'prepared'}", f"data.folds={work / 'folds.csv'}"]
    )
    torch.manual_seed(0)
    model = build_model(task="segmentation", arch="Unet", encoder="resnet18")
    state = {"model": model.state_dict(), "config": config.to_dict(), "epoch": -1}
    save_checkpoint(work / "models" / "bench" / "fold0" / "final.pt", state)


def run_stage(work: Path, n: int) -> float:
    """The test stage on the first ``n`` test images; returns seconds."""
    config = load_config(ENSEMBLE, [f"output={work / 'models'}", "tta=[none]", "num_workers=2"])
    config["members"] = [{"experiment": "bench", "folds": [0], "weight": 1.0}]
    members = [Member("bench", (0,), 1.0)]
    siim = task(config, with_train=False)
    siim.test = siim.test.head(n)
    out = work / "models" / f"run{n}"
    start = time.perf_counter()
    predict_test(config, siim, members, [], THRESHOLDS, out, lambda _: None)
    return time.perf_counter() - start


def bare_loop(work: Path, n: int) -> float:
    config = load_config(EXPERIMENT)
    ensemble = load_config(ENSEMBLE, [f"output={work / 'models'}"])
    ensemble["members"] = [{"experiment": "bench", "folds": [0], "weight": 1.0}]
    siim = task(ensemble, with_train=False)
    ids = siim.test["id"].head(n).tolist()
    dataset = SegmentationDataset(ids, siim.images, size=SIZE)
    loader = DataLoader(dataset, batch_size=config.data.val_batch_size, num_workers=2)
    torch.manual_seed(0)
    model = build_model(task="segmentation", arch="Unet", encoder="resnet18").eval()
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            torch.sigmoid(model(batch["image"])["mask"])
    return time.perf_counter() - start


def child(work: Path, n: int) -> None:
    run_stage(work, n)
    # VmHWM: this address space's peak. ru_maxrss would also count the parent's pages shared
    # between fork and exec, i.e. the whole benchmark run's size when started from benchmarks.run
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))  # KiB


def peak_rss_mib(work: Path, n: int) -> float:
    command = [sys.executable, "-m", "benchmarks.bench_inference", "--child", str(work), str(n)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_inference."))
    try:
        build(work)
        small, large = peak_rss_mib(work, N_SMALL), peak_rss_mib(work, N_LARGE)
        run_stage(work, 32)  # warm-up
        bare = min(bare_loop(work, 400) for _ in range(2))
        ours = min(run_stage(work, 400) for _ in range(2))
        record(
            {
                "inference_peak_rss_mib_100": small,
                "inference_peak_rss_mib_1000": large,
                "inference_rss_1000_vs_100": large / small,
                "inference_bare_forward_images_per_s": 400 / bare,
                "inference_stage_images_per_s": 400 / ours,
                "inference_stage_vs_bare_forward": bare / ours,
            },
            "Test inference: peak RSS 100 vs 1,000 images; stage vs bare forward (400 images)",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
