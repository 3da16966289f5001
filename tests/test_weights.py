"""weights.py: weights files into models, checked; tested through get_model, as users reach them."""

import pytest
import torch
from conftest import HEAVY_MODELS, slow, slow_where
from test_model import _RunsCode, _summary
from torchvision.models import mobilenet_v2, mobilenet_v3_large, resnet18, resnet50, vgg16
from torchvision.ops.misc import FrozenBatchNorm2d

from checkpoint import model_config, model_from_config
from model import MODELS, get_model, has_reduced_tail, is_keypoint_model
from utils import UserError, load_checkpoint
from weights import backbone_body

# Every model, with the torchvision network whose ImageNet file --weights-backbone DEFAULT downloads for it.
BACKBONES = {
    "maskrcnn_resnet50_fpn": resnet50, "maskrcnn_resnet50_fpn_v2": resnet50, "fasterrcnn_resnet50_fpn": resnet50,
    "fasterrcnn_resnet50_fpn_v2": resnet50, "fasterrcnn_mobilenet_v3_large_fpn": mobilenet_v3_large,
    "maskrcnn_mobilenet_v3_large_fpn": mobilenet_v3_large, "keypointrcnn_resnet50_fpn": resnet50,
    "maskrcnn_resnet18_fpn": resnet18, "fasterrcnn_resnet18_fpn": resnet18, "fasterrcnn_mobilenet_v2": mobilenet_v2,
    "maskrcnn_mobilenet_v2": mobilenet_v2, "fasterrcnn_mobilenet_v3_large_320_fpn": mobilenet_v3_large,
    "retinanet_resnet50_fpn": resnet50, "retinanet_resnet50_fpn_v2": resnet50, "fcos_resnet50_fpn": resnet50,
    "ssd300_vgg16": vgg16, "ssdlite320_mobilenet_v3_large": mobilenet_v3_large,
}  # fmt: skip


def test_the_backbone_table_names_every_model():
    assert set(BACKBONES) == set(MODELS)


@pytest.mark.parametrize("name", slow_where(BACKBONES, HEAVY_MODELS))
def test_a_local_copy_of_the_imagenet_file_loads_as_default_and_the_model_rebuilds(name, fake_hub, weights_file):
    imagenet = weights_file("imagenet", BACKBONES[name].__name__)  # torchvision's file, as a test can write it offline
    fake_hub["state"] = load_checkpoint(imagenet)
    options = {"num_classes": 3, "weights": "none", "num_keypoints": 4 if is_keypoint_model(name) else None}
    torch.manual_seed(0)
    from_hub = get_model(name, weights_backbone="DEFAULT", **options)
    torch.manual_seed(0)
    from_file = get_model(name, weights_backbone=str(imagenet), **options)
    assert _summary(from_file) == _summary(from_hub)  # BatchNorm kind, the stages that train, eps
    expected = from_hub.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in from_file.state_dict().items())
    if name == "ssd300_vgg16":  # SSD feeds VGG 0-255 pixels less the mean: the weights made for that
        assert "vgg16_features" in fake_hub["url"]
    if name == "ssdlite320_mobilenet_v3_large":  # ImageNet weights are for the full tail; from scratch, reduced
        assert has_reduced_tail(from_file) is False
    scratch = get_model(name, **options)
    assert has_reduced_tail(scratch) is (True if name.startswith("ssdlite") else None)
    for model in (from_file, scratch):  # a checkpoint rebuilds with no flag and no download
        rebuilt = model_from_config(model_config(model, name))
        rebuilt.load_state_dict(model.state_dict())
        assert _summary(rebuilt) == _summary(model)


@pytest.mark.parametrize(
    ("name", "other"),
    [("ssd300_vgg16", mobilenet_v3_large), pytest.param("ssdlite320_mobilenet_v3_large", vgg16, marks=slow)],
)
def test_a_backbone_file_of_another_network_is_one_line(name, other, weights_file):
    other_file = weights_file("imagenet", other.__name__)
    refusal = f"{other_file.name}: does not fit {name}'s backbone .*; pass a state dict of"
    with pytest.raises(UserError, match=refusal) as error:
        get_model(name, 3, weights="none", weights_backbone=str(other_file))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "classifier"),
    [
        ("maskrcnn_resnet50_fpn", resnet50),
        ("fasterrcnn_mobilenet_v3_large_fpn", mobilenet_v3_large),
        ("maskrcnn_mobilenet_v2", mobilenet_v2),
    ],
)
def test_backbone_weights_file(name, classifier, weights_file):
    imagenet = weights_file("imagenet", classifier.__name__)
    state = load_checkpoint(imagenet)
    model = get_model(name, num_classes=2, weights="none", weights_backbone=str(imagenet))
    body = backbone_body(model).state_dict()
    checked = 0
    for key, value in state.items():
        key = key.removeprefix("features.")
        if key in body:
            assert torch.equal(body[key], value), key
            checked += 1
    assert checked > 100
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone_body(model).modules())


def test_weights_that_run_code_when_unpickled_are_refused(tmp_path):
    marker = tmp_path / "it-ran"
    torch.save({"model": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="evil.pth: refused to load it with weights_only=True"):
        get_model("maskrcnn_mobilenet_v3_large_fpn", 2, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()
