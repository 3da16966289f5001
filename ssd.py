"""SSD300 and SSDlite take one square input, where the R-CNNs take a shorter and a longer side: their sides, what
SSD300's layers need at least, and its default boxes spaced for a side other than its 300. model.build calls
set_square_input; train.py refuses a side the model cannot take (check_input_side) before any work starts.
"""

from __future__ import annotations

import math

from torch import nn

from utils import UserError

SSD_SIZES = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320}  # their square input, unless --min-size


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


def set_square_input(model: nn.Module, name: str, side: int) -> None:
    """An SSD model's one square input of `side` pixels. SSD300's default boxes are spaced for 300 (steps 8 to
    300 pixels): at another side they are spaced over the feature maps that side gives, as DefaultBoxGenerator
    does without steps (its box sizes are fractions of the side already)."""
    check_input_side(name, side)
    if name == "ssd300_vgg16" and side != SSD_SIZES[name]:
        model.anchor_generator.steps = [side / size for size in ssd300_feature_sizes(side)]
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (side,), side, (side, side)
