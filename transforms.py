"""Augmentation presets on torchvision.transforms.v2, so boxes, masks and keypoints move with the image.

    hflip       a random horizontal flip (the tutorial's)
    none        nothing
    ssd         photometric distortion, zoom out, IoU crop and flip (torchvision's SSD preset)
    ssdlite     IoU crop and flip (torchvision's SSDlite preset)
    multiscale  a flip, and each training image resized to a random shorter side between
                0.6 x and 1 x --min-size (evaluation: --min-size); see train_sizes(). Another
                range, or the sizes with another preset's steps: --scale-range LOW HIGH
    lsj         large-scale jitter (Ghiasi et al., 2021): scaled by 0.1-2 x, then cropped or
                padded to a --min-size square; and a flip
    topdown     both flips and a turn by 0, 90, 180 or 270 degrees: for pictures taken from
                above (plants, cells, aerial, documents), whose orientation means nothing

Every training preset ends by setting each box to the box of its mask (COCO's convention),
since resampling moves masks and boxes a little apart, and by dropping instances that a
transform left without pixels. The image becomes float in [0, 1]. Geometric presets leave
`area` as it was before the transform: training does not use it, and evaluation uses "none".
Last, a training image is resized to the size the model sees (ResizeForModel: the model's own
resize, done here, so the model skips it in training), and only there does an instance map
(masks.py) become per-instance masks: a 12-megapixel photo's 300 instances cost their pixels
at 1067 x 800, not at 4000 x 3000. Every step moves the map exactly as it moves each mask.

Keypoints (N x K x 3: x, y, visibility) move as points; a flip also swaps their labels through
the dataset's flip permutation (keypoints.py: a mirrored left wrist is a right wrist), and a
point that a crop leaves outside the image becomes unlabelled (0, 0, 0), as COCO writes one.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.models.detection.transform import resize_boxes, resize_keypoints
from torchvision.transforms import v2 as T

from dataset import boxes_of_masks
from keypoints import labelled_inside
from masks import InstanceMap, boxes_of_index_maps, keep, split
from utils import collate_fn

AUGMENTATIONS = ("hflip", "none", "ssd", "ssdlite", "multiscale", "lsj", "topdown")
IMAGENET_MEAN_PIXEL = (124, 116, 104)  # what padding shows: the mean colour, as torchvision's presets pad


MULTISCALE_RANGE = (0.6, 1.0)  # multiscale's shorter sides, times --min-size: torchvision's 480-800 of 800


def train_sizes(augmentation: str, min_size: int, scale_range: tuple[float, float] | None = None) -> tuple[int, ...]:
    """The shorter sides the model resizes training images to (one is drawn per image); it evaluates at the last.

    From scale_range[0] x `min_size` up in steps of 32 pixels below `min_size`, and from `min_size` + 32 up to
    scale_range[1] x `min_size` above it, as Detectron2's ResizeShortestEdge draws them (multiscale: MULTISCALE_RANGE;
    other presets: `min_size` alone), `min_size` last.
    """
    low, high = scale_range or (MULTISCALE_RANGE if augmentation == "multiscale" else (1.0, 1.0))
    below = range(int(min_size * low), min_size, 32)
    above = range(min_size + 32, int(min_size * high) + 1, 32)
    return (*below, *above, min_size)


class RandomFlip(torch.nn.Module):
    """Mirror the image and all on it, left-right (or top-bottom), half of the time; keypoints then take
    the labels of their mirror points: `keypoint_flip[k]` is the point whose label point k takes."""

    def __init__(self, vertical: bool = False, keypoint_flip: list[int] | None = None) -> None:
        super().__init__()
        self.kernel = T.functional.vertical_flip if vertical else T.functional.horizontal_flip
        self.keypoint_flip = keypoint_flip

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if torch.rand(1) >= 0.5:  # as T.RandomHorizontalFlip(0.5) draws
            return image, target
        image = self.kernel(image)  # image, boxes, masks and keypoints (tv_tensors) flip; labels and the like do not
        target = {key: self.kernel(v) if isinstance(v, tv_tensors.TVTensor) else v for key, v in target.items()}
        if "keypoints" in target:
            if self.keypoint_flip is None:  # never train on mirrored labels
                raise ValueError("keypoints cannot be flipped without a flip permutation (keypoints.flip_permutation)")
            points = target["keypoints"]
            target["keypoints"] = tv_tensors.wrap(points[:, self.keypoint_flip], like=points)
            target[VISIBILITY] = target[VISIBILITY][:, self.keypoint_flip]
        return image, target


class RandomRot90(torch.nn.Module):
    """Turn the image, its masks, boxes and keypoints by 0, 90, 180 or 270 degrees (counter-clockwise), exactly."""

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        turns = int(torch.randint(4, ()))
        if turns == 0:
            return image, target
        height, width = image.shape[-2:]
        image = tv_tensors.wrap(torch.rot90(image, turns, dims=(-2, -1)), like=image)
        target = dict(target)
        if "masks" in target:
            masks = torch.rot90(target["masks"], turns, dims=(-2, -1))
            target["masks"], boxes = tv_tensors.Mask(masks), boxes_of_masks(masks)
        elif "instance_map" in target:
            instance_map = InstanceMap(torch.rot90(target["instance_map"], turns, dims=(-2, -1)))
            target["instance_map"], boxes = instance_map, boxes_of_index_maps(instance_map, len(target["labels"]))
        else:  # boxes alone, turned exactly as the pixels they cover (x2, y2: one past the last column, row)
            boxes = target["boxes"].as_subclass(torch.Tensor)
            for _ in range(turns):  # a quarter turn: column x becomes row width - 1 - x, row y becomes column y
                x1, y1, x2, y2 = boxes.unbind(-1)
                boxes = torch.stack([y1, width - x2, y2, width - x1], dim=-1)
                height, width = width, height
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=image.shape[-2:])
        if "keypoints" in target:
            points, (height, width) = target["keypoints"].as_subclass(torch.Tensor), target["keypoints"].canvas_size
            for _ in range(turns):  # a quarter turn: pixel (x, y) goes to (y, width - 1 - x)
                points = torch.stack([points[..., 1], width - 1 - points[..., 0]], dim=-1)
                height, width = width, height
            target["keypoints"] = tv_tensors.KeyPoints(points, canvas_size=(height, width))
        return image, target


VISIBILITY = "keypoint_visibility"  # where the keypoints' third column waits while their x, y move as points


class KeypointsAsPoints(torch.nn.Module):
    """Before the geometric steps: the N x K x 3 keypoints as tv_tensors.KeyPoints (x, y), visibility aside."""

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if "keypoints" in target:
            keypoints = target["keypoints"]
            target = {**target, VISIBILITY: keypoints[..., 2]}
            target["keypoints"] = tv_tensors.KeyPoints(keypoints[..., :2], canvas_size=image.shape[-2:])
        return image, target


class PointsAsKeypoints(torch.nn.Module):
    """After them: N x K x 3 keypoints again; a point now outside the image becomes unlabelled (0, 0, 0)."""

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if VISIBILITY in target:
            target = dict(target)
            visibility, canvas_size = target.pop(VISIBILITY), target["keypoints"].canvas_size
            points = torch.cat([target["keypoints"].as_subclass(torch.Tensor), visibility[..., None]], dim=-1)
            target["keypoints"] = points * labelled_inside(points, *canvas_size)[..., None]
        return image, target


class BoxesFromMasks(torch.nn.Module):
    """Set every box to the box of its mask, so that the two agree after any resampling."""

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if "masks" in target or "instance_map" in target:
            if "masks" in target:
                boxes = boxes_of_masks(target["masks"])
            else:
                boxes = boxes_of_index_maps(target["instance_map"], len(target["labels"]))
            target = {**target, "boxes": tv_tensors.wrap(boxes.to(target["boxes"].dtype), like=target["boxes"])}
        return image, target


class SanitizeInstances(T.SanitizeBoundingBoxes):
    """torchvision's SanitizeBoundingBoxes (boxes without area or outside the image go, with their labels and
    other per-instance values), which renumbers an InstanceMap's instances rather than indexing its layers."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, InstanceMap):
            return keep(inpt, params["valid"])
        base = super()
        return base.transform(inpt, params) if hasattr(base, "transform") else base._transform(inpt, params)

    _transform = transform  # the name torchvision calls before 0.21


class ResizeForModel(torch.nn.Module):
    """The model's own resize, done here so that an InstanceMap is split into masks at the size the model sees,
    not at the photo's (Detectron2 resizes in its data pipeline too). As torchvision's GeneralizedRCNNTransform
    does it: the shorter side to one of `min_sizes` (drawn as its torch_choice draws), the longer at most
    `max_size`; the image bilinear, masks nearest, boxes and keypoints scaled. The model then skips its own
    resize in training (model.resizes_in_data)."""

    def __init__(self, min_sizes: tuple[int, ...], max_size: int) -> None:
        super().__init__()
        self.min_sizes, self.max_size = tuple(min_sizes), max_size

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        side = self.min_sizes[int(torch.empty(1).uniform_(0.0, float(len(self.min_sizes))).item())]
        height, width = image.shape[-2:]
        scale = min(side / min(height, width), self.max_size / max(height, width))
        resize = partial(torch.nn.functional.interpolate, scale_factor=scale, recompute_scale_factor=True)
        image = tv_tensors.wrap(resize(image[None], mode="bilinear", align_corners=False)[0], like=image)
        size = tuple(image.shape[-2:])
        target = dict(target)
        boxes = resize_boxes(target["boxes"].as_subclass(torch.Tensor), (height, width), size)
        target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size)
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(torch.as_tensor(target["keypoints"]), (height, width), size)
        if "masks" in target:  # nearest, from float, as torchvision's resize does
            target["masks"] = tv_tensors.Mask(resize(target["masks"][:, None].float())[:, 0].byte())
        if "instance_map" in target:  # the same pixels as each mask resized alone: float holds ints to 2**24
            instance_map = resize(target.pop("instance_map")[None].float())[0].to(torch.int32)
            target["masks"] = split(instance_map, len(target["labels"]))
        return image, target


class SplitInstances(torch.nn.Module):
    """An InstanceMap as N x H x W masks at the size it has: for models that resize in training themselves."""

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
        if "instance_map" in target:
            target = dict(target)
            target["masks"] = split(target.pop("instance_map"), len(target["labels"]))
        return image, target


def copy_paste(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Simple Copy-Paste (Ghiasi et al., 2021), as torchvision's references apply it to a training batch.

    Each image receives a random subset of the instances of the batch's previous image,
    blended in through a Gaussian-blurred mask (sigma 2); what they cover is cut from the
    image's own masks, and instances left without a pixel are dropped. Images must be of
    one size (--augmentation lsj makes them so); others are left as they are.
    """
    pasted_batch = []
    for index, (image, target) in enumerate(batch):
        source_image, source = batch[index - 1]
        keep = torch.rand(len(source["masks"])) < 0.5
        if len(batch) < 2 or source_image.shape != image.shape or not keep.any():
            pasted_batch.append((image, target))
            continue
        pasted = source["masks"][keep].bool()
        cover = pasted.any(dim=0)
        alpha = T.functional.gaussian_blur(cover[None].float(), kernel_size=[5, 5], sigma=[2.0, 2.0])
        image = image * (1 - alpha) + source_image * alpha
        own = target["masks"].bool() & ~cover
        visible = own.flatten(1).any(dim=1)
        masks = torch.cat([own[visible], pasted]).to(torch.uint8)
        if "keypoints" in target:  # the pasted objects bring their points; points under them stay labelled
            target = {**target, "keypoints": torch.cat([target["keypoints"][visible], source["keypoints"][keep]])}
        pasted_target = {
            **target,
            "masks": masks,
            "boxes": boxes_of_masks(masks),
            "labels": torch.cat([target["labels"][visible], source["labels"][keep]]),
            "area": masks.sum(dim=(1, 2), dtype=torch.float32),
            "iscrowd": torch.cat([target["iscrowd"][visible], source["iscrowd"][keep]]),
        }
        pasted_batch.append((image, pasted_target))
    return pasted_batch


def copy_paste_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tuple, tuple]:
    """The DataLoader's collate_fn with --use-copypaste: copy_paste, then the usual lists."""
    return collate_fn(copy_paste(batch))


def _per_instance_fields(sample: tuple) -> tuple[torch.Tensor, ...]:
    """The per-instance tensors that SanitizeBoundingBoxes must filter along with the boxes."""
    target = sample[1]
    return tuple(target[key] for key in ("labels", "area", "iscrowd", "keypoints") if key in target)


def get_transform(
    train: bool,
    augmentation: str = "hflip",
    size: int = 800,
    keypoint_flip: list[int] | None = None,
    model_sizes: tuple[tuple[int, ...], int] | None = None,
) -> T.Compose:
    """The transform for training (`train=True`, with `augmentation`) or for evaluation (no augmentation).

    size: the model's --min-size, which lsj crops to. keypoint_flip: for a dataset with keypoints, the
    flip permutation (keypoints.flip_permutation); without it a flip of keypoints is an error.
    model_sizes: (the model's shorter sides, its longest side): training images end at the model's size
    (ResizeForModel), where an InstanceMap becomes masks; None: at their own size, which the model resizes.
    Evaluation keeps the images' size and an InstanceMap, which evaluation encodes at the photo's size.
    See the module docstring for the presets.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    pad = {tv_tensors.Image: IMAGENET_MEAN_PIXEL, "others": 0}
    flip = RandomFlip(keypoint_flip=keypoint_flip)
    presets: dict[str, list[Any]] = {
        "none": [],
        "hflip": [flip],
        "multiscale": [flip],  # ResizeForModel draws the scale: train_sizes()
        "ssd": [T.RandomPhotometricDistort(p=0.5), T.RandomZoomOut(fill=pad), T.RandomIoUCrop(), flip],
        "ssdlite": [T.RandomIoUCrop(), flip],
        "lsj": [T.ScaleJitter((size, size), scale_range=(0.1, 2.0), antialias=True),
                T.RandomCrop((size, size), pad_if_needed=True, fill=pad), flip],
        "topdown": [flip, RandomFlip(vertical=True, keypoint_flip=keypoint_flip), RandomRot90()],
    }  # fmt: skip
    steps = [KeypointsAsPoints(), *presets[augmentation], BoxesFromMasks(), PointsAsKeypoints()] if train else []
    steps += [T.ToDtype(torch.float32, scale=True), SanitizeInstances(labels_getter=_per_instance_fields)]
    if train:  # the instances are split last, at the size the model sees
        steps.append(ResizeForModel(*model_sizes) if model_sizes is not None else SplitInstances())
    return T.Compose([*steps, T.ToPureTensor()])
