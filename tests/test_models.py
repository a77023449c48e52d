"""common.train.models: every architecture and the classifier train one step; weights from local files."""

from __future__ import annotations

import pytest
import torch

from common.train.losses import CombinedLoss
from common.train.models import ARCHITECTURES, build_model, load_weights


def _one_step(model, size=64):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    batch = {"mask": (torch.rand(2, 1, size, size) > 0.7).float(), "label": torch.ones(2, 1)}
    heads = model(x)
    terms = [{"name": "bce"}] if "mask" in heads else []
    loss, _ = CombinedLoss(terms, cls_weight=1.0 if "label" in heads else 0.0)(heads, batch)
    loss.backward()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    optimiser.step()
    return heads


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_each_architecture_trains_a_step(arch):
    model = build_model(task="segmentation", arch=arch, encoder="resnet18", cls_head=True)
    size = 128 if arch == "PAN" else 64  # PAN's pyramid pooling needs 4x4 at the deepest level
    heads = _one_step(model, size)
    assert heads["mask"].shape == (2, 1, size, size) and heads["label"].shape == (2, 1)


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet-b0"])
def test_classifier_trains_a_step(encoder):
    model = build_model(task="classification", arch="Unet", encoder=encoder, in_channels=3)
    assert _one_step(model)["label"].shape == (2, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "Unett"}, r"model.arch 'Unett' is unknown; valid: Unet, UnetPlusPlus"),
        ({"encoder": "resnet19"}, r"model.encoder 'resnet19' is unknown; valid: .*resnet18"),
        ({"task": "detection"}, r"model.task 'detection' is unknown"),
        ({"weights": "/nonexistent/w.pt"}, r"not found \(weights are never downloaded\)"),
        ({"params": {"decoder_chanels": 3}}, r"\['decoder_chanels'\] not accepted by Unet"),
    ],
)
def test_bad_model_specs(kwargs, message):
    spec = {"task": "segmentation", "arch": "Unet", "encoder": "resnet18"} | kwargs
    with pytest.raises(ValueError, match=message):
        build_model(**spec)


def test_weights_from_a_local_file(tmp_path):
    source = build_model(task="segmentation", arch="FPN", encoder="resnet18")
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "checkpoint.pt")
    target = build_model(task="segmentation", arch="Unet", encoder="resnet18")
    assert "encoder" in load_weights(target, tmp_path / "encoder.pt")
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value)
    same = build_model(
        task="segmentation", arch="FPN", encoder="resnet18", weights=tmp_path / "checkpoint.pt"
    )
    x = torch.randn(1, 3, 64, 64)
    source.eval(), same.eval()
    assert torch.equal(source(x)["mask"], same(x)["mask"])
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="matches neither"):
        load_weights(target, tmp_path / "other.pt")


def test_multi_label_model_has_one_channel_per_class():
    model = build_model(
        task="segmentation", arch="Unet", encoder="resnet18", in_channels=1, classes=5
    )
    assert model(torch.randn(2, 1, 64, 64))["mask"].shape == (2, 5, 64, 64)


def test_timm_encoders_through_the_tu_prefix(tmp_path):
    """Any timm model as an encoder (2nd place in HuBMAP used a RegNet), random init, and
    pretrained weights from a local file of its encoder."""
    source = build_model(task="segmentation", arch="Unet", encoder="tu-regnetx_002")
    assert _one_step(source, 64)["mask"].shape == (2, 1, 64, 64)
    torch.save(source.encoder.state_dict(), tmp_path / "regnet.pt")
    target = build_model(task="segmentation", arch="FPN", encoder="tu-regnetx_002",
                         weights=tmp_path / "regnet.pt")  # fmt: skip
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value)
    with pytest.raises(
        ValueError, match=r"timm has no model 'regnetx_0002'; close: .*tu-regnetx_002"
    ):
        build_model(task="segmentation", arch="Unet", encoder="tu-regnetx_0002")
