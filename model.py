"""Detection and instance-segmentation models for `num_classes`, with their weights.

`get_model` builds one of MODELS, loads weights (torchvision's COCO weights, none, or a
local file) and swaps the class-dependent layers for `num_classes`, as the tutorial swaps
Faster R-CNN's box predictor: the R-CNNs' box and mask predictors (and the keypoint
predictor for `num_keypoints`), RetinaNet's and FCOS's classification logits, SSD's
per-level classifiers. Everything else keeps its trained weights.

The families are torchvision's references': R-CNNs (two stages: proposals, then a head per
region; masks and keypoints), RetinaNet and FCOS (one stage, dense; boxes), SSD and SSDlite
(one stage on a fixed square input; boxes, fast).
"""

from __future__ import annotations

import inspect
import math
import re
import urllib.error
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import (
    MobileNet_V2_Weights,
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    ResNet50_Weights,
    VGG16_Weights,
    WeightsEnum,
    detection,
    mobilenet_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from utils import UserError
from weights import (
    ZERO_EPS_COCO_MODELS,
    freeze_like_pretrained,
    load_matching,
    read_backbone_file,
    read_state_dict,
    resolve_weights,
    untrained_backbone_state,
    weights_served,
)


def maskrcnn_mobilenet_v3_large_fpn(
    *,
    weights: detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights | None = None,
    weights_backbone: MobileNet_V3_Large_Weights | None = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    **kwargs: Any,
) -> detection.MaskRCNN:
    """Mask R-CNN on the MobileNetV3-Large FPN of `fasterrcnn_mobilenet_v3_large_fpn`: several times faster on CPU.

    torchvision publishes no COCO Mask R-CNN weights for this backbone, so `weights`
    are the COCO Faster R-CNN ones: backbone, RPN and box head start trained, the mask
    head starts from scratch.
    """
    if weights is not None:
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
    if fpn_channels != backbone.out_channels:  # ResNet-18's stages give 64, 128, 256 and 512 channels
        backbone.fpn = FeaturePyramidNetwork([64, 128, 256, 512], fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = fpn_channels
    return (detection.MaskRCNN if masks else detection.FasterRCNN)(backbone, num_classes or 91, **kwargs)


def maskrcnn_resnet18_fpn(**kwargs: Any) -> detection.MaskRCNN:
    """fasterrcnn_resnet18_fpn with a mask head."""
    return fasterrcnn_resnet18_fpn(masks=True, **kwargs)


def fasterrcnn_mobilenet_v2(
    *,
    weights: None = None,
    weights_backbone: MobileNet_V2_Weights | None = None,
    num_classes: int | None = None,
    trainable_backbone_layers: int | None = None,
    masks: bool = False,
    **kwargs: Any,
) -> detection.FasterRCNN:
    """Faster R-CNN (Mask R-CNN with `masks`) on MobileNetV2, built the tutorial's way: the worked example
    of plugging in a backbone of your own. Copy this function and change steps 1 and 2.

    One feature map, no FPN: coarse (stride 32), so small objects suffer; torchvision
    publishes no COCO weights for it (ImageNet weights for the backbone: `weights_backbone`).
    """
    pretrained = weights_backbone is not None
    # 1. Any network that turns an image into a feature map: here MobileNetV2's convolutions (its
    #    classifier dropped). Pretrained, its BatchNorm is frozen: batches of 2 give useless statistics.
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    backbone = mobilenet_v2(weights=weights_backbone, norm_layer=norm_layer).features
    # 2. The detector needs to know how many channels that map has.
    backbone.out_channels = 1280
    # 3. Anchors for one feature map: 5 sizes x 3 aspect ratios at each position.
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    # 4. The RoI features come from that one map, named "0": 7 x 7 for the box head, 14 x 14 for masks.
    box_roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    heads = {"rpn_anchor_generator": anchors, "box_roi_pool": box_roi_pool}
    if masks:
        heads["mask_roi_pool"] = MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=2)
    model = (detection.MaskRCNN if masks else detection.FasterRCNN)(backbone, num_classes or 91, **heads, **kwargs)
    if pretrained:  # as torchvision's builders do: only the last `trainable_backbone_layers` stages train
        freeze_like_pretrained(
            model, "mobilenet_v2", 3 if trainable_backbone_layers is None else trainable_backbone_layers
        )
    return model


def maskrcnn_mobilenet_v2(**kwargs: Any) -> detection.MaskRCNN:
    """fasterrcnn_mobilenet_v2 with a mask head: the tutorial's backbone for instance segmentation."""
    return fasterrcnn_mobilenet_v2(masks=True, **kwargs)


# name -> (builder, weights enum of the whole model or None, weights enum of the backbone)
MODELS: dict[str, tuple[Callable[..., nn.Module], type[WeightsEnum] | None, type[WeightsEnum]]] = {
    "maskrcnn_resnet50_fpn": (
        detection.maskrcnn_resnet50_fpn,
        detection.MaskRCNN_ResNet50_FPN_Weights,
        ResNet50_Weights,
    ),
    "maskrcnn_resnet50_fpn_v2": (
        detection.maskrcnn_resnet50_fpn_v2,
        detection.MaskRCNN_ResNet50_FPN_V2_Weights,
        ResNet50_Weights,
    ),
    "fasterrcnn_resnet50_fpn": (
        detection.fasterrcnn_resnet50_fpn,
        detection.FasterRCNN_ResNet50_FPN_Weights,
        ResNet50_Weights,
    ),
    "fasterrcnn_resnet50_fpn_v2": (
        detection.fasterrcnn_resnet50_fpn_v2,
        detection.FasterRCNN_ResNet50_FPN_V2_Weights,
        ResNet50_Weights,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": (
        detection.fasterrcnn_mobilenet_v3_large_fpn,
        detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        MobileNet_V3_Large_Weights,
    ),
    "maskrcnn_mobilenet_v3_large_fpn": (
        maskrcnn_mobilenet_v3_large_fpn,
        detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights,
        MobileNet_V3_Large_Weights,
    ),
    "keypointrcnn_resnet50_fpn": (
        detection.keypointrcnn_resnet50_fpn,
        detection.KeypointRCNN_ResNet50_FPN_Weights,
        ResNet50_Weights,
    ),
    "maskrcnn_resnet18_fpn": (maskrcnn_resnet18_fpn, None, ResNet18_Weights),
    "fasterrcnn_resnet18_fpn": (fasterrcnn_resnet18_fpn, None, ResNet18_Weights),
    "fasterrcnn_mobilenet_v2": (fasterrcnn_mobilenet_v2, None, MobileNet_V2_Weights),
    "maskrcnn_mobilenet_v2": (maskrcnn_mobilenet_v2, None, MobileNet_V2_Weights),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        detection.fasterrcnn_mobilenet_v3_large_320_fpn,
        detection.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
        MobileNet_V3_Large_Weights,
    ),
    "retinanet_resnet50_fpn": (
        detection.retinanet_resnet50_fpn,
        detection.RetinaNet_ResNet50_FPN_Weights,
        ResNet50_Weights,
    ),
    "retinanet_resnet50_fpn_v2": (
        detection.retinanet_resnet50_fpn_v2,
        detection.RetinaNet_ResNet50_FPN_V2_Weights,
        ResNet50_Weights,
    ),
    "fcos_resnet50_fpn": (detection.fcos_resnet50_fpn, detection.FCOS_ResNet50_FPN_Weights, ResNet50_Weights),
    "ssd300_vgg16": (detection.ssd300_vgg16, detection.SSD300_VGG16_Weights, VGG16_Weights),
    "ssdlite320_mobilenet_v3_large": (
        detection.ssdlite320_mobilenet_v3_large,
        detection.SSDLite320_MobileNet_V3_Large_Weights,
        MobileNet_V3_Large_Weights,
    ),
}
SSD_SIZES = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320}  # their square input, unless --min-size
# (shorter side, longer side) that a builder sets itself: a run takes them where no --min-size or --max-size is typed
BUILDER_SIZES = {"fasterrcnn_mobilenet_v3_large_320_fpn": (320, 640), **{name: (s, s) for name, s in SSD_SIZES.items()}}
# the models whose pyramid width --fpn-channels sets: ours (torchvision's builders fix 256)
FPN_WIDTH_MODELS = ("fasterrcnn_resnet18_fpn", "maskrcnn_resnet18_fpn")
# backbone stages that torchvision's builders train by default when they load weights (others: 3)
TRAINABLE_LAYERS = {"ssd300_vgg16": 4, "ssdlite320_mobilenet_v3_large": 6}


def is_keypoint_model(name: str) -> bool:
    """Whether the model of MODELS called `name` predicts keypoints (and learns them from the targets')."""
    return name.startswith("keypointrcnn")


def learns_masks(name: str) -> bool:
    """Whether the model of MODELS called `name` predicts masks (and needs outlines to learn them)."""
    return name.startswith("maskrcnn")


def resizes_in_data(name: str) -> bool:
    """Whether training images reach model `name` at its size already (transforms.ResizeForModel, where outlines
    become masks), so that it skips its own resize in training: every model but SSD's fixed squares."""
    return name not in SSD_SIZES


def is_rcnn(name: str) -> bool:
    """Whether the model of MODELS called `name` is a two-stage R-CNN (proposals, then heads per region)."""
    return "rcnn" in name


def default_backbone_weights(name: str) -> WeightsEnum | None:
    """What `--weights-backbone DEFAULT` is for model `name`: its builder's own default where it names one (SSD300:
    VGG16_Weights.IMAGENET1K_FEATURES, made for its 0-255 inputs; the R-CNNs: IMAGENET1K_V1), else the enum's."""
    builder, _, backbone_enum = MODELS[name]
    parameter = inspect.signature(builder).parameters.get("weights_backbone")  # our wrappers pass it on in kwargs
    default = parameter.default if parameter is not None else None
    return default if isinstance(default, WeightsEnum) else backbone_enum.DEFAULT


def ssd300_feature_sizes(side: int) -> list[int]:
    """The sides of SSD300's six feature maps for a `side` x `side` input (38, 19, 10, 5, 3, 1 at 300): VGG to
    conv4_3 (its third pooling rounds up), fc7 at half that, two strided extras, two unpadded 3 x 3 ones."""
    conv4_3 = math.ceil(side // 2 // 2 / 2)
    fc7 = conv4_3 // 2
    sizes = [conv4_3, fc7, math.ceil(fc7 / 2), math.ceil(math.ceil(fc7 / 2) / 2)]
    return [*sizes, sizes[-1] - 2, sizes[-1] - 4]


SSD300_MIN_SIDE = next(side for side in range(64, 300) if ssd300_feature_sizes(side)[-1] >= 1)  # 268


def check_input_side(name: str, side: int) -> None:
    """A UserError if model `name` cannot take a square input of `side` pixels (SSD300 below 268)."""
    if name == "ssd300_vgg16" and side < SSD300_MIN_SIDE:
        raise UserError(
            f"--min-size {side}: ssd300_vgg16's last layers need an input of at least {SSD300_MIN_SIDE} pixels; "
            f"use its own 300, or a size from {SSD300_MIN_SIDE} up"
        )


def _set_square_input(model: nn.Module, name: str, side: int) -> None:
    """An SSD model's one square input of `side` pixels. SSD300's default boxes are spaced for 300 (steps 8 to
    300 pixels): at another side they are spaced over the feature maps that side gives, as DefaultBoxGenerator
    does without steps (its box sizes are fractions of the side already)."""
    check_input_side(name, side)
    if name == "ssd300_vgg16" and side != SSD_SIZES[name]:
        model.anchor_generator.steps = [side / size for size in ssd300_feature_sizes(side)]
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)


def build(
    name: str, min_size: Any = None, max_size: int | None = None, reduced_tail: bool | None = None, **kwargs: Any
) -> nn.Module:
    """MODELS[name]'s builder called with `kwargs`, at `min_size` (one or several shorter sides) and `max_size`.

    SSD models take one square input: `min_size` (its first side) sets it, else their own
    300 or 320; their builders take no sizes, so the transform is set after building.
    reduced_tail: False rebuilds SSDlite with the full MobileNetV3 tail that its builder chooses
    for ImageNet backbone weights (True or None: the builder's choice), with nothing downloaded.
    """
    builder = MODELS[name][0]
    if name not in SSD_SIZES:
        sizes = {"min_size": min_size, "max_size": max_size}
        return builder(**kwargs, **{key: value for key, value in sizes.items() if value is not None})
    if reduced_tail is False and kwargs.get("weights_backbone") is None:
        member = default_backbone_weights(name)
        with weights_served(member, untrained_backbone_state(member)):
            model = builder(**{**kwargs, "weights_backbone": member})
    else:
        model = builder(**kwargs)
    sides = [min_size] if isinstance(min_size, int) else list(min_size or [])
    _set_square_input(model, name, sides[0] if sides else SSD_SIZES[name])
    return model


def has_reduced_tail(model: nn.Module) -> bool | None:
    """For SSDlite: whether its MobileNetV3 has the reduced tail (480 channels last; 960 with the full one, which
    its builder takes for ImageNet backbone weights). None for other models."""
    if not isinstance(getattr(model, "backbone", None), SSDLiteFeatureExtractorMobileNet):
        return None
    last = [m for m in model.backbone.features.modules() if isinstance(m, nn.Conv2d)][-1]
    return last.out_channels != 960


def fpn_channels_of(model: nn.Module, name: str) -> int | None:
    """The pyramid width of a model of FPN_WIDTH_MODELS (None for the others, whose builders fix it)."""
    return model.backbone.out_channels if name in FPN_WIDTH_MODELS else None


def num_classes_of(model: nn.Module) -> int:
    """The classes (background included) `model` predicts."""
    if hasattr(model, "roi_heads"):
        return model.roi_heads.box_predictor.cls_score.out_features
    head = model.head.classification_head
    return head.num_classes if hasattr(head, "num_classes") else head.num_columns  # RetinaNet, FCOS; SSD


BOX_MODELS = [name for name in MODELS if not learns_masks(name) and not is_keypoint_model(name)]
BOX_MODELS_HINT = "--model " + ", ".join(BOX_MODELS)  # what a user error suggests for data with boxes only


def num_keypoints_of(model: nn.Module) -> int | None:
    """K, the keypoints a Keypoint R-CNN predicts per object; None for other models."""
    predictor = getattr(getattr(model, "roi_heads", None), "keypoint_predictor", None)
    return None if predictor is None else predictor.kps_score_lowres.out_channels


def _new_classifier(
    old: nn.Conv2d, anchors: int, num_classes: int, std: float | None, prior: float | None
) -> nn.Conv2d:
    """A convolution like `old` with `anchors` x `num_classes` outputs, initialised as torchvision initialises the
    head: normal weights of `std` (None: Xavier-uniform, as SSD300's head); the bias at the focal-loss prior, or 0."""
    new = nn.Conv2d(old.in_channels, anchors * num_classes, old.kernel_size, old.stride, old.padding)
    if std is None:
        nn.init.xavier_uniform_(new.weight)
    else:
        nn.init.normal_(new.weight, std=std)
    nn.init.constant_(new.bias, 0.0 if prior is None else -math.log((1 - prior) / prior))
    return new


def _replace_dense_classifiers(model: nn.Module, num_classes: int) -> None:
    """RetinaNet's and FCOS's classification logits, or SSD's per-level classifiers, for `num_classes`: the layers
    whose outputs are per class; the convolutions before them keep their weights."""
    head = model.head.classification_head
    if num_classes_of(model) == num_classes:
        return
    if hasattr(head, "cls_logits"):  # RetinaNet, FCOS: one 3 x 3 convolution over every level, focal loss
        head.cls_logits = _new_classifier(head.cls_logits, head.num_anchors, num_classes, 0.01, 0.01)
        head.num_classes = num_classes
        return
    for level, layer in enumerate(head.module_list):  # SSD: a convolution per level (SSDlite: its last 1 x 1)
        conv = layer if isinstance(layer, nn.Conv2d) else layer[-1]
        std = None if isinstance(layer, nn.Conv2d) else 0.03  # SSD300: Xavier; SSDlite: normal, std 0.03
        new = _new_classifier(conv, conv.out_channels // head.num_columns, num_classes, std, None)
        if isinstance(layer, nn.Conv2d):
            head.module_list[level] = new
        else:
            layer[-1] = new
    head.num_columns = num_classes


def _replace_predictors(model: nn.Module, num_classes: int, num_keypoints: int | None = None) -> None:
    """New box (and mask, or keypoint) predictors for `num_classes` (and `num_keypoints`), as in the tutorial."""
    if not hasattr(model, "roi_heads"):
        _replace_dense_classifiers(model, num_classes)
        return
    if num_keypoints is not None and num_keypoints_of(model) != num_keypoints:
        in_channels = model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(in_channels, num_keypoints)
    box_predictor = model.roi_heads.box_predictor
    if box_predictor.cls_score.out_features != num_classes:
        model.roi_heads.box_predictor = FastRCNNPredictor(box_predictor.cls_score.in_features, num_classes)
    mask_predictor = getattr(model.roi_heads, "mask_predictor", None)
    if mask_predictor is not None and mask_predictor.mask_fcn_logits.out_channels != num_classes:
        in_channels = mask_predictor.conv5_mask.in_channels
        model.roi_heads.mask_predictor = MaskRCNNPredictor(in_channels, 256, num_classes)


# The RoI-head settings that torchvision's builders take (None in get_model: the builder's own).
HEAD_SETTINGS = (
    "box_batch_size_per_image",  # RoIs sampled per image to train the box and mask heads (512)
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",  # proposals kept before / after NMS (2000, 2000)
    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",  # the same when predicting (1000, 1000)
    "box_detections_per_img",  # detections per image at most (100)
)  # fmt: skip


def head_settings(model: nn.Module) -> dict[str, int]:
    """The HEAD_SETTINGS values `model` was built with (an R-CNN's; none for the one-stage models)."""
    if not hasattr(model, "roi_heads"):
        return {}
    rpn, roi_heads = model.rpn, model.roi_heads
    return {
        "box_batch_size_per_image": roi_heads.fg_bg_sampler.batch_size_per_image,
        "rpn_pre_nms_top_n_train": rpn._pre_nms_top_n["training"],
        "rpn_post_nms_top_n_train": rpn._post_nms_top_n["training"],
        "rpn_pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
        "rpn_post_nms_top_n_test": rpn._post_nms_top_n["testing"],
        "box_detections_per_img": roi_heads.detections_per_img,
    }


def mask_head_shape(model: nn.Module) -> tuple[int, int] | None:
    """(convolutions, channels) of the mask head (torchvision's: 4 of 256); None for a model without masks."""
    if getattr(getattr(model, "roi_heads", None), "mask_head", None) is None:
        return None
    return len(model.roi_heads.mask_head), model.roi_heads.mask_predictor.conv5_mask.in_channels


def set_mask_head(model: nn.Module, layers: int, channels: int) -> None:
    """A new, untrained mask head of `layers` 3x3 convolutions of `channels`, and a predictor to match.

    A lighter head than torchvision's 4 x 256 costs less per sampled RoI, which is most of
    a CPU step at small image sizes; it starts from scratch (COCO weights are for 4 x 256).
    """
    if mask_head_shape(model) == (layers, channels):
        return
    old_head, old_predictor = model.roi_heads.mask_head, model.roi_heads.mask_predictor
    in_channels = old_head[0][0].in_channels
    batch_norm = len(old_head[0]) == 3  # the v2 models' heads: convolution, BatchNorm, ReLU
    norm_layer = nn.BatchNorm2d if batch_norm else None
    model.roi_heads.mask_head = MaskRCNNHeads(in_channels, [channels] * layers, 1, norm_layer=norm_layer)
    num_classes = old_predictor.mask_fcn_logits.out_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(channels, channels, num_classes)


def get_model(
    name: str = "maskrcnn_resnet50_fpn",
    num_classes: int = 2,
    weights: str | None = "DEFAULT",
    weights_backbone: str | None = None,
    trainable_backbone_layers: int | None = None,
    mask_head: tuple[int, int] | None = None,
    num_keypoints: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A model of MODELS for `num_classes` (background included), with its weights loaded.

    weights: "DEFAULT" or a torchvision weights name (COCO, downloaded once into the torch
    hub cache), "none", or the path of a local .pth (torchvision's COCO state dict, or a
    checkpoint of train.py). weights_backbone: the same for the backbone alone, with
    weights "none". mask_head: (convolutions, channels) for a new mask head (set_mask_head).
    num_keypoints: K, for a Keypoint R-CNN (required there, refused elsewhere). kwargs reach the model
    (min_size, max_size, HEAD_SETTINGS, ...); None values are dropped.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if name not in MODELS:
        raise UserError(f"--model {name}: unknown; choose one of {', '.join(MODELS)}")
    _, weights_enum, backbone_enum = MODELS[name]
    if is_keypoint_model(name) != (num_keypoints is not None):
        raise UserError(
            f"--model {name} learns keypoints: train it on a COCO keypoints json (--ann-file)"
            if num_keypoints is None
            else f"--model {name} has no keypoint head; for keypoints use --model keypointrcnn_resnet50_fpn"
        )
    if not is_rcnn(name) and any(kwargs.get(setting) is not None for setting in HEAD_SETTINGS):
        setting = next(s for s in HEAD_SETTINGS if kwargs.get(s) is not None)
        raise UserError(f"--{setting.replace('_', '-')}: an R-CNN setting; --model {name} has no such head")
    if kwargs.get("fpn_channels") is not None and kwargs["fpn_channels"] < 1:
        raise UserError(f"--fpn-channels {kwargs['fpn_channels']}: give a width of 1 or more (torchvision's: 256)")
    if kwargs.get("fpn_channels") is not None and name not in FPN_WIDTH_MODELS:
        raise UserError(f"--fpn-channels: torchvision's builder of {name} fixes its width at 256; drop the flag, "
                        f"or choose --model {' or '.join(FPN_WIDTH_MODELS)}")  # fmt: skip
    weights_spec = resolve_weights(weights, weights_enum, "--weights")
    backbone_spec = resolve_weights(
        weights_backbone, backbone_enum, "--weights-backbone", default_backbone_weights(name)
    )
    if weights_spec is not None and backbone_spec is not None:
        raise UserError("--weights-backbone needs --weights none: whole-model weights already include a backbone")
    points = {} if num_keypoints is None else {"num_keypoints": num_keypoints}  # COCO weights: 17, swapped below
    layers = trainable_backbone_layers  # None: the builder's own default (TRAINABLE_LAYERS)

    try:
        if isinstance(weights_spec, WeightsEnum):
            model = build(name, weights=weights_spec, trainable_backbone_layers=layers, **kwargs)
        elif isinstance(weights_spec, Path):
            model = _from_weights_file(name, weights_spec, layers, points, kwargs)
        elif backbone_spec is not None:
            model = _with_backbone_weights(name, backbone_spec, num_classes, layers, {**points, **kwargs})
        else:
            model = build(name, weights=None, weights_backbone=None, num_classes=num_classes, **points, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise UserError(
            f"could not download the weights for {name} ({getattr(error, 'reason', error)}); offline, "
            "train from scratch with --recipe cpu-43min (its --weights none at an lr that learns; --weights none "
            "alone needs --lr 0.001, as the default diverges), or pass --weights PATH to a local .pth "
            f"(torchvision's file from {torch.hub.get_dir()}/checkpoints on a machine that has it)"
        ) from error
    _replace_predictors(model, num_classes, num_keypoints)
    if mask_head is not None and mask_head_shape(model) is not None:
        set_mask_head(model, *mask_head)
    return model


def _with_backbone_weights(
    name: str, spec: WeightsEnum | Path, num_classes: int, layers: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    """Model `name` from scratch but for its backbone: ImageNet weights by name, or a local copy of torchvision's
    file for that backbone, which its builder then loads exactly as it loads DEFAULT (weights_served)."""
    member, served = spec, nullcontext()
    if isinstance(spec, Path):
        member = default_backbone_weights(name)
        served = weights_served(member, read_backbone_file(spec))
    try:
        with served:
            return build(name, weights=None, weights_backbone=member, num_classes=num_classes,
                         trainable_backbone_layers=layers, **kwargs)  # fmt: skip
    except RuntimeError as error:  # load_state_dict: keys or shapes of another network
        if not isinstance(spec, Path):
            raise
        found = re.search(r'"([^"]+)"', str(error))  # the first key that is missing or unexpected
        mismatch = f"{found[1]} does not match" if found else "shapes differ"
        raise UserError(
            f"--weights-backbone {spec}: does not fit {name}'s backbone ({mismatch}); "
            f"pass a state dict of torchvision's {type(member).__name__.removesuffix('_Weights').lower()} network"
        ) from error


def _from_weights_file(
    name: str, path: Path, layers: int | None, points: dict[str, int], kwargs: dict[str, Any]
) -> nn.Module:
    """Model `name` with the weights of a local file: torchvision's COCO state dict (built as its builder builds
    it for DEFAULT: the stages it freezes, its BatchNorm), else any state dict or a checkpoint of train.py, whose
    classes the file says (the predictors are swapped for the run's after)."""
    state, config = read_state_dict(path, "--weights")
    weights_enum = MODELS[name][1]
    if config is None and weights_enum is not None:
        try:
            with weights_served(weights_enum.DEFAULT, state):
                return build(name, weights=weights_enum.DEFAULT, trainable_backbone_layers=layers, **kwargs)
        except (RuntimeError, AssertionError):  # not COCO's classes or not this model: the general way below
            pass
    eps = config.get("frozen_bn_eps") if config is not None else (0.0 if name in ZERO_EPS_COCO_MODELS else None)
    if not any(key.startswith(("roi_heads.box_predictor.", "head.")) for key in state):
        raise UserError(f"--weights {path}: not weights of a detection model; pick its --model")
    # the file's classes: a checkpoint's config says; torchvision's COCO files have 91
    source_classes = (config or {}).get("num_classes", 91)
    if "roi_heads.box_predictor.cls_score.weight" in state:
        source_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    source_points = state.get("roi_heads.keypoint_predictor.kps_score_lowres.weight")
    if points and source_points is not None:  # a ConvTranspose2d's weight: in x out x 4 x 4
        points = {"num_keypoints": source_points.shape[1]}
    reduced_tail = (config or {}).get("reduced_tail")
    model = build(name, weights=None, weights_backbone=None, num_classes=source_classes, reduced_tail=reduced_tail,
                  **points, **kwargs)  # fmt: skip
    freeze_like_pretrained(model, name, TRAINABLE_LAYERS.get(name, 3) if layers is None else layers, eps)
    load_matching(model, state, path, name)
    return model


def get_model_instance_segmentation(num_classes: int) -> nn.Module:
    """The tutorial's function: COCO-pretrained Mask R-CNN R50-FPN with new heads for `num_classes`."""
    return get_model("maskrcnn_resnet50_fpn", num_classes, weights="DEFAULT")
