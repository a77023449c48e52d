"""The CUDA paths, run on a GPU: what CI (CPU only) cannot check.

1. Autocast: under ``train.amp`` fp16 / bf16 the convolutions run in that type on CUDA, the
   weights stay float32.
2. Fold runs: the tiny synthetic SIIM fold (``run_fold``, the project's own stage) trained on the
   GPU in float32, fp16 with the gradient scaler and channels_last (with EMA), bf16 with
   channels_last, and bf16 alone: each must finish, learn (the train loss falls), keep float32
   weights and beat the all-empty baseline out of fold.
3. Inference precision: the same fold model's probabilities on the GPU against the CPU, in float32
   (``predict_tensor`` never autocasts); the uint8 map levels that differ, with TF32 as PyTorch
   leaves it and with TF32 off.
4. Throughput: training images a second at 512 px for the real-data GPU config
   (``unet_resnet34_512_gpu.yaml``) under each AMP mode, with and without channels_last.
5. Slides: the HuBMAP GPU config's model (Unet/EfficientNet-b4, 1536 px windows at 512 px, D4)
   predicting a 10,000 px synthetic slide: the bare GPU forward of its tiles against the whole
   pipeline (read, resize, forward, blend, upsample, threshold, RLE), to show what the CPU side
   costs next to a GPU.

Run where CUDA is available: ``python -m benchmarks.gpu_check [--out FILE]``; it prints a table,
merges the ``gpu_*`` figures into benchmarks/results.json and writes them to ``--out`` as JSON.
DDP over NCCL needs two GPUs and is not checked on a one-GPU machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks._util import record
from common.config import load_config
from common.infer.inference import autocast, predict_tensor
from common.infer.slide_inference import (
    TilePlan,
    predict_slide,
    read_tiles,
    rle_from_bands,
    tile_predictor,
)
from common.io.paths import REPO
from common.post.postprocess import PROB_SCALE
from common.train.models import build_model
from common.train.runner import build_model_from

SIIM = REPO / "competitions" / "siim" / "configs"
HUBMAP_GPU = REPO / "competitions" / "hubmap" / "configs" / "unet_effb4_1536_512_gpu.yaml"
DEVICE = torch.device("cuda")
EPOCHS, SIDE = 15, 512  # --smoke: a CPU run of every step, small
MODES = [("none", False, 0.0), ("fp16", True, 0.99), ("bf16", True, 0.0), ("bf16", False, 0.0)]


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def autocast_types(device: torch.device) -> dict[str, float]:
    """The dtype the first convolution computes in, under each AMP mode."""
    model = build_model(task="segmentation", arch="Unet", encoder="resnet34", in_channels=3,
                        classes=1).to(device)  # fmt: skip
    seen = {}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.__setitem__("dtype", o.dtype))
    x = torch.randn(2, 3, 128, 128, device=device)
    out = {}
    for amp, want in (("none", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        with autocast(device, amp):
            model(x)
        out[f"gpu_autocast_{amp}_ok"] = float(seen["dtype"] == want)
    out["gpu_weights_float32"] = float(all(p.dtype == torch.float32 for p in model.parameters()))
    return out


def fold_runs(root: Path) -> dict[str, float]:
    from common.post import image_oof
    from competitions.siim.loaders import FRAMES
    from tests.siim.tiny import tiny_siim

    tiny_siim(root, n_train=96, n_test=8, size=128)
    run_fold = partial(image_oof.run_fold, cases=FRAMES)
    out = {}
    for amp, channels_last, ema in MODES:
        name = f"{amp}{'_cl' if channels_last else ''}"
        config = load_config(SIIM / "base.yaml", [
            f"data.prepared={root / 'prepared'}", f"data.folds={root / 'folds.csv'}",
            f"output={root / 'models'}", f"name={name}", "data.size=128", "data.batch_size=16",
            "data.val_batch_size=32", "data.num_workers=0", f"train.epochs={EPOCHS}", f"train.device={DEVICE}",
            f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
            f"train.ema={ema}", "predict.overlays=4"])  # fmt: skip
        start = time.perf_counter()
        metrics = run_fold(config, 0, log=print)
        fold = root / "models" / name / "fold0"
        losses = pd.read_csv(fold / "log.csv")["train_loss"]
        state = torch.load(fold / "final.pt", weights_only=True)["model"]
        floats = [v for v in state.values() if v.is_floating_point()]
        out |= {f"gpu_fold_{name}_oof_dice": metrics["oof_dice"],
                f"gpu_fold_{name}_empty_dice": metrics["empty_dice"],
                f"gpu_fold_{name}_loss_ratio": losses.iloc[-1] / losses.iloc[0],
                f"gpu_fold_{name}_weights_float32": float(all(v.dtype == torch.float32 for v in floats)),
                f"gpu_fold_{name}_seconds": time.perf_counter() - start}  # fmt: skip
    return out


def inference_precision(root: Path, name: str) -> dict[str, float]:
    """Probabilities of a fold model on prepared images, GPU against CPU, both in float32."""
    from common.infer.predict import load_fold_model
    from common.io.images import read_png

    fold = load_fold_model(root / "models", name, 0, 1.0, torch.device("cpu")).model
    paths = sorted((root / "prepared" / "128").rglob("*.png"))[:32]
    x = torch.from_numpy(np.stack([read_png(p) for p in paths]).astype(np.float32) / 255.0)
    x = (x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)).expand(-1, 3, -1, -1).contiguous()
    views = ("none", "hflip")
    cpu = predict_tensor(fold, x, device=torch.device("cpu"), tta=views)["mask"]
    out = {}
    for tf32 in (True, False):  # PyTorch's default for cuDNN convolutions is TF32 on
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        gpu = predict_tensor(fold.to(DEVICE), x, device=DEVICE, tta=views)["mask"]
        fold.cpu()
        levels = np.abs(np.round(gpu * PROB_SCALE) - np.round(cpu * PROB_SCALE))
        key = "tf32" if tf32 else "fp32"
        out[f"gpu_vs_cpu_{key}_max_abs_prob"] = float(np.abs(gpu - cpu).max())
        out[f"gpu_vs_cpu_{key}_levels_differing_share"] = float((levels > 0).mean())
        out[f"gpu_vs_cpu_{key}_max_levels"] = float(levels.max())
    torch.backends.cudnn.allow_tf32 = True
    return out


def throughput() -> dict[str, float]:
    from common.stages import measure_throughput

    out = {}
    for amp in ("none", "fp16", "bf16"):
        for channels_last in (False, True):
            config = load_config(SIIM / "unet_resnet34_512_gpu.yaml", [
                f"train.device={DEVICE}", f"train.amp={amp}",
                f"train.channels_last={str(channels_last).lower()}"])  # fmt: skip
            rate = measure_throughput(config, side=SIDE, batch=32 if SIDE == 512 else 2, steps=10)
            out[f"gpu_train_images_per_s_{SIDE}_{amp}{'_cl' if channels_last else ''}"] = rate
    return out


def slide_speed(root: Path, side: int = 10_000) -> dict[str, float]:
    from benchmarks.bench_slides import write_slide
    from common.io.slides import open_slide

    path = root / "slide.tiff"
    write_slide(path, side)
    config = load_config(HUBMAP_GPU, [f"train.device={DEVICE}"])
    torch.manual_seed(0)
    model = build_model_from(config, 1).to(DEVICE).eval().to(memory_format=torch.channels_last)
    plan = TilePlan(tile=512, scale=3, overlap=128, blend="gaussian", batch_size=16)
    tta = ("none", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
    predict = tile_predictor([model], device=DEVICE, tta=tta, channels_last=True)
    out = {}
    with open_slide(path) as slide:
        start = time.perf_counter()
        batches = [images for _, images in read_tiles(slide, plan)]
        out["gpu_slide_read_seconds"] = time.perf_counter() - start
        predict(batches[0])
        sync()
        start = time.perf_counter()
        for images in batches:
            predict(images)
        sync()
        out["gpu_slide_bare_forward_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        bands = predict_slide(slide, predict, plan)
        rle_from_bands(
            bands, plan.model_shape(slide.shape), slide.shape, threshold=0.5, min_size=2000
        )
        out["gpu_slide_pipeline_seconds"] = time.perf_counter() - start
    out["gpu_slide_tiles"] = sum(len(b) for b in batches)
    out["gpu_slide_side_px"] = side
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", default=["autocast", "folds", "throughput", "slide"])
    parser.add_argument(
        "--smoke", action="store_true", help="every step on the CPU, small: a check of the script"
    )
    args = parser.parse_args(argv)
    global DEVICE, EPOCHS, SIDE, MODES
    if args.smoke:
        DEVICE, EPOCHS, SIDE, MODES = (
            torch.device("cpu"),
            1,
            64,
            [("none", False, 0.0), ("bf16", True, 0.99)],
        )
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available on this machine")
    figures = {}
    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu (smoke)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        if "autocast" in args.only:
            figures |= autocast_types(DEVICE)
        if "folds" in args.only:
            figures |= fold_runs(root)
            figures |= inference_precision(root, "none")
        if "throughput" in args.only:
            figures |= throughput()
        if "slide" in args.only:
            figures |= slide_speed(root, 10_000 if DEVICE.type == "cuda" else 2_000)
    if args.smoke:
        print(json.dumps(figures, indent=1))
        return
    record(figures, f"CUDA paths on {name}")
    if args.out:
        args.out.write_text(
            json.dumps({"device": name, "torch": torch.__version__, **figures}, indent=2)
        )


if __name__ == "__main__":
    main()
