"""Pictures of what the model sees and says: masks, keypoints, boxes and class names drawn on images.

predict.py draws its detections with `draw`; `python dataset.py show` and train.py draw the
ground truth after the training transforms (first_batch.png), and train.py draws held-out
predictions beside their ground truth whenever the best checkpoint improves
(best_predictions.png). A wrong mask value, a mis-paired file or an augmentation that drops
instances is found fastest by looking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageColor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints

import utils
from masks import split

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per class, repeating after eight.
COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
PICTURE_HEIGHT = 320  # each image in a grid is scaled to this height
SCREEN_SIDE = 1600  # the longest side a picture is drawn at: a 12-megapixel photo's own would be 36 MB of pixels
# Mask probabilities pasted at once, each cut at 0.5 before the next: 100 of them at 1600 x 1200 in float would be
# 770 MB (and torchvision's paste holds them twice); 8 are 61 MB, and the 100 cut masks 190 MB.
PASTED_AT_ONCE = 8


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A 3 x H x W image as uint8: float images (in [0, 1], after the transforms) are scaled to 0-255."""
    if image.dtype == torch.uint8:
        return image.cpu()
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def shrink(image: torch.Tensor, found: dict[str, Any], longest: int = SCREEN_SIDE) -> tuple[torch.Tensor, dict]:
    """The uint8 image at most `longest` pixels on its longer side, and what `found` has on it to match: masks and
    instance maps by nearest neighbour (then split: masks.split), a model's unpasted mask probabilities pasted at
    that size, boxes and keypoints scaled. A photo is drawn at a screen's size, never at its own."""
    image, found = to_uint8(image), dict(found)
    height, width = image.shape[-2:]
    scale = min(1.0, longest / max(height, width))
    size = [max(1, round(height * scale)), max(1, round(width * scale))]
    if size != [height, width]:
        image = F.resize(image, size, antialias=True)
        ratio = torch.tensor([size[1] / width, size[0] / height])
        found["boxes"] = torch.as_tensor(found["boxes"]).cpu().float() * ratio.repeat(2)
        if "keypoints" in found:
            points = torch.as_tensor(found["keypoints"]).cpu().float()
            found["keypoints"] = torch.cat([points[..., :2] * ratio, points[..., 2:]], dim=-1)
        for key in ("masks", "instance_map"):
            if key in found:
                found[key] = F.resize(torch.as_tensor(found[key]).cpu(), size, F.InterpolationMode.NEAREST)
    if "instance_map" in found:
        found["masks"] = split(found.pop("instance_map"), len(found["labels"]))
    if "mask_probs" in found:
        found["masks"] = _pasted(found.pop("mask_probs").cpu(), torch.as_tensor(found["boxes"]).cpu().float(), size)
    return image, found


def _pasted(mask_probs: torch.Tensor, boxes: torch.Tensor, size: list[int]) -> torch.Tensor:
    """N x H x W bool masks of a model's unpasted N x 1 x M x M probabilities, pasted in their boxes at `size` and
    cut at 0.5, PASTED_AT_ONCE at a time."""
    cut = [paste_masks_in_image(mask_probs[k : k + PASTED_AT_ONCE], boxes[k : k + PASTED_AT_ONCE], size)[:, 0] > 0.5
           for k in range(0, len(mask_probs), PASTED_AT_ONCE)]  # fmt: skip
    return torch.cat(cut) if cut else torch.zeros((0, *size), dtype=torch.bool)


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
    if "masks" in found and len(found["masks"]):
        masks = found["masks"]
        masks = masks[:, 0] > 0.5 if masks.dim() == 4 else masks.bool()
        image = draw_masks(image, masks.cpu(), colors)
    if "keypoints" in found:  # white points and bones: they show on masks of any colour
        points = torch.as_tensor(found["keypoints"]).cpu().float()
        visible = points[..., 2] > 0
        image = draw_keypoints(image, points[..., :2], skeleton or None, "white", radius=3, width=2, visibility=visible)
    names = [class_names[label] if label < len(class_names) else f"class {label}" for label in labels]
    if "scores" in found:
        names = [f"{name} {score:.2f}" for name, score in zip(names, found["scores"].tolist(), strict=True)]
    boxes = torch.as_tensor(found["boxes"]).cpu().float()
    return draw_bounding_boxes(image, boxes, labels=names, colors=colors, width=2)


def draw_masks(image: torch.Tensor, masks: torch.Tensor, colors: list[str], alpha: float = 0.5) -> torch.Tensor:
    """torchvision's draw_segmentation_masks on a uint8 image, pixel for pixel (each N x H x W bool mask painted in
    its colour, a pixel under two or more black, the whole blended at `alpha`), with the overlaps counted a mask at
    a time: torchvision's sum makes an N x H x W int64 copy (1.5 GB for 100 masks at 1600 x 1200)."""
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
