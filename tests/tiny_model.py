"""The tests' own models: a Mask R-CNN (and a Faster R-CNN) of 71 thousand parameters as the tests narrow its heads,
for the tests of what a run does around the model (checkpoints, resume, faults, splits, budgets, folders, data
routes), where the model is not what is tested.

It is built as builders.maskrcnn_mobilenet_v3_large_fpn is, on a backbone of five strided convolutions with
BatchNorm that trains (a pyramid on its last two stages, strides 16 and 32, and a pooled level: the MobileNetV3
FPN's anchors fit it), so every R-CNN code path (RPN, box and mask heads, --box-head, --mask-head, --anchor-sizes,
tiles, the BatchNorm a resume restores) runs as it runs for a user's model; its checkpoint.pth is 0.6 MB where the
MobileNetV3 one narrowed for the tests was 26 MB. Whether the models learn is tests/test_learning.py's question.

It is not one of model.MODELS: the tests that train it add it there, in their own process through the `tiny_models`
fixture (conftest.py) and in a process of their own through this file as a launcher:

    python tests/tiny_model.py train.py ARGS...   # train.py (or predict.py, export.py) with the tests' model known
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (8, 16, 24, 32, 48)  # each stage halves the image: strides 2 to 32


def fasterrcnn_tiny_fpn(
    *,
    weights: None = None,
    weights_backbone: None = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    masks: bool = False,
    **kwargs: Any,
) -> detection.FasterRCNN:
    """Faster R-CNN (Mask R-CNN with `masks`) on five 3 x 3 convolutions of stride 2 and a pyramid 16 wide, untrained
    (there are no weights to load)."""
    if weights is not None or weights_backbone is not None:
        raise ValueError("the tests' tiny model has no weights to load")
    stages, channels = [], 3
    for width in WIDTHS:
        conv = nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False)
        stages.append(nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
        channels = width
    backbone = BackboneWithFPN(
        nn.Sequential(*stages), {"3": "0", "4": "1"}, list(WIDTHS[-2:]), 16, extra_blocks=LastLevelMaxPool()
    )
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3  # as the MobileNetV3 FPN's, on three levels
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    kwargs = {"rpn_score_thresh": 0.05, **kwargs}
    detector = detection.MaskRCNN if masks else detection.FasterRCNN
    return detector(backbone, num_classes or 91, rpn_anchor_generator=anchors, **kwargs)


def maskrcnn_tiny_fpn(**kwargs: Any) -> detection.MaskRCNN:
    """fasterrcnn_tiny_fpn with a mask head."""
    return fasterrcnn_tiny_fpn(masks=True, **kwargs)


# as model.MODELS holds a model: (builder, whole-model weights, backbone weights); the last is a placeholder that no
# test asks for (`--weights-backbone` is tested on the user's models, tests/test_weights.py)
ENTRIES = {
    "maskrcnn_tiny_fpn": (maskrcnn_tiny_fpn, None, MobileNet_V3_Large_Weights),
    "fasterrcnn_tiny_fpn": (fasterrcnn_tiny_fpn, None, MobileNet_V3_Large_Weights),
}
NAMES = tuple(ENTRIES)


def register() -> None:
    """Add the tests' models to model.MODELS in this process (and in the DataLoader workers it forks)."""
    import model

    model.MODELS.update(ENTRIES)


def names_in(args: list[object]) -> bool:
    """Whether a command's arguments name one of the tests' models (then it runs through this file)."""
    return any(str(arg) in NAMES for arg in args)


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # what `python train.py` puts there
    register()
    script = Path(sys.argv[1])
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script if script.is_absolute() else ROOT / script), run_name="__main__")
