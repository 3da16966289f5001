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
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from masks import InstanceMap, boxes_of_index_maps, index_label_image
from utils import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
PENNFUDAN_IMAGES = 170


def value_range(img: Image.Image) -> tuple[str, float] | None:
    """("16-bit", 65535), ("32-bit", 2**31 - 1) or ("float", 1.0) for an image of more than 8 bits per value; None
    for the 8-bit modes. PIL gives 16-bit grayscale as I;16 (or I, from a PNG), 32-bit integers as I, floats as F."""
    if img.mode.startswith("I;16"):
        return "16-bit", 65535
    if img.mode == "I":
        bits = getattr(img, "tag_v2", {}).get(258, (32,))  # a TIFF says its bits per sample; a PNG has 16 at most
        return ("16-bit", 65535) if img.format == "PNG" or bits[0] == 16 else ("32-bit", 2**31 - 1)
    if img.mode == "F":
        return "float", 1.0
    return None


def to_eight_bits(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image scaled to 8 bits as OpenCV's reader and torchvision's to_dtype(scale=True)
    do: value x 255 / the largest value (a 16-bit value / 257; floats span 0..1). PIL's own convert() clips at
    255 instead, so that a 16-bit photograph would read white."""
    found = value_range(img)
    if found is None:
        return img
    top = found[1]
    values = np.clip(np.asarray(img, dtype=np.float64), 0, top)
    return Image.fromarray(np.rint(values * (255 / top)).astype(np.uint8), mode="L")


def read_image(path: Path) -> tv_tensors.Image:
    """Decode any image PIL reads (grayscale, palette, RGBA, 16-bit, float) into uint8 RGB, 3 x H x W, upright.

    A photo whose pixels are stored turned, with an EXIF Orientation tag (phones do this), is
    turned as every viewer and labelling tool shows it, so that masks drawn on it fit. More than
    8 bits per value are scaled to 8 (to_eight_bits).
    """
    try:
        with Image.open(path) as img:
            return tv_tensors.Image(F.pil_to_tensor(to_eight_bits(ImageOps.exif_transpose(img)).convert("RGB")))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL: SyntaxError if broken
        raise UserError(f"{path}: cannot read the image ({error}); replace or remove the file") from error


def high_bit_values(path: Path) -> tuple[str, float, float, float] | None:
    """For an image of more than 8 bits per value: (its kind, its smallest and largest value, the kind's largest);
    None for an 8-bit image, whose pixels are not decoded. For `dataset.py check`: a 12-bit camera's images fill
    1/16 of the 16-bit range, and read dark."""
    try:
        with Image.open(path) as img:
            found = value_range(img)
            if found is None:
                return None
            low, high = img.getextrema()
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{path}: cannot read the image ({error}); replace or remove the file") from error
    return found[0], float(low), float(high), float(found[1])


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


def lossy_format(path: Path) -> str | None:
    """ "JPEG" or "lossy WebP" when the file, whatever its name, is in a format that blurs edges; else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return None  # reading it later says what is wrong
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"VP8 " in head and b"VP8L" not in head:
        return "lossy WebP"
    return None


def refuse_lossy_masks(paths: list[Path]) -> None:
    """A UserError naming the first mask file in a lossy format: its blurred edges hold values of their own, each of
    which would be read as an instance (a JPEG of three objects reads as dozens)."""
    lossy = [(path, kind) for path in paths if (kind := lossy_format(path)) is not None]
    if lossy:
        (path, kind), others = lossy[0], len(lossy) - 1
        more = f" (and {others} other mask{'s' if others > 1 else ''})" if others else ""
        raise UserError(
            f"{path}: a mask saved as {kind}{more}, whose blurred edges read as extra instances; export the masks as "
            "PNG (lossless), one exact value per instance"
        )


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
