"""The heads of a detection model: what they predict (classes, keypoints), the class-dependent layers swapped for
a dataset's classes as the tutorial swaps Faster R-CNN's box predictor, the R-CNNs' RoI settings, and lighter RPN,
box, mask and keypoint heads.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead


def num_classes_of(model: nn.Module) -> int:
    """The classes (background included) `model` predicts."""
    if hasattr(model, "roi_heads"):
        return model.roi_heads.box_predictor.cls_score.out_features
    head = model.head.classification_head
    return head.num_classes if hasattr(head, "num_classes") else head.num_columns  # RetinaNet, FCOS; SSD


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


def replace_predictors(model: nn.Module, num_classes: int, num_keypoints: int | None = None) -> None:
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


def box_head_width(model: nn.Module) -> int | None:
    """The width of an R-CNN's box head, what its fully connected layers give the box predictor (torchvision's 1024);
    None for the one-stage models."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    return None if predictor is None else predictor.cls_score.in_features


def set_box_head(model: nn.Module, width: int) -> None:
    """New, untrained fully connected layers of `width` in an R-CNN's box head, and a box predictor to match.

    torchvision's 1024 (Detectron2's FC_DIM, MMDetection's fc_out_channels) makes fc6 a 256 x 7 x 7 by 1024 matrix,
    12.8 M weights applied to every sampled RoI: a third of a small model's CPU step. The v2 models' head keeps its
    four convolutions and narrows its one fully connected layer.
    """
    if box_head_width(model) == width:
        return
    head = model.roi_heads.box_head
    if isinstance(head, TwoMLPHead):
        model.roi_heads.box_head = TwoMLPHead(head.fc6.in_features, width)
    else:  # FastRCNNConvFCHead: convolutions, Flatten, Linear, ReLU
        last = max(index for index, layer in enumerate(head) if isinstance(layer, nn.Linear))
        head[last] = nn.Linear(head[last].in_features, width)
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    model.roi_heads.box_predictor = FastRCNNPredictor(width, num_classes)


def rpn_head_width(model: nn.Module) -> int | None:
    """The width of an R-CNN's RPN head, the channels of its 3x3 convolutions (torchvision's: the feature maps' own);
    None for the one-stage models."""
    head = getattr(getattr(model, "rpn", None), "head", None)
    return None if head is None else head.cls_logits.in_channels


def set_rpn_head(model: nn.Module, width: int) -> None:
    """A new, untrained RPN head whose 3x3 convolutions are `width` channels wide, and its two 1x1 layers to match.

    torchvision's RPNHead keeps the feature maps' width: on the tutorial's MobileNetV2 (one map of 1280 channels) its
    convolution is 1280 x 1280 x 3 x 3, 14.7 M weights applied at every position of the map, more than the whole
    backbone's 2.2 M. The first convolution reads the maps' channels and gives `width`; the v2 models' second
    convolution stays (`width` to `width`).
    """
    if rpn_head_width(model) == width:
        return
    head = model.rpn.head
    new = RPNHead(width, head.cls_logits.out_channels, conv_depth=len(head.conv))
    first = nn.Conv2d(head.conv[0][0].in_channels, width, kernel_size=3, padding=1)
    nn.init.normal_(first.weight, std=0.01)  # as RPNHead initialises its own
    nn.init.constant_(first.bias, 0)
    new.conv[0][0] = first
    model.rpn.head = new


def keypoint_head_shape(model: nn.Module) -> tuple[int, int] | None:
    """(convolutions, channels) of a Keypoint R-CNN's keypoint head (torchvision's: 8 of 512); None for others."""
    head = getattr(getattr(model, "roi_heads", None), "keypoint_head", None)
    if head is None:
        return None
    convolutions = sum(isinstance(layer, nn.Conv2d) for layer in head)
    return convolutions, model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels


def set_keypoint_head(model: nn.Module, layers: int, channels: int) -> None:
    """A new, untrained keypoint head of `layers` 3x3 convolutions of `channels`, and a predictor to match.

    torchvision's 8 x 512 (Detectron2's CONV_DIMS, MMDetection's num_convs and conv_out_channels) is 18 M of the
    model's 59 M weights and 3.5 G multiply-adds per positive RoI at 14 x 14; a training image has up to 128 positive
    RoIs, which makes it costlier than the image's ResNet-50 at 800 x 1333 (about 90 G). 2 x 128 costs 40 x less.
    """
    if keypoint_head_shape(model) == (layers, channels):
        return
    in_channels = model.roi_heads.keypoint_head[0].in_channels
    num_keypoints = num_keypoints_of(model)
    model.roi_heads.keypoint_head = KeypointRCNNHeads(in_channels, [channels] * layers)
    model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(channels, num_keypoints)


def set_heads_of(model: nn.Module, config: dict) -> None:
    """The mask, keypoint, box and RPN heads that `config` describes (--mask-head, --keypoint-head, --box-head,
    --rpn-head, or a checkpoint's model_config), in place of the builder's; a head absent or None (older checkpoints:
    all of them) stays the builder's, and a mask head is set only where the model has one."""
    if config.get("mask_head") and mask_head_shape(model) is not None:
        set_mask_head(model, *config["mask_head"])
    if config.get("keypoint_head") and keypoint_head_shape(model) is not None:
        set_keypoint_head(model, *config["keypoint_head"])
    if config.get("box_head"):
        set_box_head(model, config["box_head"])
    if config.get("rpn_head"):
        set_rpn_head(model, config["rpn_head"])
