"""Training on tiles (--train-tile SIZE): each training sample a tile of SIZE photo pixels cut from a photo at its
own resolution, so that the model learns objects at the scale that tiled prediction (tiles.py, --tile) shows them.

Each photo gives the tiles that cover it (tiles.tile_windows: neighbours overlap by OVERLAP of a tile, SAHI's
default; the last of a row or column flush with the photo's edge), every epoch, so that an object smaller than
the overlap is seen whole in some tile; a photo no larger than a tile is one sample, as it is. The tile is cut
before the augmentation, from the sample as the dataset reads it (image, boxes, instance map or masks,
keypoints): an instance that the tile's edge cuts stays when at least a tenth of it remains (mosaic.py's rule,
Ultralytics'), its box then the box of what remains; an instance wholly inside the tile is always kept;
keypoints outside the tile become unlabelled. The model then resizes the tile as it resizes a photo.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors

from dataset import boxes_of_masks
from masks import boxes_of_index_maps, keep, pixels_of
from mosaic import MIN_SIDE, MIN_VISIBLE
from tiles import tile_windows

OVERLAP = 0.2  # of a tile, between neighbouring training tiles


class TrainingTiles(torch.utils.data.Dataset):
    """The tiles of SIZE photo pixels of `dataset`'s photos `indices` (an InstanceDataset: its `load` and
    `transforms`), as samples of the target contract, each transformed as the dataset transforms a photo."""

    def __init__(self, dataset: Any, indices: list[int], tile: int, overlap: float = OVERLAP) -> None:
        self.dataset, self.indices = dataset, indices
        self.windows = [
            (index, window)
            for index in indices
            for window in tile_windows(*dataset.get_height_and_width(index), tile, overlap)  # headers only
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def get_height_and_width(self, k: int) -> tuple[int, int]:
        """Tile k's (height, width): for the batches of similar shape (group_by_aspect_ratio)."""
        top, left, bottom, right = self.windows[k][1]
        return bottom - top, right - left

    def __getitem__(self, k: int) -> tuple[Any, dict[str, Any]]:
        index, window = self.windows[k]
        image, target = crop(*self.dataset.load(index), window)
        if self.dataset.transforms is not None:
            image, target = self.dataset.transforms(image, target)
        return image, target


def crop(image: torch.Tensor, target: dict[str, Any], window: tuple[int, int, int, int]) -> tuple[Any, dict]:
    """The part of a sample (before transforms) inside `window` (top, left, bottom, right), in the tile's
    coordinates: the instances with at least MIN_VISIBLE of their pixels (of their box's area, without outlines)
    inside and a box at least MIN_SIDE wide and high, with the box of what remains of them."""
    top, left, bottom, right = window
    height, width = bottom - top, right - left
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    clipped = boxes - shift
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    whole = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    visible = (clipped[:, 2:] - clipped[:, :2]).prod(dim=1)
    cut: dict[str, Any] = {}
    if "instance_map" in target:
        instance_map = target["instance_map"]
        cut["instance_map"] = tv_tensors.wrap(instance_map[..., top:bottom, left:right], like=instance_map)
        outlined = pixels_of(instance_map, n).float()
        pixels = pixels_of(cut["instance_map"], n).float()
        in_tile = boxes_of_index_maps(cut["instance_map"], n)
    elif "masks" in target:
        cut["masks"] = tv_tensors.wrap(target["masks"][:, top:bottom, left:right], like=target["masks"])
        outlined = target["masks"].flatten(1).sum(dim=1).float()
        pixels = cut["masks"].flatten(1).sum(dim=1).float()
        in_tile = boxes_of_masks(cut["masks"])
    else:
        outlined = pixels = torch.zeros(n)
        in_tile = clipped
    has_outline = outlined > 0  # mixed data: an instance without an outline is kept by its box
    whole, visible = torch.where(has_outline, outlined, whole), torch.where(has_outline, pixels, visible)
    new_boxes = torch.where(has_outline[:, None], in_tile, clipped)
    sides = new_boxes[:, 2:] - new_boxes[:, :2]
    kept = (visible > 0) & (visible >= MIN_VISIBLE * whole) & (sides >= MIN_SIDE).all(dim=1)
    kept |= (visible >= whole) & (visible > 0)  # wholly inside: never lost, however thin
    result = {key: value for key, value in target.items() if key not in ("boxes", "instance_map", "masks")}
    for key in ("labels", "iscrowd", "keypoints"):
        if key in target:
            result[key] = target[key][kept]
    result["boxes"] = tv_tensors.BoundingBoxes(new_boxes[kept], format="XYXY", canvas_size=(height, width))
    result["area"] = visible[kept].to(torch.float32)
    if "instance_map" in cut:
        result["instance_map"] = keep(cut["instance_map"], kept)
    elif "masks" in cut:
        result["masks"] = tv_tensors.wrap(cut["masks"][kept], like=cut["masks"])
    if "keypoints" in result:
        result["keypoints"] = _moved_points(result["keypoints"], left, top, width, height)
    return tv_tensors.wrap(image[..., top:bottom, left:right], like=image), result


def _moved_points(points: torch.Tensor, left: int, top: int, width: int, height: int) -> torch.Tensor:
    """N x K x 3 keypoints in the tile's coordinates; those outside it unlabelled (0, 0, 0)."""
    moved = torch.as_tensor(points, dtype=torch.float32).clone()
    moved[..., 0] -= left
    moved[..., 1] -= top
    x, y = moved[..., 0], moved[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height) & (moved[..., 2] > 0)
    return torch.where(inside[..., None], moved, torch.zeros_like(moved))
