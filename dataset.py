"""Datasets: files on disk turned into (image, target) pairs.

The target contract (every dataset here returns it; the README points to it):

    image   tv_tensors.Image, uint8, 3 x H x W (RGB), before transforms
    target  dict with
        boxes     tv_tensors.BoundingBoxes, XYXY, float32, N x 4, in pixels; COCO's
                  convention: x2 = last column + 1, as pycocotools' mask.toBbox gives
        labels    int64, N, class indices 1..K (0 is the background)
        image_id  int, unique within the dataset
        area      float32, N, pixels in each mask (COCO's area; the box's, without outlines)
        iscrowd   int64, N, 0 for ordinary instances; 1 for regions evaluation ignores (COCO's
                  crowd, VOC's difficult), which training leaves out
    and, where the data has outlines and the model learns masks (`masks` True), one of
        masks         tv_tensors.Mask, uint8, N x H x W, values 0 or 1: the tutorial's form, N x H x W bytes
        instance_map  masks.InstanceMap, int32, L x H x W: pixel value k marks instance k (the k-th row of
                      boxes, labels, ..., from 1), 0 none; overlapping instances lie in different layers.
                      The datasets here return this: one int32 image per layer whatever N, where a
                      12-megapixel photo with 300 instances would be 3.6 GB as masks. The training
                      transform splits it into `masks` at the size the model sees (transforms.py).
    and, for a dataset with keypoints (K named points per instance, `keypoint_names`),
        keypoints float32, N x K x 3: x, y in pixels (COCO's: the pixel's column and row)
                  and visibility (0 unlabelled, with x = y = 0; 1 labelled but hidden; 2 visible)

N may be 0: an image without instances yields boxes 0 x 4, masks 0 x H x W (a map of zeros), and so on.
Box models (Faster R-CNN, RetinaNet, ...) never need masks: a dataset read for one (`masks`
False) leaves them out, also where the files have outlines, so a large photo with many
objects costs no N x H x W stack. Which data has outlines: mask folders, COCO with
`segmentation`, Ultralytics polygon labels; boxes only: COCO without `segmentation`,
Ultralytics detection labels, Pascal VOC.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from image_io import image_size, read_image, read_instance_mask, refuse_lossy_masks
from masks import InstanceMap, boxes_of_index_maps, index_label_image
from utils import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
PENNFUDAN_IMAGES = 170


def boxes_of_masks(masks: torch.Tensor) -> torch.Tensor:
    """N x 4 float32 XYXY boxes of N x H x W masks, in COCO's convention (x2 = last column + 1); 0s for an empty one."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(dim=2).to(torch.uint8), masks.any(dim=1).to(torch.uint8)  # N x H, N x W: touched or not
    # The first touched index, and one past the last (argmax finds the first maximum).
    y1, y2 = rows.argmax(dim=1), height - rows.flip(1).argmax(dim=1)
    x1, x2 = cols.argmax(dim=1), width - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32).reshape(-1, 4)
    boxes[rows.sum(dim=1) == 0] = 0
    return boxes


def masks_to_target(instance_mask: np.ndarray, image_id: int, masks: bool = True) -> dict[str, Any]:
    """The target of an instance-label image: boxes (COCO's convention) and areas from one pass over it, and with
    `masks` its InstanceMap, the instances numbered in the order of their values. No N x H x W stack is made."""
    height, width = instance_mask.shape
    index, pixels = index_label_image(instance_mask)
    n = len(pixels)
    target: dict[str, Any] = {"labels": torch.ones(n, dtype=torch.int64), "image_id": image_id}
    boxes = boxes_of_index_maps(torch.from_numpy(index)[None], n)
    target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    target.update(area=torch.from_numpy(pixels.astype(np.float32)), iscrowd=torch.zeros(n, dtype=torch.int64))
    if masks:
        target["instance_map"] = InstanceMap(torch.from_numpy(index)[None])
    return target


def _files_by_key(folder: Path, suffix: str, exclude_suffix: str | None = None) -> dict[str, Path]:
    """Image files in `folder` whose stem ends with `suffix`, keyed by the stem without it."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        stem = path.stem
        if not stem.endswith(suffix) or (exclude_suffix and stem.endswith(exclude_suffix)):
            continue
        key = stem[: len(stem) - len(suffix)] if suffix else stem
        if key in files:
            raise UserError(f"{path}: {files[key].name} has the same name; keep one of the two")
        files[key] = path
    return files


class InstanceDataset(torch.utils.data.Dataset):
    """What every dataset here has, and all that train.py, the checks and the split rely on.

    Attributes: `classes` (names, "background" first), `category_ids` (the dataset's own id
    of each class 1..K, for COCO results files), `image_paths`, `image_dir` (the folder that
    split.json names images relative to), `image_ids` (the dataset's own id of each image;
    a target's image_id is the image's index), `problems` (with strict=False: what would
    have stopped the run), `warnings` (what a run and `dataset.py check` print but read past), `transforms`;
    `keypoint_names` (empty: no keypoints) and `skeleton` (pairs of keypoint indices joined when drawn);
    `masks` (whether targets carry masks). Subclasses write `load`, `annotation_path`, and `outlines` where
    some data has no outline. The target contract: the module docstring.
    """

    masks = True
    warnings: list[str] = []
    keypoint_names: list[str] = []
    skeleton: list[tuple[int, int]] = []
    classes: list[str]
    category_ids: list[int]
    image_paths: list[Path]
    image_dir: Path
    image_ids: list[int]
    problems: list[str]
    transforms: Callable | None

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.load(idx)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def load(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample `idx` before transforms, as the module docstring's contract says; a UserError names a bad file."""
        raise NotImplementedError

    def annotation_path(self, idx: int) -> Path:
        """The file that holds image `idx`'s instances (a mask, a label file, a json): what a report names."""
        raise NotImplementedError

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """(height, width) of image `idx` as read_image turns it, from its header alone: no pixel is decoded."""
        return image_size(self.image_paths[idx])

    def _problem(self, message: str, strict: bool) -> None:
        """Raise a dataset problem (strict, for training) or collect it in `problems` (for `dataset.py check`)."""
        if strict:
            raise UserError(message)
        self.problems.append(message)

    def annotation_warnings(self) -> list[str]:
        """What `dataset.py check` warns of in the annotations beyond each sample's own reading: none here."""
        return []

    def trains_on(self, idx: int) -> bool:
        """Whether image `idx` may be a training image (a COCO file also lists images nobody labelled)."""
        return True

    def outlines(self) -> str:
        """Whether the data outlines its instances: "all", "some" (mixed data), or "none" (boxes only)."""
        return "all"


class MaskFolderDataset(InstanceDataset):
    """Images and instance-mask PNGs paired by name: `<key><image_suffix>.<ext>` with `<key><mask_suffix>.png`.

    The two folders may be one folder. Every mask value other than 0 is one instance,
    of class 1. See the module docstring for the target contract.
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        image_suffix: str = "",
        mask_suffix: str = "_mask",
        transforms: Callable | None = None,
        strict: bool = True,
        masks: bool | None = True,
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        self.masks = masks is not False  # masks False: boxes alone, for a box model
        self.problems: list[str] = []  # with strict=False: what would have raised, for `dataset.py check`
        for folder, what in ((self.image_dir, "image"), (self.mask_dir, "mask")):
            if not folder.is_dir():
                raise UserError(f"{folder}: {what} folder not found; check --data-path and the dataset layout")
        if image_suffix == mask_suffix:
            raise UserError("--image-suffix and --mask-suffix must differ")
        same_folder = self.image_dir.resolve() == self.mask_dir.resolve()
        images = _files_by_key(self.image_dir, image_suffix, mask_suffix if same_folder else None)
        masks = _files_by_key(self.mask_dir, mask_suffix)
        if not images:
            raise UserError(f"{self.image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; check --data-path")
        if not masks:
            raise UserError(
                f"{self.mask_dir}: no masks named <name>{mask_suffix}.png; set --mask-path and --mask-suffix to "
                "where your masks are and how they are named"
            )
        for key, path in images.items():
            if key not in masks:
                message = f"{path}: no mask {key}{mask_suffix}.png in {self.mask_dir}; add one or remove it"
                self._problem(message, strict)
        for key, path in masks.items():
            if key not in images:
                message = f"{path}: mask without an image {key}{image_suffix}.* in {self.image_dir}; add or remove one"
                self._problem(message, strict)
        self.keys = sorted(images.keys() & masks.keys())
        self.image_paths = [images[k] for k in self.keys]
        self.mask_paths = [masks[k] for k in self.keys]
        refuse_lossy_masks(self.mask_paths)  # before any instance is counted
        self.transforms = transforms
        self.classes = ["background", "object"]
        self.category_ids = [1]  # the dataset's own id of each class 1..K, for COCO results files
        self.image_ids = list(range(len(self.keys)))  # the dataset's own id of each image: its index here

    def load(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample `idx` before transforms; a UserError names the file if it is broken."""
        image = read_image(self.image_paths[idx])
        instance_mask = read_instance_mask(self.mask_paths[idx])
        if instance_mask.shape != tuple(image.shape[-2:]):
            raise UserError(
                f"{self.mask_paths[idx]}: mask is {instance_mask.shape[1]}x{instance_mask.shape[0]} but its image "
                f"{self.image_paths[idx].name} is {image.shape[-1]}x{image.shape[-2]}; masks must match their image"
            )
        return image, masks_to_target(instance_mask, image_id=idx, masks=self.masks)

    def annotation_path(self, idx: int) -> Path:
        return self.mask_paths[idx]


class PennFudanDataset(MaskFolderDataset):
    """The Penn-Fudan pedestrians: `PNGImages/X.png` with `PedMasks/X_mask.png`, class 1 = person."""

    def __init__(
        self, root: str | Path, transforms: Callable | None = None, strict: bool = True, masks: bool | None = True
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: no such folder; pass --download to fetch Penn-Fudan there, or check --data-path")
        super().__init__(root / "PNGImages", root / "PedMasks", "", "_mask", transforms, strict, masks)
        self.classes = ["background", "person"]


def download_pennfudan(root: str | Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download and unzip Penn-Fudan so that `root` holds PNGImages/ and PedMasks/; check all 170 pairs arrived."""
    root, url = Path(root), url or PENNFUDAN_URL
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".pennfudan-") as tmp:
        archive = Path(tmp) / "PennFudanPed.zip"
        print(f"Downloading {url} ...", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(
                f"could not download {url} ({reason}); download and unzip it by hand so that "
                f"{root} holds PNGImages/ and PedMasks/"
            ) from error
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(Path(tmp) / "unzipped")
        except zipfile.BadZipFile as error:
            raise UserError(f"{url}: the download is not a valid zip ({error}); try again") from error
        found = [p.parent for p in (Path(tmp) / "unzipped").rglob("PNGImages") if (p.parent / "PedMasks").is_dir()]
        if not found:
            raise UserError(f"{url}: the zip holds no PNGImages/ and PedMasks/ folders")
        images = len(list((found[0] / "PNGImages").glob("*.png")))
        masks = len(list((found[0] / "PedMasks").glob("*_mask.png")))
        if images != PENNFUDAN_IMAGES or masks != PENNFUDAN_IMAGES:
            raise UserError(
                f"{url}: expected {PENNFUDAN_IMAGES} images and {PENNFUDAN_IMAGES} masks, got {images} and {masks}; "
                "the download is incomplete, try again"
            )
        if root.exists():
            raise UserError(f"{root}: already exists; remove it or choose another --data-path")
        found[0].rename(root)
    print(f"Penn-Fudan is in {root} ({images} images)", flush=True)
    return root


if __name__ == "__main__":  # python dataset.py check|show: the commands, and the flags they share, are dataset_cli.py's
    from dataset_cli import main

    raise SystemExit(main())
