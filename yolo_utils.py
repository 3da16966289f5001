"""Ultralytics (YOLO) detection and segmentation datasets, read in place: a data.yaml, or a folder holding images/
and labels/.

    python train.py --data-path my-export/data.yaml    # Roboflow's and Ultralytics' own layout
    python train.py --data-path my-export              # images/ and labels/ side by side

Each image `.../images/.../NAME.EXT` has its labels in `.../labels/.../NAME.txt` (the last
`images` folder of the path becomes `labels`, as Ultralytics finds them): one line per
instance, `CLASS x1 y1 x2 y2 x3 y3 ...`, a polygon, or `CLASS xc yc w h`, a box (detection
labels), in coordinates normalised to [0, 1]; a file may mix both. Mask models learn from the
polygons; box models from the boxes, and from each polygon's box. An image without a label
file is a background image, and trains as one; a label file without its image is unused (a
warning). YOLO class c is our label c + 1; its category id (in results files) stays c.

data.yaml: `names` (a list, or a dict from class index to name) gives the classes; `train`
and `val` name folders of images, text files listing images, or lists of these, relative to
`path` (default: the yaml's own folder; "../x" that does not exist is also tried as "x", as
Ultralytics does for Roboflow's exports). `train` is the training set and `val`, when given,
the fixed validation set, unless it names the same images as `train` (as Ultralytics'
coco128 does): then --test-size images are held out of them instead. Without a data.yaml the
classes come from `classes.txt` beside images/ (one name per line) or are numbered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from dataset import IMAGE_EXTENSIONS, InstanceDataset
from image_io import read_image
from masks import InstanceMap, MapBuilder, boxes_of_index_maps, rasterise
from model import BOX_MODELS_HINT
from utils import UserError

YAML_SUFFIXES = (".yaml", ".yml")


def is_yolo_source(path: Path) -> bool:
    """A data.yaml, or a folder holding images/ and labels/: what --dataset yolo reads."""
    return path.suffix.lower() in YAML_SUFFIXES or ((path / "images").is_dir() and (path / "labels").is_dir())


def read_data_yaml(path: Path, parts: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """{"names": [...], "base": folder, "has_val": bool, "train": [image paths], "val": [image paths] or None} from
    an Ultralytics data.yaml; only the `parts` asked for are listed (listing walks their folders)."""
    import yaml  # PyYAML: only YOLO users pay for the import

    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the dataset's data.yaml (or its folder) as --data-path")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]}); check the file") from error
    if not isinstance(data, dict) or "train" not in data:
        raise UserError(f"{path}: no train: entry; an Ultralytics data.yaml names train: and val: image folders")
    names = data.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise UserError(f"{path}: names: must number the classes 0, 1, 2, ... without gaps; got {sorted(names)}")
        names = [names[k] for k in range(len(names))]
    elif names is None and isinstance(data.get("nc"), int):
        names = [f"class {k}" for k in range(data["nc"])]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: names: must list the class names (or a dict from class index to name)")
    if isinstance(data.get("nc"), int) and data["nc"] != len(names):
        raise UserError(f"{path}: nc: {data['nc']} but names: lists {len(names)} classes; make them agree")
    base = path.parent / str(data.get("path") or ".")
    listed = {part: data[part] if isinstance(data.get(part), list) else [data.get(part)] for part in ("train", "val")}
    found: dict[str, Any] = {
        "names": [str(name) for name in names],
        "base": base.resolve(),
        "has_val": bool(data.get("val")),
        "entries": {part: sorted(str((base / str(e)).resolve()) for e in listed[part] if e) for part in listed},
    }
    for part in parts:
        entries = data.get(part)
        entries = entries if isinstance(entries, list) else [] if entries is None else [entries]
        found[part] = [image for entry in entries for image in _images_of(_resolve(base, str(entry), path, part))]
        if entries and not found[part]:
            raise UserError(f"{path}: {part}: {', '.join(map(str, entries))} holds no images ({IMAGE_EXTENSIONS})")
    if "train" in parts and not found["train"]:
        raise UserError(f"{path}: train: is empty; name the training images' folder")
    if "val" in parts:
        found["val"] = found["val"] or None
    return found


def _resolve(base: Path, entry: str, yaml_path: Path, part: str) -> Path:
    """Where a train:/val: entry points: base/entry, or base/x for a "../x" that is not there (Roboflow's exports)."""
    found = base / entry
    if not found.exists() and entry.startswith("../"):
        found = base / entry[3:]
    if not found.exists():
        raise UserError(f"{yaml_path}: {part}: {entry} not found (looked in {base}); fix the path in the yaml")
    return found.resolve()


def _images_of(path: Path) -> list[Path]:
    """The images a train:/val: entry names: a folder's (with subfolders), a list file's, or the file itself."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if path.suffix.lower() == ".txt":  # one image path per line, relative to the list's folder
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [(path.parent / line).resolve() for line in lines]
    return [path]


def label_path(image_path: Path) -> Path:
    """Where Ultralytics looks for an image's labels: its last images/ folder becomes labels/, the suffix .txt."""
    parts = list(image_path.parts)
    if "images" not in parts:
        raise UserError(f"{image_path}: not in an images/ folder; YOLO datasets keep images/ and labels/ side by side")
    k = len(parts) - 1 - parts[::-1].index("images")
    parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_labels(path: Path, num_classes: int) -> tuple[list[int], list[np.ndarray | None], np.ndarray]:
    """The classes, polygons (P x 2, normalised x, y; None for a box line) and boxes (N x 4, normalised x1 y1 x2 y2:
    a box line's, or its polygon's) of a label file; a UserError names its first bad line."""
    classes, polygons, boxes = [], [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the label file ({error}); replace or remove it") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise UserError(f"{where} is not numbers: {line[:40]!r}; lines are CLASS x1 y1 x2 y2 ...") from None
        category, coordinates = values[0], values[1:]
        if category != int(category) or not 0 <= category < num_classes:
            raise UserError(f"{where} has class {values[0]:g}; the dataset has classes 0 to {num_classes - 1}")
        if len(coordinates) != 4 and (len(coordinates) % 2 or len(coordinates) < 6):
            raise UserError(
                f"{where} has {len(coordinates)} coordinates; give a box (xc yc w h) or a polygon (3 or more x, y)"
            )
        if min(coordinates) < 0 or max(coordinates) > 1:
            raise UserError(f"{where} has coordinates outside 0..1; YOLO labels are normalised to the image size")
        if len(coordinates) == 4:  # a detection label: centre, width, height
            (xc, yc, w, h), polygon = coordinates, None
            box = [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]
        else:
            polygon = np.asarray(coordinates, np.float64).reshape(-1, 2)
            box = [*polygon.min(axis=0), *polygon.max(axis=0)]
        classes.append(int(category))
        polygons.append(polygon)
        boxes.append(box)
    return classes, polygons, np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0, 1)


def polygon_map(polygons: list[np.ndarray], height: int, width: int) -> tuple[InstanceMap, np.ndarray]:
    """Normalised polygons as an InstanceMap, each rasterised as pycocotools rasterises COCO's polygons (in its own
    window: masks.rasterise), and the pixels of each."""
    painted, pixels = MapBuilder(height, width), np.zeros(len(polygons), np.int64)
    for k, polygon in enumerate(polygons):
        window, top, left = rasterise([(polygon * [width, height]).flatten().tolist()], height, width)
        painted.add(window, top, left)
        pixels[k] = window.sum()
    return painted.result(), pixels


class YoloDataset(InstanceDataset):
    """The images of one part of an Ultralytics dataset with their labels: boxes, and polygons as masks.

    `names`: the class names, YOLO class c first at c. `masks`: True for a mask model (a box
    line makes its image a bad sample), False for a box model (no polygon is rasterised), None:
    where every line is a polygon. See the module docstring for the layout and dataset.py's for
    the target contract.
    """

    def __init__(
        self,
        image_paths: list[Path],
        names: list[str],
        image_dir: Path,
        transforms: Callable | None = None,
        strict: bool = True,
        masks: bool | None = True,
    ) -> None:
        self.image_paths = list(dict.fromkeys(image_paths))
        self.label_paths = [label_path(p) for p in self.image_paths]
        self.classes = ["background", *names]
        self.category_ids = list(range(len(names)))  # YOLO's own class indices
        self.image_ids = list(range(len(self.image_paths)))
        self.image_dir = Path(os.path.commonpath([image_dir, *(p.parent for p in self.image_paths)]))
        self.transforms = transforms
        self.problems: list[str] = []
        self.warnings: list[str] = []
        for path in self.image_paths:
            if not path.is_file():
                self._problem(f"{path}: listed but not found; fix the list or add the image", strict)
        # A label file whose image is not on disk (another part's images, listed elsewhere, are on disk: fine):
        # Ultralytics reads past it, and so do we (coco128 ships two)
        for image_folder in sorted({p.parent for p in self.image_paths if p.parent.is_dir()}):
            labels = label_path(image_folder / "x.txt").parent
            stems = {p.stem for p in image_folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
            orphans = [p for p in labels.glob("*.txt") if p.stem not in stems and p.name != "classes.txt"]
            for orphan in sorted(orphans):
                self.warnings.append(f"{orphan}: a label file without an image in {image_folder}; it is unused")
        self._outlines: str | None = None
        self.masks = self.outlines() == "all" if masks is None else masks

    def outlines(self) -> str:
        """ "all" where every label line is a polygon, "none" where every one is a box (read once, when asked)."""
        if self._outlines is None:
            kinds = set()
            for path in self.label_paths:
                if path.is_file():
                    lines = path.read_text(errors="replace").splitlines()
                    kinds.update(len(line.split()) == 5 for line in lines if line.strip())
            self._outlines = "some" if len(kinds) == 2 else "none" if kinds == {True} else "all"
        return self._outlines

    def load(self, idx: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image = read_image(self.image_paths[idx])
        height, width = image.shape[-2:]
        classes, polygons, boxes = [], [], np.zeros((0, 4))
        if self.label_paths[idx].is_file():  # no label file: a background image
            classes, polygons, boxes = read_labels(self.label_paths[idx], len(self.classes) - 1)
        target: dict[str, Any] = {"labels": torch.tensor(classes, dtype=torch.int64) + 1, "image_id": idx}
        if self.masks:
            boxed = [k for k, polygon in enumerate(polygons, start=1) if polygon is None]
            if boxed:
                line = boxed[0]
                raise UserError(
                    f"{self.label_paths[idx]}: label {line} is a box (xc yc w h); mask models learn from polygons: "
                    f"train a box model ({BOX_MODELS_HINT}), or outline it"
                )
            target["instance_map"], pixels = polygon_map(polygons, height, width)
            pixel_boxes = boxes_of_index_maps(target["instance_map"], len(polygons))
            area = torch.from_numpy(pixels.astype(np.float32))
        else:
            pixel_boxes = torch.from_numpy(boxes * [width, height, width, height]).to(torch.float32)
            area = (pixel_boxes[:, 2] - pixel_boxes[:, 0]) * (pixel_boxes[:, 3] - pixel_boxes[:, 1])
        target["boxes"] = tv_tensors.BoundingBoxes(pixel_boxes, format="XYXY", canvas_size=(height, width))
        target.update(area=area, iscrowd=torch.zeros(len(classes), dtype=torch.int64))
        return image, target

    def annotation_path(self, idx: int) -> Path:
        return self.label_paths[idx]


def yolo_dataset(
    data_path: str | Path,
    part: str = "train",
    transforms: Callable | None = None,
    strict: bool = True,
    masks: bool | None = True,
) -> YoloDataset:
    """Part "train" or "val" of the YOLO dataset at `data_path` (a data.yaml, or a folder of images/ and labels/)."""
    data_path = Path(data_path)
    if data_path.suffix.lower() in YAML_SUFFIXES:
        parts = read_data_yaml(data_path, (part,))  # the other part's folders are not walked
        if part == "val" and parts["val"] is None:
            raise UserError(f"{data_path}: no val: images; the test split comes from train: (--test-size)")
        return YoloDataset(parts[part], parts["names"], parts["base"], transforms, strict, masks)
    if not is_yolo_source(data_path):
        raise UserError(f"{data_path}: holds no images/ and labels/ folders; pass them, or the data.yaml")
    if part == "val":
        raise UserError(f"{data_path}: a folder has no val: part; name one in a data.yaml, or split with --test-size")
    images = _images_of(data_path / "images")
    if not images:
        raise UserError(f"{data_path / 'images'}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return YoloDataset(images, _names_of_folder(data_path), data_path.resolve(), transforms, strict, masks)


def has_val(data_path: str | Path) -> bool:
    """Whether the YOLO dataset at `data_path` names a fixed validation set (a data.yaml's val:) other than its
    train: images; a val: that names train:'s own folders is said in a note, and is no validation set."""
    data_path = Path(data_path)
    if data_path.suffix.lower() not in YAML_SUFFIXES:
        return False
    found = read_data_yaml(data_path, parts=())
    if not found["has_val"]:
        return False
    if found["entries"]["val"] == found["entries"]["train"]:
        print(f"note: {data_path}: val: names the training images; holding out --test-size of them instead")
        return False
    return True


def _names_of_folder(folder: Path) -> list[str]:
    """classes.txt's names (one per line, beside images/ or in labels/), else "class 0" up to the largest class."""
    for names in (folder / "classes.txt", folder / "labels" / "classes.txt"):  # LabelImg writes the second
        if names.is_file():
            return [line.strip() for line in names.read_text().splitlines() if line.strip()]
    largest = -1
    for path in (p for p in (folder / "labels").rglob("*.txt") if p.name != "classes.txt"):
        for line in path.read_text(errors="replace").splitlines():
            first = line.split()[:1]
            if first and first[0].replace(".", "", 1).isdigit():
                largest = max(largest, int(float(first[0])))
    return [f"class {k}" for k in range(largest + 1)] or ["class 0"]
