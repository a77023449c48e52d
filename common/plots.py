"""PNG figures written next to a run (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from common.atomic import atomic_path


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def search_heatmap(result, path: str | os.PathLike) -> None:
    """Two panels of a threshold search: the two thresholds at the best min area, and the first
    threshold against min area with the best second threshold for each pair."""
    table = result.table
    first, second = (c for c in table.columns if c not in ("min_area", "dice"))
    best = result.best
    at_area = table[table["min_area"] == best["min_area"]]
    at_best = at_area.pivot(index=first, columns=second, values="dice")
    over = table.groupby([first, "min_area"])["dice"].max().unstack()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, grid, title in (
        (axes[0], at_best, f"mean Dice at min_area = {best['min_area']}"),
        (axes[1], over, f"mean Dice, best over {second}"),
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
