"""Detection and instance-segmentation models for `num_classes`, with their weights.

`get_model` builds one of MODELS (torchvision's builders; ours in builders.py; the tutorial's
MobileNetV2 models here, the worked example of a backbone of your own), loads weights
(torchvision's COCO weights, none, or a local file) and swaps the class-dependent layers for
`num_classes` (heads.py), as the tutorial swaps Faster R-CNN's box predictor: the R-CNNs' box
and mask predictors (and the keypoint predictor for `num_keypoints`), RetinaNet's and FCOS's
classification logits, SSD's per-level classifiers. Everything else keeps its trained weights.

The families are torchvision's references': R-CNNs (two stages: proposals, then a head per
region; masks and keypoints), RetinaNet and FCOS (one stage, dense; boxes), SSD and SSDlite
(one stage on a fixed square input; boxes, fast).
"""

from __future__ import annotations

import inspect
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
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from anchors import set_anchor_sizes
from builders import (
    FPN_WIDTH_MODELS,
    fasterrcnn_resnet18_fpn,
    maskrcnn_mobilenet_v3_large_fpn,
    maskrcnn_resnet18_fpn,
)
from heads import HEAD_SETTINGS, replace_predictors, set_heads_of
from ssd import SSD_SIZES, set_square_input
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
# (shorter side, longer side) that a builder sets itself: a run takes them where no --min-size or --max-size is typed
BUILDER_SIZES = {"fasterrcnn_mobilenet_v3_large_320_fpn": (320, 640), **{name: (s, s) for name, s in SSD_SIZES.items()}}
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
    set_square_input(model, name, sides[0] if sides else SSD_SIZES[name])
    return model


def has_reduced_tail(model: nn.Module) -> bool | None:
    """For SSDlite: whether its MobileNetV3 has the reduced tail (480 channels last; 960 with the full one, which
    its builder takes for ImageNet backbone weights). None for other models."""
    if not isinstance(getattr(model, "backbone", None), SSDLiteFeatureExtractorMobileNet):
        return None
    last = [m for m in model.backbone.features.modules() if isinstance(m, nn.Conv2d)][-1]
    return last.out_channels != 960


BOX_MODELS = [name for name in MODELS if not learns_masks(name) and not is_keypoint_model(name)]
BOX_MODELS_HINT = "--model " + ", ".join(BOX_MODELS)  # what a user error suggests for data with boxes only


def get_model(
    name: str = "maskrcnn_resnet50_fpn",
    num_classes: int = 2,
    weights: str | None = "DEFAULT",
    weights_backbone: str | None = None,
    trainable_backbone_layers: int | None = None,
    mask_head: tuple[int, int] | None = None,
    box_head: int | None = None,
    rpn_head: int | None = None,
    keypoint_head: tuple[int, int] | None = None,
    num_keypoints: int | None = None,
    anchor_sizes: list[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A model of MODELS for `num_classes` (background included), with its weights loaded.

    weights: "DEFAULT" or a torchvision weights name (COCO, downloaded once into the torch
    hub cache), "none", or the path of a local .pth (torchvision's COCO state dict, or a
    checkpoint of train.py). weights_backbone: the same for the backbone alone, with
    weights "none". mask_head: (convolutions, channels) for a new mask head; box_head, rpn_head: the width of a new
    box head's fully connected layers, of a new RPN head's convolutions; keypoint_head: (convolutions, channels) for
    a new keypoint head (heads.py).
    num_keypoints: K, for a Keypoint R-CNN (required there, refused elsewhere). anchor_sizes: an R-CNN's five
    anchor sizes (anchors.set_anchor_sizes; None: torchvision's). kwargs reach the model
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
    for flag, width, part, default in (("--box-head", box_head, "box head", "1024"),
                                       ("--rpn-head", rpn_head, "RPN", "its feature maps' channels")):  # fmt: skip
        if width is not None and not is_rcnn(name):
            raise UserError(f"{flag} {width}: an R-CNN setting; --model {name} has no {part}")
        if width is not None and width < 1:
            raise UserError(f"{flag} {width}: give a width of 1 or more (torchvision's: {default})")
    if keypoint_head is not None and not is_keypoint_model(name):
        raise UserError(f"--keypoint-head: a Keypoint R-CNN setting; --model {name} has no keypoint head")
    if keypoint_head is not None and min(keypoint_head) < 1:
        raise UserError(f"--keypoint-head {' '.join(map(str, keypoint_head))}: give 1 or more of each (torchvision's: "
                        "8 512)")  # fmt: skip
    if anchor_sizes and not is_rcnn(name):
        raise UserError(f"--anchor-sizes: an R-CNN setting (its RPN's anchors); --model {name} has no RPN")
    if kwargs.get("fpn_channels") is not None and kwargs["fpn_channels"] < 1:
        raise UserError(f"--fpn-channels {kwargs['fpn_channels']}: give a width of 1 or more (torchvision's: 256)")
    if kwargs.get("fpn_channels") is not None and name not in FPN_WIDTH_MODELS:
        raise UserError(f"--fpn-channels: torchvision's builder of {name} fixes its width at 256; drop the flag, "
                        f"or choose --model {' or '.join(FPN_WIDTH_MODELS)}")  # fmt: skip
    weights_spec = resolve_weights(weights, weights_enum, "--weights")
    backbone_spec = resolve_weights(
        weights_backbone, backbone_enum, "--weights-backbone", default_backbone_weights(name)
    )
    if kwargs.get("fpn_channels", 256) != 256 and isinstance(weights_spec, WeightsEnum):
        raise UserError(f"--fpn-channels {kwargs['fpn_channels']}: --weights {weights} has a pyramid 256 wide; "
                        "drop --fpn-channels, or train from --weights none")  # fmt: skip
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
    replace_predictors(model, num_classes, num_keypoints)
    set_heads_of(model, {"mask_head": mask_head, "box_head": box_head, "rpn_head": rpn_head,
                         "keypoint_head": keypoint_head})  # fmt: skip
    if anchor_sizes:
        set_anchor_sizes(model, anchor_sizes)
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
    config = config or {}  # a checkpoint's own widths, which the typed flags then change (their heads start untrained)
    widths = {"fpn_channels": config["fpn_channels"]} if config.get("fpn_channels") else {}
    model = build(name, weights=None, weights_backbone=None, num_classes=source_classes,
                  reduced_tail=config.get("reduced_tail"), **points, **{**widths, **kwargs})  # fmt: skip
    set_heads_of(model, config)
    freeze_like_pretrained(model, name, TRAINABLE_LAYERS.get(name, 3) if layers is None else layers, eps)
    load_matching(model, state, path, name)
    if config.get("anchor_sizes"):  # a checkpoint's RPN learned its own sizes (a typed --anchor-sizes wins)
        set_anchor_sizes(model, config["anchor_sizes"])
    return model


def get_model_instance_segmentation(num_classes: int) -> nn.Module:
    """The tutorial's function: COCO-pretrained Mask R-CNN R50-FPN with new heads for `num_classes`."""
    return get_model("maskrcnn_resnet50_fpn", num_classes, weights="DEFAULT")
