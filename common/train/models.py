"""Model registry: segmentation models from segmentation_models_pytorch by architecture and
encoder name, and classifiers (an smp encoder with a pooling head).

Every model returns a dict: ``mask`` logits (N, classes, H, W) for segmentation (one sigmoid
channel per class: multi-label, classes may overlap), ``label`` logits (N, 1)
for classification or the segmentation model's optional empty/non-empty head. Weights are never
downloaded: the default is random init, and ``weights`` names a local file (a state dict of the
whole model or of its encoder, e.g. torchvision/timm ImageNet weights saved beforehand).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import ClassificationHead
from segmentation_models_pytorch.encoders import get_encoder, get_encoder_names
from torch import nn

ARCHITECTURES = {
    "Unet": smp.Unet,
    "UnetPlusPlus": smp.UnetPlusPlus,
    "FPN": smp.FPN,
    "DeepLabV3": smp.DeepLabV3,
    "DeepLabV3Plus": smp.DeepLabV3Plus,
    "PSPNet": smp.PSPNet,
    "PAN": smp.PAN,
    "Linknet": smp.Linknet,
    "MAnet": smp.MAnet,
    "UPerNet": smp.UPerNet,
    "Segformer": smp.Segformer,
}


class SegmentationNet(nn.Module):
    """An smp model; with ``cls_head`` it also predicts whether the mask is empty."""

    def __init__(
        self,
        arch: str,
        encoder: str,
        *,
        in_channels: int,
        cls_head: bool,
        classes: int = 1,
        **params,
    ):
        super().__init__()
        aux = {"classes": 1, "pooling": "avg", "dropout": 0.2} if cls_head else None
        self.net = ARCHITECTURES[arch](
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
            aux_params=aux,
            **params,
        )

    @property
    def encoder(self) -> nn.Module:
        """The smp encoder (a property, so that its weights are not listed twice in the state
        dict and saved twice in every checkpoint)."""
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(x)
        if isinstance(out, tuple):
            return {"mask": out[0], "label": out[1]}
        return {"mask": out}


class Classifier(nn.Module):
    """An smp encoder, global pooling, dropout and one logit: is the mask non-empty?"""

    def __init__(self, encoder: str, *, in_channels: int, pooling: str = "avg", dropout=0.2):
        super().__init__()
        self.encoder = get_encoder(encoder, in_channels=in_channels, weights=None)
        self.head = ClassificationHead(
            self.encoder.out_channels[-1], classes=1, pooling=pooling, dropout=dropout
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"label": self.head(self.encoder(x)[-1])}


TASKS = ("segmentation", "classification")


def check_encoder(encoder: str) -> None:
    """An smp encoder name, or any timm model through smp's ``tu-`` prefix (``tu-regnety_040``,
    2nd place in HuBMAP; random init here, pretrained from a local ``model.weights`` file);
    ``ValueError`` naming the valid ones otherwise."""
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            close = timm.list_models(f"*{encoder[3:].split('_')[0]}*")[:8]
            raise ValueError(f"model.encoder {encoder!r}: timm has no model {encoder[3:]!r}"
                             + (f"; close: {', '.join('tu-' + c for c in close)}" if close else ""))  # fmt: skip
        return
    encoders = sorted(get_encoder_names())
    if encoder not in encoders:
        raise ValueError(f"model.encoder {encoder!r} is unknown; valid: {', '.join(encoders)}, "
                         "or any timm model as tu-<name>")  # fmt: skip


def build_model(
    *,
    task: str,
    arch: str,
    encoder: str,
    in_channels: int = 3,
    cls_head: bool = False,
    classes: int = 1,
    weights: str | os.PathLike | None = None,
    params: dict | None = None,
) -> nn.Module:
    """A model by name; unknown names raise ``ValueError`` listing the valid ones. ``classes``
    is the number of mask channels of a segmentation model."""
    if task not in TASKS:
        raise ValueError(f"model.task {task!r} is unknown; valid: {', '.join(TASKS)}")
    check_encoder(encoder)
    if task == "segmentation":
        if arch not in ARCHITECTURES:
            valid = ", ".join(ARCHITECTURES)
            raise ValueError(f"model.arch {arch!r} is unknown; valid: {valid}")
        _check_params(arch, params or {})
        try:
            model = SegmentationNet(
                arch,
                encoder,
                in_channels=in_channels,
                cls_head=cls_head,
                classes=classes,
                **(params or {}),
            )
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"model {arch}/{encoder}: {error}") from None
    else:
        model = Classifier(encoder, in_channels=in_channels, **(params or {}))
    if weights:
        load_weights(model, weights)
    return model


_FIXED = {
    "self",
    "encoder_name",
    "encoder_weights",
    "in_channels",
    "classes",
    "aux_params",
    "kwargs",
}


def _check_params(arch: str, params: dict) -> None:
    """smp swallows unknown keyword arguments; a typo in model.params must not go unnoticed."""
    accepted = set(inspect.signature(ARCHITECTURES[arch].__init__).parameters) - _FIXED
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"model.params {unknown} not accepted by {arch}; valid: {', '.join(sorted(accepted))}"
        )


def load_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load a local state dict into the whole model, or else into its encoder (keys of a plain
    backbone such as torchvision's resnet; the classifier ``fc`` is ignored). Returns what was
    loaded; ``ValueError`` when the file is missing or matches neither."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.weights: {path} not found (weights are never downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our checkpoints
    for target, name in ((model, "model"), (model.encoder, "encoder")):
        own = target.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(matched) == len(own) or (name == "encoder" and len(matched) >= 0.9 * len(own)):
            target.load_state_dict(matched, strict=False)
            return f"loaded {len(matched)}/{len(own)} {name} tensors from {path}"
    raise ValueError(
        f"model.weights: {path} matches neither the model nor its encoder "
        f"({len(state)} tensors; e.g. {next(iter(state), None)!r})"
    )
