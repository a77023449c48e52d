"""Checkpoint files: atomic writes, safe loads, averaging, and the random states a resume needs.

Every file is a plain dict of tensors, numbers, strings, lists and tuples, so it loads with
``torch.load(path, weights_only=True)`` (no pickled code). Writes go to a temporary file that is
renamed over the target, so a kill during a write leaves the previous file intact.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from common.io.atomic import atomic_path


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


def random_states(generator: torch.Generator | None = None) -> dict:
    """Python, numpy, torch (and CUDA) global random states, plus a DataLoader's generator."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (global state)
    version, internal, gauss_next = random.getstate()
    states = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss_next),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        states["loader"] = generator.get_state()
    return states


def restore_random_states(states: dict, generator: torch.Generator | None = None) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and "loader" in states:
        generator.set_state(states["loader"])
