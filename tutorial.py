"""The tutorial's code, as "TorchVision Object Detection Finetuning" writes it, kept as the baseline that
bench.py times ours against (https://pytorch.org/tutorials/intermediate/torchvision_tutorial.html).

Nothing in training uses this file: it is here so that "faster than the tutorial" and "better
than the tutorial" are measured against the tutorial's own dataset class, transforms, loop and
evaluation, not against our idea of them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode
from torchvision.io import read_image as torchvision_read_image
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

import utils
from coco_eval import coco_detections, coco_ground_truth, score_detections

# torchvision 0.29 deprecates its image decoders (for TorchCodec); the tutorial still uses them.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision are deprecated")


class TutorialDataset(torch.utils.data.Dataset):
    """The tutorial's PennFudanDataset.__getitem__ as published today, over our image and mask paths."""

    def __init__(self, image_paths: list, mask_paths: list, transforms: Any) -> None:
        self.image_paths, self.mask_paths, self.transforms = image_paths, mask_paths, transforms

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        img = torchvision_read_image(str(self.image_paths[idx]), ImageReadMode.RGB)  # RGB: some PNGs have alpha
        mask = torchvision_read_image(str(self.mask_paths[idx]))
        obj_ids = torch.unique(mask)[1:]
        num_objs = len(obj_ids)
        masks = (mask == obj_ids[:, None, None]).to(dtype=torch.uint8)
        boxes = masks_to_boxes(masks)
        area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
        img = tv_tensors.Image(img)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=F.get_size(img)),
            "masks": tv_tensors.Mask(masks),
            "labels": torch.ones((num_objs,), dtype=torch.int64),
            "image_id": idx,
            "area": area,
            "iscrowd": torch.zeros((num_objs,), dtype=torch.int64),
        }
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target


class Tutorial2019Dataset(TutorialDataset):
    """The tutorial's __getitem__ as first published: PIL, and np.where for each instance's box."""

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        img = Image.open(self.image_paths[idx]).convert("RGB")
        mask = np.array(Image.open(self.mask_paths[idx]))
        obj_ids = np.unique(mask)[1:]
        masks = mask == obj_ids[:, None, None]
        boxes = []
        for i in range(len(obj_ids)):
            pos = np.where(masks[i])
            boxes.append([np.min(pos[1]), np.min(pos[0]), np.max(pos[1]), np.max(pos[0])])
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # the original fails without instances
        image = tv_tensors.Image(F.pil_to_tensor(img))
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=F.get_size(image)),
            "masks": tv_tensors.Mask(torch.as_tensor(masks, dtype=torch.uint8)),
            "labels": torch.ones((len(obj_ids),), dtype=torch.int64),
            "image_id": idx,
            "area": (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0]),
            "iscrowd": torch.zeros((len(obj_ids),), dtype=torch.int64),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def tutorial_transform() -> T.Compose:
    """The tutorial's get_transform(train=True)."""
    return T.Compose([T.RandomHorizontalFlip(0.5), T.ToDtype(torch.float, scale=True), T.ToPureTensor()])


@torch.inference_mode()
def evaluate_like_the_tutorial(model: torch.nn.Module, loader: Any, device: torch.device) -> dict[str, Any]:
    """torchvision's reference evaluate, in cost: one thread, ground truth from a second pass over the data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()
        ground_truth = {}  # convert_to_coco_api: decode, build and transform every test image once more
        for index in range(len(loader.dataset)):
            image, target = loader.dataset[index]
            ground_truth[int(target["image_id"])] = coco_ground_truth(
                int(target["image_id"]), image.shape[-2], image.shape[-1], target
            )
        per_image = []
        for images, targets in loader:
            outputs = model([image.to(device) for image in images])
            for target, output in zip(targets, outputs, strict=True):
                image_id = int(target["image_id"])
                output = {k: v.cpu() for k, v in output.items()}
                per_image.append((*ground_truth[image_id], coco_detections(image_id, output)))
        return score_detections(sorted(per_image, key=lambda item: item[0]["id"]), None)
    finally:
        torch.set_num_threads(threads)


def train_like_the_tutorial(model: torch.nn.Module, optimizer: Any, loader: Any, device: torch.device) -> None:
    """One epoch of the tutorial's loop (torchvision's reference train_one_epoch on one process)."""
    model.train()
    warmup_iters = min(1000, len(loader) - 1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / 1000, total_iters=max(warmup_iters, 1))
    for images, targets in loader:
        images = list(image.to(device) for image in images)
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        loss_value = losses.item()
        if not np.isfinite(loss_value):
            raise utils.UserError(f"the tutorial's loop diverged (loss {loss_value}); lower --lr")
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        warmup.step()


def tutorial_readable(ours: Any) -> list[int]:
    """The samples in which the tutorial's __getitem__ finds the instances ours does, each with a box of positive
    width and height. torchvision.io misreads 4-bit palette PNGs (46 of CVPPP's 128 masks), and the tutorial's
    masks_to_boxes gives an instance one pixel wide or high a box of zero width or height."""
    tutorial = TutorialDataset(ours.image_paths, ours.mask_paths, None)
    usable = []
    for idx in range(len(ours)):
        theirs = tutorial[idx][1]["boxes"]
        if len(theirs) == len(ours.load(idx)[1]["boxes"]) and bool((theirs[:, 2:] > theirs[:, :2]).all()):
            usable.append(idx)
    return usable
