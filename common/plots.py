"""PNG figures written next to a run (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from common.io.atomic import atomic_path


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def search_heatmap(result, path: str | os.PathLike) -> None:
    """Two panels of a threshold search: the two thresholds at the best min area, and the first
    threshold against min area with the best second threshold for each pair."""
    table = result.table
    score = table.columns[-1]  # the metric's column: dice or jaccard
    first, second = (c for c in table.columns if c not in ("min_area", score))
    best = result.best
    at_area = table[table["min_area"] == best["min_area"]]
    at_best = at_area.pivot(index=first, columns=second, values=score)
    over = table.groupby([first, "min_area"])[score].max().unstack()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, grid, title in (
        (axes[0], at_best, f"mean {score.capitalize()} at min_area = {best['min_area']}"),
        (axes[1], over, f"mean {score.capitalize()}, best over {second}"),
    ):
        image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(
            range(grid.shape[1]), [f"{v:g}" for v in grid.columns], rotation=90, fontsize=7
        )
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index], fontsize=7)
        ax.set_xlabel(grid.columns.name)
        ax.set_ylabel(grid.index.name)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046)
        row = int(np.flatnonzero(grid.index == best[grid.index.name])[0])
        col = int(np.flatnonzero(grid.columns == best[grid.columns.name])[0])
        ax.plot(col, row, marker="*", color="red", markersize=12)
    fig.suptitle(
        f"{result.n_images} images: best {best['dice']:.4f} "
        + ", ".join(f"{k}={best[k]:g}" for k in (first, "min_area", second))
        + f"; all empty {result.empty_dice:.4f}"
    )
    _save(fig, path)


def training_curves(log, path: str | os.PathLike) -> None:
    """Losses (left) and validation metrics (right) per epoch, from the trainer's log frame.
    With several mask channels the right panel shows each channel's Dice at 0.5 and their
    mean."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for column in [c for c in log.columns if c.endswith("loss")]:
        rows = log[["epoch", column]].dropna()  # epochs without validation have no val_loss
        left.plot(rows["epoch"], rows[column], marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend(fontsize=8)
    per_channel = [c for c in log.columns if c.startswith("dice_05_")]
    if per_channel:
        metrics = ["dice_05", *per_channel]
    else:
        metrics = ("dice_05", "dice_triplet", "empty_dice", "auc", "accuracy")
    metrics = [c for c in metrics if c in log]
    for column in metrics:
        style = "--" if column == "empty_dice" else "-"
        rows = log[["epoch", column]].dropna()
        right.plot(rows["epoch"], rows[column], style, marker="o", label=column)
    right.set_xlabel("epoch")
    right.set_title("validation")
    if metrics:
        right.legend(fontsize=8)
    _save(fig, path)


def mask_overlays(panels, path: str | os.PathLike, columns: int = 4) -> None:
    """A grid of images with their truth (green) and prediction (red) outlines.

    ``panels``: (title, image uint8 (H, W) or RGB (H, W, 3), truth {0,1} or None, prediction {0,1}) tuples;
    a mask may be (C, H, W) (one channel per structure), each channel outlined on its own.
    Masks of another size than the image are drawn on the image resized to theirs."""
    import cv2

    panels = list(panels)
    if not panels:
        return
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, truth, pred) in zip(axes.ravel(), panels, strict=False):
        height, width = np.shape(pred)[-2:]
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        rgb = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        for mask, colour in ((truth, (0, 255, 0)), (pred, (255, 40, 40))):
            if mask is None:
                continue
            for channel in np.reshape(mask, (-1, height, width)):
                if channel.any():
                    contours, _ = cv2.findContours(
                        np.ascontiguousarray(channel, dtype=np.uint8),
                        cv2.RETR_EXTERNAL,
                        cv2.CHAIN_APPROX_NONE,
                    )
                    cv2.drawContours(rgb, contours, -1, colour, max(1, height // 256))
        ax.imshow(rgb)
        ax.set_title(title, fontsize=8)
    with_truth = any(truth is not None for _, _, truth, _ in panels)
    fig.suptitle("truth: green, prediction: red" if with_truth else "prediction: red", fontsize=10)
    _save(fig, path)


def grid_heatmap(table, x: str, y: str, value: str, path: str | os.PathLike, title: str, best=None):
    """One heatmap of ``value`` over the grid of two columns of ``table``, the best point
    starred."""
    grid = table.pivot(index=y, columns=x, values=value)
    fig, ax = plt.subplots(figsize=(7, 5))
    image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index], fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    fig.colorbar(image, ax=ax, fraction=0.046, label=value)
    if best is not None:
        row = int(np.flatnonzero(grid.index == best[y])[0])
        col = int(np.flatnonzero(grid.columns == best[x])[0])
        ax.plot(col, row, marker="*", color="red", markersize=12)
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def table_figure(frame, path: str | os.PathLike, title: str, width: int = 48) -> None:
    """A table as a PNG (cells cut to ``width`` characters, floats to 4 decimals)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.4f}"
        text = str(value)
        return text if len(text) <= width else text[: width - 3] + "..."

    rows = [[cell(v) for v in row] for row in frame.itertuples(False)] or [[""] * frame.shape[1]]
    fig, ax = plt.subplots(figsize=(min(30, 2.2 * frame.shape[1] + 4), 0.4 * len(rows) + 1.2))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=list(frame.columns), loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(frame.shape[1])))
    ax.set_title(title, loc="left")
    _save(fig, path)
