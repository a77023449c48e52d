"""Losses weighted by distance maps, for thin structures and boundaries (the lung seed's recipe).

- ``boundary`` (Kervadec et al., "Boundary loss for highly unbalanced segmentation", 2019):
  ``mean(p * phi)`` with ``phi`` the signed distance to the target's boundary (negative inside,
  positive outside), shifted by ``-mean(min(phi, 0))`` so it is never negative (same
  gradient; learnable loss weights need terms >= 0).
- ``hausdorff`` (Karimi & Salcudean, "Reducing the Hausdorff distance in medical image
  segmentation with convolutional neural networks", 2019, the distance-transform form):
  ``mean((p - g)^2 * (d_g^alpha + d_p^alpha))`` with ``d`` the unsigned distance to the boundary
  of the target ``g`` and of the thresholded prediction ``p > 0.5``.

Distances are in units of the image side (a map of side H: pixels / H), so the losses do not
change scale with the training size. They are computed each step with OpenCV's exact Euclidean
distance transform on the augmented target masks (a mask precomputed once would not follow the
random crops and flips) and, for ``hausdorff``, on the prediction; an empty mask has no
boundary and gets distance 0 (``hausdorff``) or ``phi = 1`` everywhere (``boundary``: every
predicted pixel costs). Inputs are logits (N, C, H, W) and {0, 1} targets of the same shape.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn


def _distances(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each outside pixel to the object, of each inside pixel to the outside)."""
    inside = mask.astype(np.uint8)
    outside = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    within = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return outside, within


def signed_distance(masks: np.ndarray) -> np.ndarray:
    """``phi`` of each (H, W) map of an (..., H, W) {0, 1} array: distance to the object's
    boundary, negative inside, in units of H; 1 everywhere for an empty map."""
    out = np.empty(masks.shape, np.float32)
    flat, target = masks.reshape(-1, *masks.shape[-2:]), out.reshape(-1, *masks.shape[-2:])
    side = masks.shape[-2]
    for index, mask in enumerate(flat):
        if not mask.any():
            target[index] = 1.0
            continue
        outside, within = _distances(mask)
        target[index] = (outside - within) / side
    return out


def boundary_distance(masks: np.ndarray) -> np.ndarray:
    """Unsigned distance of each pixel to the object's boundary, in units of H; 0 for an
    empty map (no boundary)."""
    out = np.zeros(masks.shape, np.float32)
    flat, target = masks.reshape(-1, *masks.shape[-2:]), out.reshape(-1, *masks.shape[-2:])
    side = masks.shape[-2]
    for index, mask in enumerate(flat):
        if mask.any() and not mask.all():
            outside, within = _distances(mask)
            target[index] = (outside + within) / side
    return out


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.detach() > 0.5).to("cpu", torch.uint8).numpy()


class BoundaryLoss(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        phi = torch.from_numpy(signed_distance(_numpy(target))).to(logits.device)
        prob = torch.sigmoid(logits)
        return (prob * phi).mean() - phi.clamp(max=0).mean()


class HausdorffLoss(nn.Module):
    def __init__(self, alpha: float = 2.0):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"hausdorff alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(logits)
        d_target = torch.from_numpy(boundary_distance(_numpy(target))).to(logits.device)
        d_pred = torch.from_numpy(boundary_distance(_numpy(prob))).to(logits.device)
        weight = d_target**self.alpha + d_pred**self.alpha
        return ((prob - target) ** 2 * weight).mean()
