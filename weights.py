"""Weights into a model: torchvision's (by name), a local file (a state dict, or a checkpoint of train.py),
an ImageNet backbone; and the backbone made as torchvision makes it for pretrained weights (frozen
BatchNorm, first stages frozen). model.get_model uses these; checkpoint.py rebuilds with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.ops.misc import FrozenBatchNorm2d

from utils import UserError, load_checkpoint


def backbone_body(model: nn.Module) -> nn.Module:
    """The backbone's feature extractor: `.body` of torchvision's FPN backbones, the backbone itself otherwise."""
    return getattr(model.backbone, "body", model.backbone)


# torchvision's original COCO weights for these were trained with FrozenBatchNorm eps = 0.
ZERO_EPS_COCO_MODELS = (
    "maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "retinanet_resnet50_fpn",
)  # fmt: skip


def resolve_weights(
    spec: str | None, enum: type[WeightsEnum] | None, flag: str, default: WeightsEnum | None = None
) -> WeightsEnum | Path | None:
    """`none`/None, a local file (a path that exists or ends in .pth/.pt), or a name in `enum`; DEFAULT is `default`
    where given (a builder's own default, such as SSD300's IMAGENET1K_FEATURES), else the enum's DEFAULT."""
    if spec is None or spec.lower() == "none":
        return None
    if Path(spec).exists() or spec.endswith((".pth", ".pt")):
        return Path(spec)
    if enum is None:
        raise UserError(
            f"{flag} {spec}: torchvision has no COCO weights for this model; use --weights none with --lr 0.001 "
            "(and --weights-backbone DEFAULT for its ImageNet backbone), a from-scratch --recipe such as cpu-43min, "
            "or --weights PATH"
        )
    if spec == "DEFAULT" and default is not None:
        return default
    try:
        return enum.verify(spec)
    except (KeyError, ValueError, TypeError):
        names = ", ".join(["DEFAULT", *(w.name for w in enum), "none", "a path to a .pth file"])
        raise UserError(f"{flag} {spec}: not a file and not one of {names}") from None


def read_state_dict(path: Path, flag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A model state dict from a file, and the model_config stored with it (None for a plain state dict)."""
    data = load_checkpoint(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):  # a checkpoint written by train.py
        return data["model"], data.get("model_config", {})
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise UserError(f"{flag} {path}: holds neither a state dict nor a checkpoint of train.py")


def freeze_like_pretrained(model: nn.Module, name: str, trainable_layers: int, eps: float | None = None) -> None:
    """Make the backbone what torchvision's builders make when they load weights.

    Its BatchNorm layers become FrozenBatchNorm2d (batches of 2 give useless statistics;
    the v2 models keep BatchNorm, as torchvision builds them) and its first stages stop
    learning, leaving `trainable_layers` stages trainable. SSD models (VGG, and SSDlite's
    BatchNorm that trains) are left whole: from a local file they train every layer.
    """
    if name.startswith("ssd"):
        return
    if not name.endswith("_fpn_v2"):  # torchvision builds its v2 models with BatchNorm that trains
        freeze_batchnorm(model, eps)
    body = backbone_body(model)
    if "resnet" in name:
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for param_name, param in body.named_parameters():
            param.requires_grad_(any(param_name.startswith(layer) for layer in trainable))
    else:  # MobileNet V2 and V3: stages begin at the first block and at each strided block
        blocks = list(body.children())
        stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
        freeze_before = len(blocks) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
        for block in blocks[:freeze_before]:
            block.requires_grad_(False)


def freeze_batchnorm(model: nn.Module, eps: float | None = None) -> None:
    """Replace the BatchNorm layers of the backbone's body with FrozenBatchNorm2d (of `eps`, if given)."""
    for parent in list(backbone_body(model).modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, child_name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
    if eps is not None:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = eps


@contextmanager
def weights_served(member: WeightsEnum, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """While this holds, `member` gives `state` instead of downloading its file.

    torchvision's builders read their backbone's ImageNet weights through
    `weights_backbone.get_state_dict()`; with a local copy of that file served this way, a
    builder does exactly what it does for DEFAULT (the tail it chooses, the layers it freezes,
    the BatchNorm it uses, where each weight goes), with nothing downloaded.
    """
    enum = type(member)
    original = enum.get_state_dict

    def get_state_dict(self: WeightsEnum, *args: Any, **kwargs: Any) -> Mapping[str, torch.Tensor]:
        return state if self is member else original(self, *args, **kwargs)

    enum.get_state_dict = get_state_dict
    try:
        yield
    finally:
        enum.get_state_dict = original


def untrained_backbone_state(member: WeightsEnum) -> dict[str, torch.Tensor]:
    """The state dict of the untrained classification network that `member` holds weights for (resnet50,
    mobilenet_v3_large, vgg16, ...): what weights_served serves to rebuild a model's architecture with no file."""
    for name in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(name) is type(member):
            return torchvision.models.get_model(name).state_dict()
    raise ValueError(f"no torchvision classification model takes {member}")


def read_backbone_file(path: Path) -> dict[str, torch.Tensor]:
    """An ImageNet classification state dict from a local file (torchvision's own, or one saved alike)."""
    state, config = read_state_dict(path, "--weights-backbone")
    if config is not None:
        raise UserError(
            f"--weights-backbone {path}: a checkpoint of train.py holds a whole model; pass it as --weights {path}"
        )
    return state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """load_state_dict with a one-line error for a file made for another architecture."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserError(f"--weights {path}: does not fit --model {name} (shapes differ); pick its --model") from error
    if name == "maskrcnn_mobilenet_v3_large_fpn":  # Faster R-CNN weights: the mask head starts fresh
        missing = [k for k in missing if not k.startswith("roi_heads.mask_")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(f"--weights {path}: does not fit --model {name} ({first} does not match); pick its --model")
