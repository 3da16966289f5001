"""Pascal VOC datasets (LabelImg's default format, and an export of CVAT and Roboflow), read in place.

    python train.py --dataset voc --data-path VOC2012 --model fasterrcnn_resnet50_fpn

ROOT/Annotations/NAME.xml describes ROOT/JPEGImages/<its filename>; a folder that holds the
.xml files beside their images (as LabelImg saves them, and Roboflow's export) works too.
ROOT/ImageSets/Main/train.txt and val.txt, when present, list the names of each part: val.txt
then is the fixed validation (test) set, as a data.yaml's val: is; without them every .xml is
read and the test images are split off with --test-size.

Each <object> has a <name> (its class: the names found across all the annotations, sorted,
become labels 1..K) and a <bndbox> of VOC's 1-based, inclusive pixels: the contract's box is
(xmin - 1, ymin - 1, xmax, ymax). Numbers are read as they are, floats included. Exports that
write 0-based boxes (CVAT's: xmin = x, xmax = x + w; Roboflow's) give a box at the left or top
edge xmin or ymin 0, and one at the right or bottom edge up to a pixel past the size: those are
clipped to the image and read as touching the edge (one warning counts them); a box further
outside is an error. Objects marked <difficult>1 are left out of training and
ignored by evaluation, as VOC's own evaluation ignores them: they travel as COCO's crowd
regions do (iscrowd 1). VOC has boxes only: these datasets train box models.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors

from dataset import IMAGE_EXTENSIONS, InstanceDataset
from image_io import read_image
from utils import UserError

PARTS_FOLDER = Path("ImageSets") / "Main"


def voc_folders(root: Path) -> tuple[Path, Path]:
    """(annotation folder, image folder) of a VOC dataset at `root`: Annotations/ and JPEGImages/, or root itself."""
    annotations = root / "Annotations" if (root / "Annotations").is_dir() else root
    images = root / "JPEGImages" if (root / "JPEGImages").is_dir() else annotations
    return annotations, images


def has_voc_val(root: str | Path) -> bool:
    """Whether the VOC dataset at `root` lists a validation part (ImageSets/Main/val.txt)."""
    return (Path(root) / PARTS_FOLDER / "val.txt").is_file()


def _names_in(listed: Path) -> list[str]:
    """The image names an ImageSets list holds: the first word of each line (VOC's class lists add a 1 or -1)."""
    return [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]


def _number(element: ElementTree.Element | None, tag: str) -> float | None:
    found = element.find(tag) if element is not None else None
    try:
        return float(found.text) if found is not None and found.text is not None else None
    except ValueError:
        return None


def parse_annotation(xml_path: Path, image_dir: Path) -> dict[str, Any]:
    """One VOC annotation file: {"image": path, "size": (height, width), "objects": [(name, box, difficult)]},
    boxes in the contract's pixels; a UserError names the file (and the object) when it is malformed."""
    try:
        tree = ElementTree.parse(xml_path)
    except (ElementTree.ParseError, OSError, UnicodeDecodeError) as error:
        raise UserError(f"{xml_path}: not a readable VOC annotation ({error}); fix or remove the file") from error
    root = tree.getroot()
    size = root.find("size")
    width, height = _number(size, "width"), _number(size, "height")
    if not width or not height or width <= 0 or height <= 0:
        raise UserError(f"{xml_path}: no <size> with a <width> and <height>; VOC annotations give the image's size")
    name = (root.findtext("filename") or "").strip()
    image = image_dir / name if name else None
    if image is None or not image.is_file():  # LabelImg and exports name the file; else the annotation's own stem
        beside = [image_dir / (xml_path.stem + ext) for ext in IMAGE_EXTENSIONS]
        image = next((path for path in beside if path.is_file()), image)
    if image is None or not image.is_file():
        raise UserError(f"{xml_path}: its image {name or xml_path.stem + '.*'} is not in {image_dir}; add it")
    objects, starts_at_0, ends_past = [], 0, 0
    for k, element in enumerate(root.findall("object")):
        label = (element.findtext("name") or "").strip()
        where = f"{xml_path}: object {k}" + (f" ({label})" if label else "")
        if not label:
            raise UserError(f"{where} has no <name>; every object needs its class")
        box = element.find("bndbox")
        xmin, ymin, xmax, ymax = (_number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if None in (xmin, ymin, xmax, ymax):
            raise UserError(f"{where} has no <bndbox> of numbers xmin, ymin, xmax, ymax")
        if xmax < xmin or ymax < ymin:
            raise UserError(f"{where} has xmax {xmax:g} < xmin {xmin:g} or ymax {ymax:g} < ymin {ymin:g}; fix the box")
        if xmin < 0 or ymin < 0 or xmax > width + 1 or ymax > height + 1:
            raise UserError(
                f"{where} has box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) outside its {width:g}x{height:g} image; VOC "
                "boxes are 1-based pixels from 1 to the width and height"
            )
        # CVAT (Datumaro) and Roboflow write 0-based x, x + w: a box at the left or top edge has xmin or ymin 0, one at
        # the right or bottom edge may end a pixel past the size. Read as touching the edge, as Detectron2 reads them.
        starts_at_0 += xmin < 1 or ymin < 1
        ends_past += xmax > width or ymax > height
        box = (max(xmin - 1, 0.0), max(ymin - 1, 0.0), min(xmax, width), min(ymax, height))
        difficult = (element.findtext("difficult") or "0").strip() == "1"
        objects.append((label, box, difficult))
    edges = {"starts_at_0": starts_at_0, "ends_past": ends_past}
    return {"image": image, "size": (int(height), int(width)), "objects": objects, "edges": edges}


def edge_warnings(records: list[dict[str, Any]], annotation_dir: Path) -> list[str]:
    """One line for the dataset about the boxes read as touching an edge (parse_annotation), if any."""
    starts, ends = (sum(record["edges"][kind] for record in records) for kind in ("starts_at_0", "ends_past"))
    said = []
    if starts:
        said.append(f"{starts} boxes start at 0" if starts > 1 else "1 box starts at 0")
    if ends:
        said.append(f"{ends} {'boxes ' if not starts else ''}end up to a pixel past their image")
    if not said:
        return []
    return [f"{annotation_dir}: {' and '.join(said)}: read as touching the edge (VOC counts pixels from 1; CVAT and "
            "Roboflow write 0-based boxes)"]  # fmt: skip


class VocDataset(InstanceDataset):
    """One part ("train" or "val") of a Pascal VOC dataset: boxes, labels, difficult objects as crowd regions.

    See the module docstring for the layout and dataset.py's for the target contract. A
    malformed annotation makes its image a bad sample (it stops the run, or with strict=False
    is collected); `include_difficult=False` (for training) leaves difficult objects out.
    """

    masks = False  # VOC has boxes alone

    def __init__(
        self,
        root: str | Path,
        part: str = "train",
        transforms: Callable | None = None,
        include_difficult: bool = True,
        strict: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such folder; pass the VOC dataset's folder (Annotations/, JPEGImages/)")
        self.annotation_dir, self.image_dir = voc_folders(self.root)
        every = sorted(self.annotation_dir.glob("*.xml"))
        if not every:
            raise UserError(f"{self.annotation_dir}: no .xml annotations; check --data-path (Annotations/*.xml)")
        self.problems: list[str] = []
        parsed: dict[Path, dict[str, Any] | str] = {}
        for path in every:  # every part's, so that the classes are the same in training and validation
            try:
                parsed[path] = parse_annotation(path, self.image_dir)
            except UserError as error:
                parsed[path] = str(error)
        names = {label for found in parsed.values() if isinstance(found, dict) for label, _, _ in found["objects"]}
        self.classes = ["background", *sorted(names)]
        self.category_ids = list(range(1, len(names) + 1))  # in results files, label k is category k
        chosen = self._part(every, part)
        self.xml_paths, self.records = [], []
        for path in chosen:
            found = parsed[path]
            if isinstance(found, str):
                self._problem(found, strict)
                continue
            self.xml_paths.append(path)
            self.records.append(found)
        self.image_paths = [record["image"] for record in self.records]
        self.warnings = edge_warnings(self.records, self.annotation_dir)
        self.image_ids = list(range(len(self.records)))
        self.transforms = transforms
        self.include_difficult = include_difficult

    def _part(self, every: list[Path], part: str) -> list[Path]:
        """The annotation files of `part`: those ImageSets/Main/<part>.txt lists, else (train) all but val's."""
        listed = self.root / PARTS_FOLDER / f"{part}.txt"
        if not listed.is_file():
            if part == "val":
                raise UserError(f"{self.root}: no {PARTS_FOLDER / 'val.txt'}; split with --test-size instead")
            val = self.root / PARTS_FOLDER / "val.txt"
            held = set(_names_in(val)) if val.is_file() else set()
            return [path for path in every if path.stem not in held]
        chosen, known = [], set(every)
        for name in _names_in(listed):
            path = self.annotation_dir / f"{name}.xml"
            if path not in known:
                raise UserError(f"{listed}: lists {name}, which has no {path.name} in {self.annotation_dir}; fix it")
            chosen.append(path)
        return chosen

    def load(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """Sample `idx` before transforms; a UserError names the file when the image is not the size it says."""
        record = self.records[idx]
        image = read_image(self.image_paths[idx])
        height, width = image.shape[-2:]
        if (height, width) != record["size"]:
            raise UserError(
                f"{self.xml_paths[idx]}: <size> is {record['size'][1]}x{record['size'][0]} but the image "
                f"{self.image_paths[idx].name} is {width}x{height}; fix the annotation"
            )
        objects = [o for o in record["objects"] if self.include_difficult or not o[2]]
        boxes = torch.tensor([box for _, box, _ in objects], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.classes.index(label) for label, _, _ in objects], dtype=torch.int64),
            "image_id": idx,
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "iscrowd": torch.tensor([int(difficult) for *_, difficult in objects], dtype=torch.int64),
        }
        return image, target

    def annotation_path(self, idx: int) -> Path:
        return self.xml_paths[idx]

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """(height, width) of image `idx` from its annotation's <size>."""
        return self.records[idx]["size"]

    def outlines(self) -> str:
        return "none"
