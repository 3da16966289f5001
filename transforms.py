"""Augmentation presets on torchvision.transforms.v2, so boxes and masks move with the image.

Every preset ends by converting the image to float in [0, 1] and dropping boxes that a
transform made degenerate (zero width or height, or cut off), together with their
masks, labels, areas and crowd flags. Resizing is left to the model (`--min-size`).
Geometric presets leave `area` as it was before the transform: training does not
use it, and evaluation uses the "none" preset.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

AUGMENTATIONS = ("hflip", "none", "ssd")


def _per_instance_fields(sample: tuple) -> tuple[torch.Tensor, ...]:
    """The per-instance tensors that SanitizeBoundingBoxes must filter along with the boxes."""
    target = sample[1]
    return tuple(target[key] for key in ("labels", "area", "iscrowd") if key in target)


def get_transform(train: bool, augmentation: str = "hflip") -> T.Compose:
    """The transform for training (`train=True`, with `augmentation`) or for evaluation (no augmentation).

    augmentation: "hflip" (random horizontal flip, the tutorial's), "none", or "ssd"
    (photometric distortion, zoom out, IoU crop and flip, as torchvision's SSD preset).
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    steps: list[T.Transform] = []
    if train and augmentation == "hflip":
        steps.append(T.RandomHorizontalFlip(0.5))
    elif train and augmentation == "ssd":
        steps += [
            T.RandomPhotometricDistort(p=0.5),
            T.RandomZoomOut(fill={tv_tensors.Image: (123, 117, 104), "others": 0}),
            T.RandomIoUCrop(),
            T.RandomHorizontalFlip(0.5),
        ]
    steps += [
        T.ToDtype(torch.float32, scale=True),
        T.SanitizeBoundingBoxes(labels_getter=_per_instance_fields),
        T.ToPureTensor(),
    ]
    return T.Compose(steps)
