"""Datasets: files on disk turned into (image, target) pairs.

The target contract (every dataset here returns it; the README points to it):

    image   tv_tensors.Image, uint8, 3 x H x W (RGB), before transforms
    target  dict with
        boxes     tv_tensors.BoundingBoxes, XYXY, float32, N x 4, in pixels; COCO's
                  convention: x2 = last column + 1, as pycocotools' mask.toBbox gives
        labels    int64, N, class indices 1..K (0 is the background)
        masks     tv_tensors.Mask, uint8, N x H x W, values 0 or 1
        image_id  int, unique within the dataset
        area      float32, N, pixels in each mask (COCO's area)
        iscrowd   int64, N, 0 for ordinary instances

N may be 0: an image without instances yields boxes 0 x 4, masks 0 x H x W, and so on.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from utils import UserError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
PENNFUDAN_IMAGES = 170


def read_image(path: Path) -> tv_tensors.Image:
    """Decode any image PIL reads (grayscale, palette, RGBA, 16-bit) into uint8 RGB, 3 x H x W, upright.

    A photo whose pixels are stored turned, with an EXIF Orientation tag (phones do this), is
    turned as every viewer and labelling tool shows it, so that masks drawn on it fit.
    """
    try:
        with Image.open(path) as img:
            return tv_tensors.Image(F.pil_to_tensor(ImageOps.exif_transpose(img).convert("RGB")))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL: SyntaxError if broken
        raise UserError(f"{path}: cannot read the image ({error}); replace or remove the file") from error


EXIF_ORIENTATION = 0x0112
TURNED_A_QUARTER = (5, 6, 7, 8)  # the EXIF orientations that swap width and height


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image at `path` as read_image turns it upright, from its header alone."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "PNG":  # PIL decodes a PNG to find an EXIF chunk after the pixels; read the header's only
                exif = Image.Exif()
                exif.load(img.info.get("exif", b""))
            else:
                exif = img.getexif()  # JPEG, TIFF, WebP: in the header
            if exif.get(EXIF_ORIENTATION) in TURNED_A_QUARTER:
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{path}: cannot read the image header ({error}); replace or remove the file") from error
    return height, width


MAX_COLOUR_INSTANCES = 1000  # more colours than this in an RGB mask: a photo, or lossy or anti-aliased edges


def read_instance_mask(path: Path) -> np.ndarray:
    """An instance mask as an H x W integer array: 0 is background, each other value one instance.

    Indexed (palette), grayscale, 16-bit and float masks give their values; RGB(A) masks,
    as many annotation tools export them, give one instance per colour, black the background.
    An EXIF Orientation tag is applied, as read_image applies it.
    """
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw)
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB")).astype(np.int32)
                codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]  # black is 0: background
                colours = len(np.unique(codes))
                if colours > MAX_COLOUR_INSTANCES:
                    raise UserError(
                        f"{path}: an RGB mask with {colours} colours; give each instance one exact colour on black "
                        "and save it as PNG (JPEG and anti-aliasing blend colours)"
                    )
                return codes
            if img.mode == "LA":
                img = img.convert("L")
            if img.mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
                raise UserError(
                    f"{path}: mask is mode {img.mode}; save instance masks as indexed (palette), grayscale, "
                    "16-bit or RGB PNGs where each instance has its own value or colour and 0 (black) is background"
                )
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read the mask ({error}); replace or remove the file") from error


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


def masks_to_target(instance_mask: np.ndarray, image_id: int) -> dict[str, Any]:
    """Split an instance mask into per-instance binary masks with COCO-convention boxes and areas."""
    height, width = instance_mask.shape
    instance_ids = np.unique(instance_mask)
    instance_ids = instance_ids[instance_ids != 0]
    masks = torch.from_numpy((instance_mask[None] == instance_ids[:, None, None]).astype(np.uint8))  # N x H x W
    n = len(instance_ids)
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes_of_masks(masks), format="XYXY", canvas_size=(height, width)),
        "labels": torch.ones(n, dtype=torch.int64),
        "masks": tv_tensors.Mask(masks),
        "image_id": image_id,
        "area": masks.sum(dim=(1, 2), dtype=torch.float32),
        "iscrowd": torch.zeros(n, dtype=torch.int64),
    }


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


def _problem(problems: list[str], message: str, strict: bool) -> None:
    """Raise a dataset problem (strict, for training) or collect it (for `dataset.py check`)."""
    if strict:
        raise UserError(message)
    problems.append(message)


class InstanceDataset(torch.utils.data.Dataset):
    """What every dataset here has, and all that train.py, the checks and the split rely on.

    Attributes: `classes` (names, "background" first), `category_ids` (the dataset's own id
    of each class 1..K, for COCO results files), `image_paths`, `image_dir` (the folder that
    split.json names images relative to), `image_ids` (the dataset's own id of each image;
    a target's image_id is the image's index), `problems` (with strict=False: what would
    have stopped the run), `transforms`. Subclasses write `load` and `annotation_path`.
    """

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

    def trains_on(self, idx: int) -> bool:
        """Whether image `idx` may be a training image (a COCO file also lists images nobody labelled)."""
        return True


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
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
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
                _problem(self.problems, message, strict)
        for key, path in masks.items():
            if key not in images:
                message = f"{path}: mask without an image {key}{image_suffix}.* in {self.image_dir}; add or remove one"
                _problem(self.problems, message, strict)
        self.keys = sorted(images.keys() & masks.keys())
        self.image_paths = [images[k] for k in self.keys]
        self.mask_paths = [masks[k] for k in self.keys]
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
        return image, masks_to_target(instance_mask, image_id=idx)

    def annotation_path(self, idx: int) -> Path:
        return self.mask_paths[idx]


class PennFudanDataset(MaskFolderDataset):
    """The Penn-Fudan pedestrians: `PNGImages/X.png` with `PedMasks/X_mask.png`, class 1 = person."""

    def __init__(self, root: str | Path, transforms: Callable | None = None, strict: bool = True) -> None:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root}: no such folder; pass --download to fetch Penn-Fudan there, or check --data-path")
        super().__init__(root / "PNGImages", root / "PedMasks", "", "_mask", transforms, strict)
        self.classes = ["background", "person"]


# The keys without which pycocotools cannot index a COCO file, or we cannot find and size an image.
COCO_REQUIRED_KEYS = {"images": ("id", "file_name", "height", "width"), "annotations": ("id", "image_id"),
                      "categories": ("id",)}  # fmt: skip


def read_coco(ann_file: Path) -> Any:
    """A pycocotools COCO index of `ann_file`, after checking the structure it relies on."""
    from pycocotools.coco import COCO  # only COCO-format users pay for the import

    try:
        data = json.loads(ann_file.read_bytes())
    except ValueError as error:  # json's and unicode's errors
        raise UserError(f"{ann_file}: not valid json ({error}); check the file is a COCO instances json") from error
    if not isinstance(data, dict):
        raise UserError(
            f"{ann_file}: holds a json {type(data).__name__}, not a COCO object with images and annotations"
        )
    for section, keys in COCO_REQUIRED_KEYS.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise UserError(
                f'{ann_file}: no "{section}" list; COCO instances files have images, annotations, categories'
            )
        for k, entry in enumerate(entries):
            missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
            if missing:
                raise UserError(f'{ann_file}: {section}[{k}] has no "{missing[0]}"; each of {section} needs {keys}')
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


class CocoDataset(InstanceDataset):
    """Images in `image_dir` with COCO instance annotations (polygons, RLE or compressed RLE) in `ann_file`.

    Category ids, whatever they are, become labels 1..K in id order; `classes` holds their
    names after "background" and `category_ids` the json's ids; `image_ids` holds each
    image's json id (a target's image_id is its index here). With `include_crowd=False` (for training), iscrowd regions
    are left out of the targets; evaluation keeps them, flagged, and COCO ignores them.
    See the module docstring for the target contract.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        include_crowd: bool = True,
        strict: bool = True,
    ) -> None:
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.problems: list[str] = []  # with strict=False: what would have raised, for `dataset.py check`
        if not self.image_dir.is_dir():
            raise UserError(f"{self.image_dir}: image folder not found; check --data-path")
        if not self.ann_file.is_file():
            raise UserError(f"{self.ann_file}: annotation file not found; check --ann-file")
        self.coco = read_coco(self.ann_file)
        categories = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        self.label_of = {c["id"]: label for label, c in enumerate(categories, start=1)}
        self.classes = ["background", *(str(c.get("name", c["id"])) for c in categories)]
        self.category_ids = [c["id"] for c in categories]  # label k is category_ids[k - 1]
        self.image_ids = sorted(self.coco.imgs)
        self.image_paths = [self.image_dir / self.coco.imgs[i]["file_name"] for i in self.image_ids]
        # An annotation that cannot become a target makes its image a bad sample: load() raises its problem.
        self.bad_annotations: dict[int, str] = {}
        for annotation in self.coco.anns.values():
            problem = self._annotation_problem(annotation)
            if problem and annotation["image_id"] not in self.bad_annotations:
                self.bad_annotations[annotation["image_id"]] = problem
        found = []
        for i, path in enumerate(self.image_paths):
            if path.is_file():
                found.append(i)
            else:
                _problem(
                    self.problems, f"{path}: listed in {self.ann_file.name} but not found; check --data-path", strict
                )
        self.image_ids = [self.image_ids[i] for i in found]
        self.image_paths = [self.image_paths[i] for i in found]
        self.transforms = transforms
        self.include_crowd = include_crowd

    def trains_on(self, idx: int) -> bool:
        """Only images with an annotation that is not a crowd region: COCO files list unlabelled images too."""
        return any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[self.image_ids[idx]])

    def annotation_path(self, idx: int) -> Path:
        return self.ann_file

    def _annotation_problem(self, annotation: dict[str, Any]) -> str | None:
        """What makes `annotation` unusable, naming the file, the annotation and its image; None if usable."""
        info = self.coco.imgs.get(annotation["image_id"])
        if info is None:
            return None  # of no listed image: never read
        where = f"{self.ann_file}: annotation {annotation['id']} of {info['file_name']}"
        category = annotation.get("category_id")
        if category not in self.label_of:
            return f"{where} has category_id {category}, which is not in categories; add the category or fix it"
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            return f"{where} has bbox {bbox}; COCO boxes are [x, y, width, height]"
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, list):
            if not segmentation:
                return f"{where} has an empty segmentation; give it a polygon or delete the annotation"
            for polygon in segmentation:
                if not isinstance(polygon, list) or len(polygon) % 2:
                    return f"{where} has a polygon {str(polygon)[:40]}; polygons are [x1, y1, x2, y2, ...] lists"
                if len(polygon) < 6:
                    return f"{where} has a polygon of {len(polygon) // 2} points; a polygon needs 3 or more"
        elif isinstance(segmentation, dict):
            if segmentation.get("size") != [info["height"], info["width"]] or "counts" not in segmentation:
                return (
                    f"{where} has an RLE of size {segmentation.get('size')} for an image of "
                    f"height {info['height']} and width {info['width']}; fix its size or counts"
                )
        else:
            return f'{where} has no "segmentation" (polygons or RLE): Mask R-CNN learns from masks'
        return None

    def load(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample `idx` before transforms; a UserError names the file if it or an annotation of it is broken."""
        if self.image_ids[idx] in self.bad_annotations:
            raise UserError(self.bad_annotations[self.image_ids[idx]])
        image = read_image(self.image_paths[idx])
        height, width = image.shape[-2:]
        info = self.coco.imgs[self.image_ids[idx]]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise UserError(
                f"{self.ann_file}: image {info['file_name']} is {width}x{height} but the file says "
                f"{info['width']}x{info['height']}; fix the annotation"
            )
        annotations = [
            a for a in self.coco.imgToAnns[self.image_ids[idx]] if self.include_crowd or not a.get("iscrowd", 0)
        ]
        masks = np.zeros((len(annotations), height, width), np.uint8)
        boxes = np.zeros((len(annotations), 4), np.float32)
        for k, annotation in enumerate(annotations):
            masks[k] = self.coco.annToMask(annotation)
            x, y, w, h = annotation["bbox"]
            boxes[k] = [x, y, x + w, y + h]
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "image_id": idx,
            "area": torch.tensor(
                [a.get("area", m.sum()) for a, m in zip(annotations, masks, strict=True)], dtype=torch.float32
            ),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in annotations], dtype=torch.int64),
        }
        return image, target

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """(height, width) of image `idx` from the annotation file."""
        info = self.coco.imgs[self.image_ids[idx]]
        return info["height"], info["width"]


DATASETS = ("pennfudan", "folder", "coco", "yolo")


def get_dataset(
    name: str | None,
    data_path: str | Path,
    transforms: Callable | None = None,
    image_suffix: str = "",
    mask_suffix: str = "_mask",
    mask_path: str | Path | None = None,
    ann_file: str | Path | None = None,
    include_crowd: bool = True,
    strict: bool = True,
    part: str = "train",
) -> InstanceDataset:
    """The dataset `name` at `data_path`; name None infers it: coco with `ann_file`, yolo for a data.yaml or a
    folder of images/ and labels/, Penn-Fudan's layout (or no folder yet), else "folder".

    "folder": images in `data_path`, instance masks in `mask_path` (default: the same
    folder), paired by `<key><image_suffix>.<ext>` and `<key><mask_suffix>.png`.
    "coco": images in `data_path`, annotations in `ann_file`.
    "yolo": an Ultralytics segmentation dataset (yolo_utils.py); `part` "train" or "val".
    """
    from yolo_utils import is_yolo_source, yolo_dataset  # it builds on this module's reader and contract

    data_path = Path(data_path)
    if name is None and ann_file:
        name = "coco"
    if name is None and is_yolo_source(data_path):
        name = "yolo"
    if name == "yolo":
        return yolo_dataset(data_path, part, transforms, strict)
    if name == "coco":
        if not ann_file:
            raise UserError("--dataset coco needs --ann-file PATH: the COCO instances json")
        return CocoDataset(data_path, ann_file, transforms, include_crowd, strict)
    if name is None and not data_path.exists():
        if data_path.name.lower() != "pennfudanped":  # only a Penn-Fudan path can be downloaded
            raise UserError(f"{data_path}: no such folder; check --data-path")
        name = "pennfudan"
    if name is None:
        is_pennfudan = (data_path / "PNGImages").is_dir() or (data_path / "PedMasks").is_dir()  # one may be missing
        name = "pennfudan" if is_pennfudan else "folder"
    if name == "pennfudan":
        return PennFudanDataset(data_path, transforms, strict)
    if name == "folder":
        return MaskFolderDataset(data_path, mask_path or data_path, image_suffix, mask_suffix, transforms, strict)
    raise UserError(f"--dataset {name}: unknown; choose one of {', '.join(DATASETS)}")


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


def split_indices(num_images: int, test_size: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split into (train, test) indices, each sorted; the same seed gives the same split."""
    if not 0 < test_size < num_images:
        raise UserError(f"--test-size {test_size}: must be at least 1 and below the {num_images} images in the dataset")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:-test_size]), sorted(order[-test_size:])


def sample_names(dataset: Any, indices: list[int]) -> list[str]:
    """How split.json names samples: each image's path relative to the dataset's image folder."""
    return [dataset.image_paths[i].relative_to(dataset.image_dir).as_posix() for i in indices]


def indices_of(dataset: Any, names: list[str]) -> tuple[list[int], list[str]]:
    """The indices of the samples sample_names() named, and the names not in `dataset` now.

    A bare file name (as older split.json files hold) also matches a file in a subfolder,
    if only one file has that name.
    """
    all_names = sample_names(dataset, list(range(len(dataset.image_paths))))
    index = {name: i for i, name in enumerate(all_names)}
    by_file_name = Counter(Path(name).name for name in all_names)
    for i, name in enumerate(all_names):
        if by_file_name[Path(name).name] == 1:
            index.setdefault(Path(name).name, i)
    found = [index[name] for name in names if name in index]
    return found, [name for name in names if name not in index]


# ---------------------------------------------------------------------------
# The dataset flags train.py shares, and `python dataset.py check`.

MIN_INSTANCE_AREA = 16  # pixels; smaller instances all but vanish at the backbone's stride of 4 and more


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and read a dataset, for train.py and `dataset.py check` alike."""
    add = parser.add_argument
    add("--data-path", default="PennFudanPed", help="dataset folder, image folder or data.yaml (default: %(default)s)")
    add("--dataset", choices=DATASETS, help="pennfudan, folder, coco or yolo (default: inferred from the paths)")
    add("--mask-path", help="with --dataset folder: the instance-mask folder (default: --data-path)")
    add("--image-suffix", default="", help="with --dataset folder: image names end <key><suffix>.png/.jpg")
    add("--mask-suffix", default="_mask", help="with --dataset folder: mask names end <key><suffix>.png")
    add("--ann-file", help="with --dataset coco: the COCO instances json (--data-path holds the images)")
    add("--val-data-path", help="a fixed validation set in the same layout (default: split off --test-size images)")
    add(
        "--val-ann-file", help="with --dataset coco: a fixed validation json (images in --val-data-path or --data-path)"
    )


def dataset_from_args(
    args: argparse.Namespace, transforms: Callable | None = None, validation: bool = False, **kwargs: Any
) -> Any:
    """get_dataset with the flags of add_dataset_args; `validation` reads the fixed validation set they name."""
    data_path, ann_file, mask_path = args.data_path, args.ann_file, args.mask_path
    if validation and _is_yolo(args):  # the data.yaml's val:
        return get_dataset("yolo", data_path, transforms, part="val", **kwargs)
    if validation:
        data_path, mask_path = args.val_data_path or data_path, args.val_data_path or mask_path
        ann_file = args.val_ann_file or ann_file
    options = {"image_suffix": args.image_suffix, "mask_suffix": args.mask_suffix, "mask_path": mask_path}
    return get_dataset(args.dataset, data_path, transforms, ann_file=ann_file, **options, **kwargs)


def _is_yolo(args: argparse.Namespace) -> bool:
    from yolo_utils import is_yolo_source

    return args.dataset == "yolo" or (
        args.dataset is None and not args.ann_file and is_yolo_source(Path(args.data_path))
    )


def fixed_validation(args: argparse.Namespace) -> bool:
    """Whether the flags name a fixed validation set (--val-data-path, --val-ann-file, a data.yaml's val:);
    if not, the test images are split off the data with --test-size."""
    if _is_yolo(args):
        from yolo_utils import has_val

        if args.val_data_path or args.val_ann_file:
            raise UserError("--val-data-path: a YOLO dataset's validation images are its data.yaml's val: entry")
        return has_val(args.data_path)
    return bool(args.val_data_path or args.val_ann_file)


class _Probe(torch.utils.data.Dataset):
    """Loads sample indices[k] and yields (index, its problem or None): no pixels cross between processes."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, str | None]:
        idx = self.indices[k]
        try:
            getattr(self.dataset, "load", self.dataset.__getitem__)(idx)  # before transforms where it can
        except UserError as error:
            return idx, str(error)
        return idx, None


def find_bad_samples(dataset: Any, indices: list[int], workers: int = 0) -> dict[int, str]:
    """Read samples `indices` once, in `workers` processes: {index: one-line problem} for each that fails."""
    loader = torch.utils.data.DataLoader(
        _Probe(dataset, list(indices)), batch_size=None, num_workers=workers, generator=torch.Generator()
    )
    return {idx: problem for idx, problem in loader if problem is not None}


def check_dataset(dataset: Any) -> tuple[list[str], list[str], list[str]]:
    """Read every sample once: (report lines, errors, warnings). Each error and warning names its file.

    Errors make the dataset unusable (unreadable, unpaired or mismatched files, unknown
    categories); warnings do not (images without instances, empty or tiny instances,
    boxes outside their image).
    """
    errors, warnings = list(dataset.problems), []
    per_class: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    per_image = []
    for idx, path in enumerate(dataset.image_paths):
        try:
            image, target = dataset[idx]
        except UserError as error:
            errors.append(str(error))
            continue
        sizes[f"{image.shape[-1]}x{image.shape[-2]}"] += 1
        per_image.append(len(target["labels"]))
        if not per_image[-1]:
            warnings.append(f"{dataset.annotation_path(idx)}: no instances in {path.name}; it teaches only background")
        pixels = target["masks"].flatten(1).sum(1).tolist()
        for k, (label, area) in enumerate(zip(target["labels"].tolist(), pixels, strict=True)):
            per_class[dataset.classes[label]] += 1
            if area == 0:
                warnings.append(f"{path}: instance {k} ({dataset.classes[label]}) has an empty mask")
            elif area < MIN_INSTANCE_AREA:
                warnings.append(
                    f"{path}: instance {k} ({dataset.classes[label]}) has only {area} pixels, too few to learn"
                )
    if isinstance(dataset, CocoDataset):
        for annotation in dataset.coco.anns.values():
            info = dataset.coco.imgs[annotation["image_id"]]
            x, y, w, h = annotation["bbox"]
            if x < 0 or y < 0 or x + w > info["width"] + 1 or y + h > info["height"] + 1 or w <= 0 or h <= 0:
                warnings.append(
                    f"{dataset.ann_file}: annotation {annotation['id']} of {info['file_name']} has bbox "
                    f"{[x, y, w, h]} outside its {info['width']}x{info['height']} image; it is clipped"
                )
    counts = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items())) or "none"
    report = [
        f"images: {len(dataset.image_paths)} readable {len(per_image)}",
        f"instances: {sum(per_class.values())} ({counts})",
        "instances per image: " + (f"min {min(per_image)}, max {max(per_image)}" if per_image else "-"),
        "image sizes: " + ", ".join(f"{size} ({n})" for size, n in sizes.most_common(5)),
    ]
    return report, errors, warnings


def main(argv: list[str] | None = None) -> int:
    """`python dataset.py check|show [train.py's dataset flags]`: 0 when done (check: and usable), 2 if not."""
    parser = argparse.ArgumentParser(prog="dataset.py", description="Check a dataset, or look at it, without training")
    commands = parser.add_subparsers(dest="command", required=True)
    add_dataset_args(commands.add_parser("check", help="read every file and report problems"))
    show = commands.add_parser("show", help="draw a few samples' ground truth, before and after the augmentation")
    add_dataset_args(show)
    add = show.add_argument
    add("--augmentation", default="hflip", help="train.py's preset to apply (default: %(default)s)")
    add("--min-size", type=int, default=800, help="train.py's --min-size: lsj's square (default: %(default)s)")
    add("--num-images", type=int, default=8, help="how many samples to draw (default: %(default)s)")
    add("--seed", type=int, default=0, help="which samples, and their augmentation (default: %(default)s)")
    add("--output-dir", default="show", help="where the pictures go (default: %(default)s)")
    args, _ = parser.parse_known_args(argv)  # train.py's other flags may ride along
    try:
        if args.command == "show":
            return show_dataset(args)
        parts = {"": dataset_from_args(args, strict=False)}
        if fixed_validation(args):
            parts[" (validation)"] = dataset_from_args(args, validation=True, strict=False)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    all_errors, all_warnings = [], []
    for part, dataset in parts.items():
        report, errors, warnings = check_dataset(dataset)
        print(f"dataset{part}: {type(dataset).__name__} at {args.data_path}")
        print("\n".join(report))
        all_errors, all_warnings = all_errors + errors, all_warnings + warnings
    for line in [*(f"error: {e}" for e in all_errors), *(f"warning: {w}" for w in all_warnings)]:
        print(line)
    print(f"{'not usable' if all_errors else 'usable'}: {len(all_errors)} errors, {len(all_warnings)} warnings")
    return 2 if all_errors else 0


def show_dataset(args: argparse.Namespace) -> int:
    """`dataset.py show`: for --num-images samples, OUTPUT_DIR/<image>.png: the sample as read, then as trained on."""
    from transforms import AUGMENTATIONS, get_transform  # the presets build on this module: import them late
    from utils import writable_folder
    from visualize import draw, grid, save_png

    if args.augmentation not in AUGMENTATIONS:
        raise UserError(f"--augmentation {args.augmentation}: unknown; choose one of {', '.join(AUGMENTATIONS)}")
    if args.num_images <= 0 or args.min_size <= 0:
        raise UserError("--num-images and --min-size must be positive")
    dataset = dataset_from_args(args, get_transform(True, args.augmentation, args.min_size), include_crowd=False)
    output_dir = writable_folder(args.output_dir)
    torch.manual_seed(args.seed)
    chosen = torch.randperm(len(dataset))[: args.num_images].sort().values.tolist()
    for idx in chosen:
        image, target = dataset.load(idx)
        augmented, augmented_target = dataset.transforms(image, target)
        path = output_dir / f"{dataset.image_paths[idx].stem}.png"
        pictures = [draw(image, target, dataset.classes), draw(augmented, augmented_target, dataset.classes)]
        save_png(grid([pictures]), path)
        print(f"{path}: {len(target['labels'])} instances as read, {len(augmented_target['labels'])} after "
              f"{args.augmentation}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
