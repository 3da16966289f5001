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

import math
import urllib.error
from collections.abc import Callable
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
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from utils import UserError
from weights import (
    ZERO_EPS_COCO_MODELS,
    freeze_like_pretrained,
    load_backbone,
    load_matching,
    read_state_dict,
    resolve_weights,
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
    **kwargs: Any,
) -> detection.FasterRCNN:
    """Faster R-CNN (Mask R-CNN with `masks`) on a ResNet-18 FPN: R50's strides (4 to 32) at about a third
    of its backbone's work.

    torchvision publishes no COCO weights for it: train from scratch, or from ImageNet
    weights for the backbone (`weights_backbone`).
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


def build(name: str, min_size: Any = None, max_size: int | None = None, **kwargs: Any) -> nn.Module:
    """MODELS[name]'s builder called with `kwargs`, at `min_size` (one or several shorter sides) and `max_size`.

    SSD models take one square input: `min_size` (its first side) sets it, else their own
    300 or 320; their builders take no sizes, so the transform is set after building.
    """
    builder = MODELS[name][0]
    if name not in SSD_SIZES:
        sizes = {"min_size": min_size, "max_size": max_size}
        return builder(**kwargs, **{key: value for key, value in sizes.items() if value is not None})
    model = builder(**kwargs)
    sides = [min_size] if isinstance(min_size, int) else list(min_size or [])
    side = sides[0] if sides else SSD_SIZES[name]
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
    return model


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


def _new_classifier(old: nn.Conv2d, anchors: int, num_classes: int, std: float, prior: float | None) -> nn.Conv2d:
    """A convolution like `old` with `anchors` x `num_classes` outputs, initialised as torchvision initialises the
    head (normal weights of `std`; the bias at the focal-loss prior, or 0)."""
    new = nn.Conv2d(old.in_channels, anchors * num_classes, old.kernel_size, old.stride, old.padding)
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
        new = _new_classifier(conv, conv.out_channels // head.num_columns, num_classes, 0.03, None)
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
    weights_spec = resolve_weights(weights, weights_enum, "--weights")
    backbone_spec = resolve_weights(weights_backbone, backbone_enum, "--weights-backbone")
    if weights_spec is not None and backbone_spec is not None:
        raise UserError("--weights-backbone needs --weights none: whole-model weights already include a backbone")
    pretrained = weights_spec is not None or backbone_spec is not None
    points = {} if num_keypoints is None else {"num_keypoints": num_keypoints}  # COCO weights: 17, swapped below
    layers = trainable_backbone_layers
    if layers is None:  # every stage when nothing is pretrained: ResNet and VGG have 5, MobileNets 6
        layers = 3 if pretrained else (5 if "resnet" in name or "vgg" in name else 6)

    try:
        if isinstance(weights_spec, WeightsEnum):
            model = build(name, weights=weights_spec, trainable_backbone_layers=layers, **kwargs)
        elif isinstance(backbone_spec, WeightsEnum):
            model = build(
                name,
                weights=None,
                weights_backbone=backbone_spec,
                num_classes=num_classes,
                trainable_backbone_layers=layers,
                **points,
                **kwargs,
            )
        elif isinstance(weights_spec, Path):
            state, config = read_state_dict(weights_spec, "--weights")
            if config is None:  # a plain state dict: torchvision's COCO weights, saved by hand
                eps = 0.0 if name in ZERO_EPS_COCO_MODELS else None
            else:
                eps = config.get("frozen_bn_eps")
            if not any(key.startswith(("roi_heads.box_predictor.", "head.")) for key in state):
                raise UserError(f"--weights {weights_spec}: not weights of a detection model; pick its --model")
            # the file's classes: a checkpoint's config says; torchvision's COCO files have 91
            source_classes = (config or {}).get("num_classes", 91)
            if "roi_heads.box_predictor.cls_score.weight" in state:
                source_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
            source_points = state.get("roi_heads.keypoint_predictor.kps_score_lowres.weight")
            if points and source_points is not None:  # a ConvTranspose2d's weight: in x out x 4 x 4
                points = {"num_keypoints": source_points.shape[1]}
            model = build(name, weights=None, weights_backbone=None, num_classes=source_classes, **points, **kwargs)
            freeze_like_pretrained(model, name, layers, eps)
            load_matching(model, state, weights_spec, name)
        else:
            model = build(name, weights=None, weights_backbone=None, num_classes=num_classes, **points, **kwargs)
            if isinstance(backbone_spec, Path):
                freeze_like_pretrained(model, name, layers)
                load_backbone(model, backbone_spec)
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


def get_model_instance_segmentation(num_classes: int) -> nn.Module:
    """The tutorial's function: COCO-pretrained Mask R-CNN R50-FPN with new heads for `num_classes`."""
    return get_model("maskrcnn_resnet50_fpn", num_classes, weights="DEFAULT")
