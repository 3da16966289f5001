"""The R-CNNs' anchor sizes (--anchor-sizes): set on a model, read back for its checkpoint, and chosen from the
training set's boxes (`auto`, as YOLOv5's autoanchor sizes its anchors to the labels).

torchvision's R-CNN builders place anchors of 32, 64, 128, 256 and 512 pixels: one size per pyramid level for the
ResNet FPNs (strides 4 to 64), all five on each map for the MobileNet models. The objects of a small data set at a
CPU's 320 pixels are often smaller than the smallest (CVPPP's leaves: median 39 pixels, many under 20), and the
largest anchors then match nothing. Five other sizes take their places in order; the aspect ratios, the number of
anchors per position and so every weight stay as they are, so COCO weights still load.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator

from utils import UserError

DEFAULT_SIZES = (32, 64, 128, 256, 512)  # torchvision's, for every R-CNN it builds
MAX_SAMPLES = 500  # training images read for `auto`: evenly spread, so a large data set costs no more than this


def _anchors(model: nn.Module) -> tuple[AnchorGenerator | None, list[int]]:
    """An R-CNN's anchor generator and its distinct sizes, smallest first; (None, []) for a model without an RPN."""
    generator = getattr(getattr(model, "rpn", None), "anchor_generator", None)
    if not isinstance(generator, AnchorGenerator):
        return None, []
    return generator, sorted({int(size) for level in generator.sizes for size in level})


def anchor_sizes_of(model: nn.Module) -> list[int] | None:
    """The five anchor sizes of an R-CNN, smallest first; None where they are torchvision's (or no RPN)."""
    generator, sizes = _anchors(model)
    return None if generator is None or tuple(sizes) == DEFAULT_SIZES else sizes


def set_anchor_sizes(model: nn.Module, sizes: list[int]) -> None:
    """Give an R-CNN's RPN five anchor sizes, smallest first, in the places of torchvision's 32 to 512."""
    if len(sizes) != len(DEFAULT_SIZES) or any(size < 1 for size in sizes) or list(sizes) != sorted(set(sizes)):
        raise UserError(f"--anchor-sizes {' '.join(map(str, sizes))}: give five rising sizes in pixels, such as "
                        f"{' '.join(map(str, DEFAULT_SIZES))} (torchvision's), or auto")  # fmt: skip
    generator, now = _anchors(model)
    if generator is None:
        raise UserError("--anchor-sizes: an R-CNN setting (its RPN's anchors); this model has no RPN, so drop the flag")
    placed = dict(zip(now, sizes, strict=True))
    new = AnchorGenerator(tuple(tuple(placed[int(s)] for s in level) for level in generator.sizes),
                          generator.aspect_ratios)  # fmt: skip
    model.rpn.anchor_generator = new


def box_sides(dataset: Any, indices: list[int], min_size: int, max_size: int) -> np.ndarray:
    """The sides (square root of width x height) of the boxes of samples `indices` (crowds left out), in pixels of
    the size the model sees them at: each photo's shorter side at `min_size`, its longer at most `max_size`.
    At most MAX_SAMPLES images are read, evenly spread over `indices`."""
    step = max(1, math.ceil(len(indices) / MAX_SAMPLES))
    sides = []
    for idx in indices[::step]:
        image, target = dataset.load(idx)  # before the transforms: the photo's own pixels
        height, width = image.shape[-2:]
        scale = min(min_size / min(height, width), max_size / max(height, width))
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)[target["iscrowd"] == 0]
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
        sides.append(area.sqrt().numpy() * scale)
    return np.concatenate(sides) if sides else np.zeros(0)


def fitted_sizes(sides: np.ndarray) -> list[int]:
    """Five anchor sizes a factor 2 apart, as torchvision's, centred on the boxes: the middle one at the geometric
    mean of the 5th and 95th percentiles of their sides, so the five span the bulk of the boxes (at least 4
    pixels; torchvision's own where there are no boxes)."""
    if len(sides) == 0 or not np.any(sides > 0):
        return list(DEFAULT_SIZES)
    low, high = np.percentile(sides[sides > 0], [5, 95])
    middle = math.sqrt(low * high)
    return [max(4 * 2**k, round(middle * 2.0 ** (k - 2))) for k in range(len(DEFAULT_SIZES))]


def sizes_for_data(dataset: Any, indices: list[int], min_size: int, max_size: int) -> list[int]:
    """--anchor-sizes auto: five sizes fitted to the boxes of the training samples `indices`, said in one line."""
    sides = box_sides(dataset, indices, min_size, max_size)
    sizes = fitted_sizes(sides)
    median = f"median {np.median(sides):.0f} pixels" if len(sides) else "no boxes: torchvision's sizes"
    print(f"--anchor-sizes auto: {' '.join(map(str, sizes))} (the training boxes' sides at --min-size {min_size}: "
          f"{median})")  # fmt: skip
    return sizes
