"""Mosaic (--mosaic P): Ultralytics' augmentation on a training batch, four pictures in one.

A picture of the batch is cut at a random centre (a quarter to three quarters of its height and width); each of
the four parts shows, at the same scale, the corner of another image of the batch that meets the centre (the top
left part shows the bottom-right corner of the first image, and so on: the picture itself and the next three of
the batch, in turn). Masks, boxes and keypoints move with their pixels; an instance keeps its place when at
least MIN_VISIBLE of it remains (Ultralytics keeps a box with a tenth of its area) and is dropped otherwise.
The samples are at the size the model sees (transforms.ResizeForModel ran before), so a mosaic costs a few
copies of that size; its picture keeps the size of the picture it replaces.

More objects and more contexts per step, at the price of cut objects and seams: the last epochs train without it
(--close-mosaic), as Ultralytics closes its mosaic, so that the model ends on whole pictures.
"""

from __future__ import annotations

from typing import Any

import torch

from dataset import boxes_of_masks
from transforms import IMAGENET_MEAN_PIXEL
from utils import collate_fn

MIN_VISIBLE = 0.1  # of an instance's pixels (its box's area, without masks), for it to stay in a mosaic
MIN_SIDE = 2.0  # pixels: a narrower sliver of a box goes
PAD = tuple(value / 255 for value in IMAGENET_MEAN_PIXEL)  # where no image reaches, as the presets pad (float images)
QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (bottom, right): top left, top right, bottom left, bottom right


def _placed(target: dict[str, Any], source: tuple[int, int], place: tuple[int, int], size: tuple[int, int],
            canvas: tuple[int, int]) -> dict[str, torch.Tensor]:  # fmt: skip
    """The instances of `target` whose pixels from `source` (row, column), `size` high and wide, land at `place` of
    a picture of size `canvas`: moved, cut, and those with too little left dropped."""
    (sy, sx), (dy, dx), (h, w) = source, place, size
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    shift = torch.tensor([dx - sx, dy - sy, dx - sx, dy - sy], dtype=torch.float32)
    moved: dict[str, torch.Tensor] = {}
    if "masks" in target:
        masks = torch.zeros((len(boxes), *canvas), dtype=torch.uint8)
        masks[:, dy : dy + h, dx : dx + w] = target["masks"][:, sy : sy + h, sx : sx + w]
        whole = target["masks"].flatten(1).sum(dim=1).float()
        visible = masks.flatten(1).sum(dim=1).float()
        boxes = boxes_of_masks(masks)
        moved["masks"] = masks
    else:
        whole = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
        boxes = boxes + shift
        boxes[:, 0::2] = boxes[:, 0::2].clamp(dx, dx + w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(dy, dy + h)
        visible = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    sides = boxes[:, 2:] - boxes[:, :2]
    keep = (visible > 0) & (visible >= MIN_VISIBLE * whole) & (sides >= MIN_SIDE).all(dim=1)
    moved.update(boxes=boxes, area=visible)
    if "keypoints" in target:
        points = torch.as_tensor(target["keypoints"], dtype=torch.float32).clone()
        points[..., :2] += shift[:2]
        x, y = points[..., 0], points[..., 1]
        inside = (x >= dx) & (x < dx + w) & (y >= dy) & (y < dy + h) & (points[..., 2] > 0)
        moved["keypoints"] = torch.where(inside[..., None], points, torch.zeros_like(points))  # outside: unlabelled
    moved.update(labels=target["labels"], iscrowd=target["iscrowd"])
    return {key: value[keep] for key, value in moved.items()}


def mosaic(batch: list[tuple[torch.Tensor, dict[str, Any]]], index: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Picture `index` of the batch as a mosaic of four of its images (module docstring)."""
    image, target = batch[index]
    height, width = image.shape[-2:]
    cy = int(height * (0.25 + 0.5 * torch.rand(1).item()))
    cx = int(width * (0.25 + 0.5 * torch.rand(1).item()))
    picture = torch.tensor(PAD, dtype=image.dtype)[:, None, None].expand(3, height, width).clone()
    parts = []
    for quadrant, (bottom, right) in enumerate(QUADRANTS):
        source_image, source = batch[(index + quadrant) % len(batch)]
        source_height, source_width = source_image.shape[-2:]
        h = min(height - cy if bottom else cy, source_height)
        w = min(width - cx if right else cx, source_width)
        sy, sx = (0 if bottom else source_height - h), (0 if right else source_width - w)  # the corner at the centre
        dy, dx = (cy if bottom else cy - h), (cx if right else cx - w)
        picture[:, dy : dy + h, dx : dx + w] = source_image[:, sy : sy + h, sx : sx + w]
        parts.append(_placed(source, (sy, sx), (dy, dx), (h, w), (height, width)))
    shared = [key for key in parts[0] if all(key in part for part in parts)]  # keypoints only if all have them
    combined = {key: torch.cat([part[key] for part in parts]) for key in shared}
    return picture, {**target, **combined}


class Mosaic:
    """The training DataLoader's collate_fn with --mosaic: each picture of a batch becomes a mosaic with
    `probability`, while `on` (train.py turns it off for the last epochs); then the usual lists."""

    def __init__(self, probability: float) -> None:
        self.probability, self.on = probability, True

    def __call__(self, batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple, tuple]:
        if self.on and len(batch) > 1:
            draws = torch.rand(len(batch)).tolist()
            batch = [mosaic(batch, i) if draw < self.probability else batch[i] for i, draw in enumerate(draws)]
        return collate_fn(batch)


def close_mosaic(collate: Mosaic, epoch: int, epochs: int, close: int | None) -> None:
    """Before `epoch` of `epochs`: mosaic stays on but for the last `close` epochs (None: a tenth, at least one), and
    says so in one line when it turns off (a time budget may plan the epochs again after this one)."""
    last = max(1, round(epochs / 10)) if close is None else close
    on = epoch < epochs - last
    if collate.on and not on:
        print(f"epoch {epoch}: mosaic off for the last {epochs - epoch} of {epochs} epochs (--close-mosaic)")
    collate.on = collate.on and on  # once off, off: a later plan of more epochs does not turn it on again
