"""weights.py: weights files into models, checked; tested through get_model, as users reach them."""

import pytest
import torch
from test_model import _RunsCode
from torchvision.models import mobilenet_v2, mobilenet_v3_large, resnet50
from torchvision.ops.misc import FrozenBatchNorm2d

from model import get_model
from utils import UserError
from weights import backbone_body


@pytest.mark.parametrize(
    ("name", "classifier"),
    [
        ("maskrcnn_resnet50_fpn", resnet50),
        ("fasterrcnn_mobilenet_v3_large_fpn", mobilenet_v3_large),
        ("maskrcnn_mobilenet_v2", mobilenet_v2),
    ],
)
def test_backbone_weights_file(name, classifier, tmp_path):
    torch.manual_seed(1)
    state = classifier().state_dict()
    torch.save(state, tmp_path / "imagenet.pth")
    model = get_model(name, num_classes=2, weights="none", weights_backbone=str(tmp_path / "imagenet.pth"))
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
