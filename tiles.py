"""Tiled and mirrored prediction: a photo cut into overlapping tiles (and mirrored, with --tta), each view through
the model, and the detections merged back into the photo's coordinates.

A 40-pixel object in a 4000 x 3000 photo is 11 pixels once the model resizes the photo to 800 x 1067, below the
smallest anchors of an FPN (32). Cut into tiles of `tile` photo pixels, each resized by the model as it resizes a
photo, the object keeps its scale. As SAHI slices: neighbouring tiles overlap by a fraction of a tile, the last
tile of a row or column lies flush with the photo's edge, and one pass over the whole photo is added so that
objects larger than a tile survive.

How the views' detections become one set (`merge`, --tile-merge): by default ("nms") as class-wise non-maximum
suppression across views: of detections of one class from different views that overlap by an IoU of `threshold` or
more, the best-scored is kept and the others dropped. "nmm" (greedy non-maximum merging) joins an object that a
tile's edge cuts into one instead: measured against "nms" on --seed 1 of bench.py --parts tiles, it lost
(docs/results.md: on touching objects, a plant's leaves, cut pieces join a neighbour and the joins chain). It is
greedy and class-wise, highest score first, and only joins detections of different views (within a view the model
has already decided what is one object). A detection whose box touches a tile's inner edge is cut: a piece. A piece
joins the detection it overlaps by at least `threshold` of the smaller box (SAHI's intersection over the smaller
box), and a piece that lies within a detection by `threshold` of its own box joins that detection: the group becomes
one, the union of their boxes and of their masks. A whole object never joins another whole one this way, so a small
leaf inside a large leaf's box stays its own. Two whole detections of one object (the photo and its mirror, a tile
and the whole-photo pass) are duplicates at an IoU of `threshold` or more: the better one is kept, as non-maximum
suppression keeps it, with the others' mask probabilities averaged into its own. Masks stay unpasted (N x 1 x M x M
probabilities in their boxes, as masks.unpasted_masks gives them), so no stack at the photo's size is ever made: the
caller pastes them a few at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torchvision.ops import box_area

from masks import unpasted_masks

MERGES = ("nms", "nmm")
# How a photo is seen (--tile, --tile-overlap, --tta, --tile-merge): a resume may change these, and eval.json
# records them
VIEW_SETTINGS = ("tile", "tile_overlap", "tta", "tile_merge")


@dataclass(frozen=True)
class Tiling:
    """How a photo is seen: tiles of `tile` photo pixels a side overlapping by `overlap` of a tile, plus the whole
    photo (`tile` None: the whole photo only); with `tta` each view and its mirror image. `keypoint_flip`: the
    flip permutation of a keypoint model's points (keypoints.flip_permutation), which a mirror needs; views go
    through the model `batch_size` at a time."""

    tile: int | None = None
    overlap: float = 0.2
    tta: bool = False
    batch_size: int = 4
    keypoint_flip: list[int] | None = None
    max_detections: int = 100  # of a photo, once merged: the best, as a model keeps its detections_per_img
    merge: str = "nms"  # chosen on --seed 1 of bench.py --parts tiles (docs/results.md)
    threshold: float = 0.5


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of the tiles that cover a height x width photo, row by row: `tile` pixels a side,
    neighbours overlapping by at least `overlap` of a tile, the last of each row and column flush with the photo's
    edge; a side no longer than a tile is one tile along that side, the photo's length."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        stride = max(1, int(tile * (1 - overlap)))
        return [*range(0, length - tile, stride), length - tile]

    return [
        (top, left, min(top + tile, height), min(left + tile, width))
        for top in starts(height)
        for left in starts(width)
    ]


def views_of(height: int, width: int, tiling: Tiling) -> list[tuple[tuple[int, int, int, int], bool]]:
    """The views of a photo: (window, mirrored) pairs, the whole photo's last."""
    whole = (0, 0, height, width)
    windows = [whole]
    if tiling.tile is not None and (height > tiling.tile or width > tiling.tile):
        windows = [*tile_windows(height, width, tiling.tile, tiling.overlap), whole]
    return [(window, mirrored) for window in windows for mirrored in ((False, True) if tiling.tta else (False,))]


def detect(model: torch.nn.Module, images: list[torch.Tensor], tiling: Tiling | None = None) -> list[dict[str, Any]]:
    """The model's detections on each image (3 x H x W), masks left unpasted as "mask_probs" (N x 1 x M x M in
    their boxes; masks.unpasted_masks), seen whole (`tiling` None) or as `tiling` says and merged."""
    if tiling is None or not (tiling.tta or tiling.tile is not None):
        return _run(model, images)
    return [_detect_views(model, image, tiling) for image in images]


def _run(model: torch.nn.Module, images: list[torch.Tensor]) -> list[dict[str, Any]]:
    with unpasted_masks(model) as mask_probs:  # pasted by the caller a few at a time, not all at the photo's size
        outputs = model(images)
    for output, probs in zip(outputs, mask_probs or [None] * len(outputs), strict=True):
        if probs is not None:
            output["mask_probs"] = probs
    return outputs


def _detect_views(model: torch.nn.Module, image: torch.Tensor, tiling: Tiling) -> dict[str, Any]:
    height, width = image.shape[-2:]
    views = views_of(height, width, tiling)
    parts: list[dict[str, Any]] = []
    for start in range(0, len(views), tiling.batch_size):
        batch = views[start : start + tiling.batch_size]
        crops = [image[:, top:bottom, left:right] for (top, left, bottom, right), _ in batch]
        crops = [crop.flip(-1) if mirrored else crop for crop, (_, mirrored) in zip(crops, batch, strict=True)]
        for output, (window, mirrored) in zip(_run(model, crops), batch, strict=True):
            output = _in_photo(output, window, mirrored, tiling.keypoint_flip)
            output["view"] = torch.full_like(output["labels"], len(parts))
            output["cut"] = _cut(output["boxes"], window, height, width)
            parts.append(output)
    found = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    if len(views) == 1:
        return {key: value for key, value in found.items() if key not in ("view", "cut")}
    merged = merge(found, tiling.merge, tiling.threshold)  # best first
    return {key: value[: tiling.max_detections] for key, value in merged.items()}


def _in_photo(output: dict[str, Any], window: tuple[int, int, int, int], mirrored: bool, keypoint_flip: Any) -> dict:
    """A view's detections in the photo's coordinates: unmirrored (boxes, masks and keypoints, whose labels swap
    through `keypoint_flip`), then moved by the window's top left corner."""
    top, left, bottom, right = window
    output = {key: value.cpu() for key, value in output.items()}
    boxes = output["boxes"].clone()
    if mirrored:
        boxes[:, [0, 2]] = (right - left) - boxes[:, [2, 0]]
        if "mask_probs" in output:
            output["mask_probs"] = output["mask_probs"].flip(-1)
        if "keypoints" in output:
            if keypoint_flip is None:
                raise ValueError("keypoints cannot be mirrored without a flip permutation (keypoints.flip_permutation)")
            points = output["keypoints"].clone()
            points[..., 0] = (right - left - 1) - points[..., 0]  # pixel columns, as transforms mirror keypoints
            output["keypoints"] = points[:, keypoint_flip]
            output["keypoints_scores"] = output["keypoints_scores"][:, keypoint_flip]
    output["boxes"] = boxes + torch.tensor([left, top, left, top], dtype=boxes.dtype)
    if "keypoints" in output:
        points = output["keypoints"].clone()
        points[..., :2] += torch.tensor([left, top], dtype=points.dtype)
        output["keypoints"] = points
    return output


def _cut(boxes: torch.Tensor, window: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Which boxes (photo coordinates) touch an edge of their tile that is not an edge of the photo: objects the
    tile may have cut."""
    top, left, bottom, right = window
    margin = max(2.0, 0.01 * max(bottom - top, right - left))
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (
        ((x1 <= left + margin) & (left > 0))
        | ((y1 <= top + margin) & (top > 0))
        | ((x2 >= right - margin) & (right < width))
        | ((y2 >= bottom - margin) & (bottom < height))
    )


def merge(found: dict[str, torch.Tensor], method: str = "nms", threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """The detections of all views of a photo ("view": each one's view; "cut": touching an inner tile edge) as
    one set, merged as the module's docstring says, highest score first."""
    if method not in MERGES:
        raise ValueError(f"merge {method!r}: one of {MERGES}")
    boxes, scores, labels, views, cut = (found[key] for key in ("boxes", "scores", "labels", "view", "cut"))
    areas = box_area(boxes).clamp(min=1e-6)
    alive = torch.ones(len(boxes), dtype=torch.bool)
    kept, groups = [], []
    for i in scores.argsort(descending=True, stable=True).tolist():
        if not alive[i]:
            continue
        alive[i] = False
        candidates = alive & (labels == labels[i]) & (views != views[i])
        group, reach, group_cut = [], boxes[i], bool(cut[i])
        while method == "nmm":  # fragments joined, then what the joined box reaches, until none is left
            inter = _intersection(reach, boxes)
            reach_area = box_area(reach[None])
            piece = cut & (inter / torch.minimum(areas, reach_area) >= threshold)  # a cut piece overlapping it
            whole = group_cut & (inter / reach_area >= threshold)  # what a cut group is a piece of
            found_now = candidates & (piece | whole)
            if not found_now.any():
                break
            group += found_now.nonzero()[:, 0].tolist()
            group_cut = group_cut or bool(cut[found_now].any())
            candidates &= ~torch.isin(views, views[found_now])  # a view has one piece of an object at most
            reach = _union(boxes[[i, *group]])
        inter = _intersection(reach, boxes)
        duplicates = candidates & (inter / (box_area(reach[None]) + areas - inter) >= threshold)
        alive[group] = False
        alive &= ~duplicates
        kept.append(i)
        groups.append((torch.tensor(group, dtype=torch.long), duplicates.nonzero()[:, 0]))
    return _joined(found, kept, groups)


def _joined(found: dict[str, torch.Tensor], kept: list[int], groups: list[tuple]) -> dict[str, torch.Tensor]:
    """Each kept detection with its group joined in: boxes and masks of fragments by union, duplicates' masks
    averaged into the kept one's; its score, label and keypoints its own."""
    index = torch.tensor(kept, dtype=torch.long)
    result = {key: value[index] for key, value in found.items() if key not in ("view", "cut")}
    boxes = found["boxes"]
    unions = [_union(boxes[[i, *fragments.tolist()]]) for i, (fragments, _) in zip(kept, groups, strict=True)]
    result["boxes"] = torch.stack(unions) if kept else boxes[:0]
    if "mask_probs" in found:
        probs = found["mask_probs"]
        side = probs.shape[-1]  # the model's own grid: a lone detection's mask is kept exactly
        result["mask_probs"] = (
            torch.stack(
                [
                    _joined_mask(probs, boxes, i, fragments, duplicates, union, side)
                    for i, (fragments, duplicates), union in zip(kept, groups, result["boxes"], strict=True)
                ]
            )
            if kept
            else probs.new_zeros((0, 1, side, side))
        )
    return result


def _intersection(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The area each of `boxes` (N x 4) shares with `box` (4)."""
    top_left, bottom_right = torch.maximum(box[:2], boxes[:, :2]), torch.minimum(box[2:], boxes[:, 2:])
    return (bottom_right - top_left).clamp(min=0).prod(-1)


def _union(boxes: torch.Tensor) -> torch.Tensor:
    """The smallest box (x1, y1, x2, y2) that holds all of `boxes`."""
    return torch.cat([boxes[:, :2].amin(0), boxes[:, 2:].amax(0)])


def _joined_mask(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    kept: int,
    fragments: torch.Tensor,
    duplicates: torch.Tensor,
    union: torch.Tensor,
    side: int,
) -> torch.Tensor:
    """A 1 x side x side mask over the `union` box: the kept detection's probabilities averaged with its
    duplicates', and the fragments' joined by their maximum."""

    def pasted(members: list[int]) -> torch.Tensor:  # each member's probabilities sampled at the grid's centres
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        x = union[0] + centres * (union[2] - union[0])
        y = union[1] + centres * (union[3] - union[1])
        box = boxes[members].float()
        gx = 2 * (x[None] - box[:, [0]]) / (box[:, [2]] - box[:, [0]]).clamp(min=1e-3) - 1  # -1 and 1: box edges
        gy = 2 * (y[None] - box[:, [1]]) / (box[:, [3]] - box[:, [1]]).clamp(min=1e-3) - 1
        grid = torch.stack([gx[:, None, :].expand(-1, side, -1), gy[:, :, None].expand(-1, -1, side)], dim=-1)
        sampled = nnf.grid_sample(probs[members].float(), grid, padding_mode="border", align_corners=False)[:, 0]
        return sampled * (grid.abs() <= 1).all(-1)  # nothing outside the member's own box

    whole = pasted([kept, *duplicates.tolist()]).mean(0)
    if len(fragments):
        whole = torch.maximum(whole, pasted(fragments.tolist()).amax(0))
    return whole[None]
