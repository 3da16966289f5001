"""Pictures of what the model sees and says: masks, keypoints, boxes and class names drawn on images.

predict.py draws its detections with `draw`; `python dataset.py show` and train.py draw the
ground truth after the training transforms (first_batch.png), and train.py draws held-out
predictions beside their ground truth whenever the best checkpoint improves
(best_predictions.png). A wrong mask value, a mis-paired file or an augmentation that drops
instances is found fastest by looking.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageColor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints

import utils

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per class, repeating after eight.
COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
PICTURE_HEIGHT = 320  # each image in a grid is scaled to this height
SCREEN_SIDE = 1600  # the longest side a picture is drawn at: a 12-megapixel photo's own would be 36 MB of pixels
# A model's mask probabilities pasted at once at a picture's size, each then cut at 0.5 and drawn: all 100 at 1600 x
# 1200 in float would be 770 MB (and torchvision's paste holds them twice); 8 are 61 MB.
PASTED_AT_ONCE = 8


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A 3 x H x W image as uint8: float images (in [0, 1], after the transforms) are scaled to 0-255."""
    if image.dtype == torch.uint8:
        return image.cpu()
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def shrink(image: torch.Tensor, found: dict[str, Any], longest: int = SCREEN_SIDE) -> tuple[torch.Tensor, dict]:
    """The uint8 image at most `longest` pixels on its longer side, and what `found` has on it to match: masks and
    instance maps by nearest neighbour, boxes and keypoints scaled (a model's unpasted mask probabilities lie in
    their boxes: they match at any size). A photo is drawn at a screen's size, never at its own, and what is kept
    for a picture (engine.evaluate's samples) holds no mask per instance: draw makes them one at a time."""
    image, found = image.detach().cpu(), dict(found)
    height, width = image.shape[-2:]
    scale = min(1.0, longest / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    if size != [height, width]:
        image = F.resize(image, size, antialias=True)  # before to_uint8: its float copies are then the picture's
        ratio = torch.tensor([size[1] / width, size[0] / height])
        found["boxes"] = torch.as_tensor(found["boxes"]).cpu().float() * ratio.repeat(2)
        if "keypoints" in found:
            points = torch.as_tensor(found["keypoints"]).cpu().float()
            found["keypoints"] = torch.cat([points[..., :2] * ratio, points[..., 2:]], dim=-1)
        for key in ("masks", "instance_map"):
            if key in found:
                found[key] = F.resize(torch.as_tensor(found[key]).cpu(), size, F.InterpolationMode.NEAREST)
    return to_uint8(image), found


def each_mask(found: dict[str, Any], size: list[int]) -> Iterator[torch.Tensor]:
    """The H x W bool mask of each instance of `found` at `size`, one at a time: from binary N x H x W masks or
    N x 1 x H x W probabilities (cut at 0.5), an L x H x W instance map (instance k is value k + 1 in any layer),
    or a model's unpasted N x 1 x M x M probabilities, pasted in their boxes PASTED_AT_ONCE at a time."""
    if "masks" in found:
        for mask in found["masks"]:
            yield mask[0] > 0.5 if mask.dim() == 3 else mask.bool()
    elif "instance_map" in found:
        instance_map = torch.as_tensor(found["instance_map"])
        for k in range(len(found["labels"])):
            yield (instance_map == k + 1).any(dim=0)
    elif "mask_probs" in found:
        probs, boxes = found["mask_probs"].cpu(), torch.as_tensor(found["boxes"]).cpu().float()
        for k in range(0, len(probs), PASTED_AT_ONCE):
            pasted = paste_masks_in_image(probs[k : k + PASTED_AT_ONCE], boxes[k : k + PASTED_AT_ONCE], size)
            yield from pasted[:, 0] > 0.5


def draw(
    image: torch.Tensor,
    found: dict[str, torch.Tensor],
    class_names: list[str],
    skeleton: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """The uint8 image with masks (half transparent), keypoints (joined by `skeleton`, pairs of keypoint
    indices), boxes and class names (with scores, for detections) on it.

    `found`: a target of the dataset contract (binary N x H x W masks, or an instance map) or a model's output
    (N x 1 x H x W mask probabilities, or unpasted "mask_probs", cut at 0.5, and "scores"). Unlabelled keypoints
    are not drawn. A photo longer than SCREEN_SIDE is drawn at that size (shrink).
    """
    image, found = shrink(image, found)
    labels = found["labels"].tolist()
    if not labels:
        return image
    colors = [COLORS[(label - 1) % len(COLORS)] for label in labels]
    if {"masks", "instance_map", "mask_probs"} & found.keys():
        image = draw_masks(image, each_mask(found, list(image.shape[-2:])), colors)
    if "keypoints" in found:  # white points and bones: they show on masks of any colour
        points = torch.as_tensor(found["keypoints"]).cpu().float()
        visible = points[..., 2] > 0
        image = draw_keypoints(image, points[..., :2], skeleton or None, "white", radius=3, width=2, visibility=visible)
    names = [class_names[label] if label < len(class_names) else f"class {label}" for label in labels]
    if "scores" in found:
        names = [f"{name} {score:.2f}" for name, score in zip(names, found["scores"].tolist(), strict=True)]
    boxes = torch.as_tensor(found["boxes"]).cpu().float()
    return draw_bounding_boxes(image, boxes, labels=names, colors=colors, width=2)


def draw_masks(
    image: torch.Tensor, masks: Iterable[torch.Tensor], colors: list[str], alpha: float = 0.5
) -> torch.Tensor:
    """torchvision's draw_segmentation_masks on a uint8 image, pixel for pixel (each H x W bool mask painted in its
    colour, a pixel under two or more black, the whole blended at `alpha`), from masks given one at a time, with the
    overlaps counted as they come: torchvision takes an N x H x W stack and its sum makes an N x H x W int64 copy
    (4.6 GB for 300 leaves at 1600 x 1200)."""
    painted, under = image.clone(), torch.zeros(image.shape[-2:], dtype=torch.int16)
    for mask, color in zip(masks, colors, strict=True):
        painted[:, mask] = torch.tensor(ImageColor.getrgb(color), dtype=torch.uint8)[:, None]
        under += mask
    painted[:, under > 1] = 0
    return (image * (1 - alpha) + painted * alpha).to(torch.uint8)


def grid(rows: list[list[torch.Tensor]], height: int = PICTURE_HEIGHT, gap: int = 4) -> torch.Tensor:
    """uint8 pictures of any size in rows, each scaled to `height`, on a white background."""
    rows = [[F.resize(p, [height, max(1, round(p.shape[-1] * height / p.shape[-2]))]) for p in row] for row in rows]
    width = max(sum(p.shape[-1] for p in row) + gap * (len(row) - 1) for row in rows)
    canvas = torch.full((3, len(rows) * (height + gap) - gap, width), 255, dtype=torch.uint8)
    for r, row in enumerate(rows):
        x = 0
        for picture in row:
            canvas[:, r * (height + gap) : r * (height + gap) + height, x : x + picture.shape[-1]] = picture
            x += picture.shape[-1] + gap
    return canvas


def save_png(picture: torch.Tensor, path: str | Path) -> None:
    """A 3 x H x W uint8 picture as a PNG, written atomically."""
    image = Image.fromarray(picture.permute(1, 2, 0).numpy())
    utils.atomic_write(path, lambda f: image.save(f, format="png"))


def save_batch_picture(
    images: Any,
    targets: Any,
    class_names: list[str],
    path: str | Path,
    skeleton: list[tuple[int, int]] | None = None,
    per_row: int = 4,
) -> None:
    """A batch as the model is fed it (after the transforms), with its ground truth drawn: one picture."""
    pictures = [draw(image, target, class_names, skeleton) for image, target in zip(images, targets, strict=True)]
    save_png(grid([pictures[k : k + per_row] for k in range(0, len(pictures), per_row)]), path)


def save_predictions_picture(
    samples: list[tuple[torch.Tensor, dict, dict]],
    class_names: list[str],
    path: str | Path,
    score_threshold: float,
    skeleton: list[tuple[int, int]] | None = None,
) -> None:
    """One row per held-out image: its ground truth, then the model's detections scoring at least `score_threshold`
    (nothing is written for no image)."""
    rows = []
    for image, target, output in samples:
        kept = {key: value[output["scores"] >= score_threshold] for key, value in output.items()}
        rows.append([draw(image, target, class_names, skeleton), draw(image, kept, class_names, skeleton)])
    if rows:  # no image, no picture
        save_png(grid(rows), path)
