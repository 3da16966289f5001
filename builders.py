"""Models torchvision has no builder for, built as its builders build theirs: Mask R-CNN on the MobileNetV3-Large FPN,
and Faster and Mask R-CNN on a ResNet-18 FPN (each of a width --fpn-channels sets). model.MODELS lists them beside
torchvision's and the tutorial's MobileNetV2 models (model.py, the worked example of a backbone of your own).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    detection,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d


def maskrcnn_mobilenet_v3_large_fpn(
    *,
    weights: detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights | None = None,
    weights_backbone: MobileNet_V3_Large_Weights | None = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    fpn_channels: int = 256,
    **kwargs: Any,
) -> detection.MaskRCNN:
    """Mask R-CNN on the MobileNetV3-Large FPN of `fasterrcnn_mobilenet_v3_large_fpn`: several times faster on CPU.

    torchvision publishes no COCO Mask R-CNN weights for this backbone, so `weights`
    are the COCO Faster R-CNN ones: backbone, RPN and box head start trained, the mask
    head starts from scratch. fpn_channels: the pyramid's width (those weights' is 256).
    """
    if weights is not None:
        if fpn_channels != 256:
            raise ValueError(f"fpn_channels {fpn_channels}: the COCO weights have a pyramid 256 wide")
        weights_backbone = None
        num_classes = len(weights.meta["categories"])
    pretrained = weights is not None or weights_backbone is not None
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else 6
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v3_large",
        weights=weights_backbone,
        fpn=True,
        norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d,
        trainable_layers=trainable_backbone_layers,
    )
    set_fpn_width(backbone, fpn_channels)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3  # as torchvision's MobileNet Faster R-CNN
    anchors = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    kwargs = {"rpn_score_thresh": 0.05, **kwargs}
    model = detection.MaskRCNN(backbone, num_classes or 91, rpn_anchor_generator=anchors, **kwargs)
    if weights is not None:
        state = weights.get_state_dict(progress=True, check_hash=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("roi_heads.mask_") for k in missing), (missing, unexpected)
    return model


def fasterrcnn_resnet18_fpn(
    *,
    weights: None = None,
    weights_backbone: ResNet18_Weights | None = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    masks: bool = False,
    fpn_channels: int = 256,
    **kwargs: Any,
) -> detection.FasterRCNN:
    """Faster R-CNN (Mask R-CNN with `masks`) on a ResNet-18 FPN: R50's strides (4 to 32) at about a third
    of its backbone's work.

    torchvision publishes no COCO weights for it: train from scratch, or from ImageNet
    weights for the backbone (`weights_backbone`). fpn_channels: the pyramid's width (torchvision's 256), which
    the RPN, the box head's first layer and the mask head read: 128 costs about half a CPU step.
    """
    pretrained = weights_backbone is not None
    if trainable_backbone_layers is None:
        trainable_backbone_layers = 3 if pretrained else 5
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=weights_backbone,
        norm_layer=FrozenBatchNorm2d if pretrained else nn.BatchNorm2d,
        trainable_layers=trainable_backbone_layers,
    )
    set_fpn_width(backbone, fpn_channels)
    return (detection.MaskRCNN if masks else detection.FasterRCNN)(backbone, num_classes or 91, **kwargs)


def maskrcnn_resnet18_fpn(**kwargs: Any) -> detection.MaskRCNN:
    """fasterrcnn_resnet18_fpn with a mask head."""
    return fasterrcnn_resnet18_fpn(masks=True, **kwargs)


def set_fpn_width(backbone: nn.Module, channels: int) -> None:
    """A new feature pyramid `channels` wide on `backbone`'s stages (a BackboneWithFPN of torchvision's), in place of
    its 256-channel one, which the RPN, the box head's first layer and the mask head then read."""
    if channels == backbone.out_channels:
        return
    stages = [block[0].in_channels for block in backbone.fpn.inner_blocks]  # each a 1 x 1 convolution from a stage
    backbone.fpn = FeaturePyramidNetwork(stages, channels, extra_blocks=type(backbone.fpn.extra_blocks)())
    backbone.out_channels = channels


# the models whose pyramid width --fpn-channels sets: ours (torchvision's builders fix 256)
FPN_WIDTH_MODELS = ("fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn", "maskrcnn_mobilenet_v3_large_fpn")


def fpn_channels_of(model: nn.Module, name: str) -> int | None:
    """The pyramid width of a model of FPN_WIDTH_MODELS (None for the others, whose builders fix it)."""
    return model.backbone.out_channels if name in FPN_WIDTH_MODELS else None
