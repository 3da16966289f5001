"""COCO instance annotations: a json read, checked, and served as a dataset of the target contract (dataset.py)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from dataset import InstanceDataset
from image_io import read_image
from keypoints import labelled_inside
from masks import MapBuilder, rasterise
from model import BOX_MODELS_HINT
from utils import UserError

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
    Where categories name `keypoints` (COCO's person keypoints json), targets carry them
    (unless `keypoints=False`), with the categories' `skeleton`; annotations without any have none
    labelled. `masks`: True for a mask model (an annotation without `segmentation` makes its image a
    bad sample), False for a box or keypoint model (no outline is rasterised), None: where every
    annotation has one. See dataset.py's docstring for the target contract.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        include_crowd: bool = True,
        strict: bool = True,
        keypoints: bool = True,
        masks: bool | None = True,
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
        if keypoints:
            self.keypoint_names, self.skeleton = self._keypoint_definition(categories)
        outlined = [bool(a.get("segmentation")) for a in self.coco.anns.values()]
        self._outlines = "all" if all(outlined) else "some" if any(outlined) else "none"
        self.masks = self._outlines == "all" if masks is None else masks
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
                self._problem(f"{path}: listed in {self.ann_file.name} but not found; check --data-path", strict)
        self.image_ids = [self.image_ids[i] for i in found]
        self.image_paths = [self.image_paths[i] for i in found]
        self.transforms = transforms
        self.include_crowd = include_crowd

    def _keypoint_definition(self, categories: list[dict[str, Any]]) -> tuple[list[str], list[tuple[int, int]]]:
        """The keypoint names and skeleton (0-based pairs) that the categories define: one set for all."""
        defining = [c for c in categories if c.get("keypoints")]
        if not defining:
            return [], []
        names = [str(name) for name in defining[0]["keypoints"]]
        for category in defining[1:]:
            if [str(name) for name in category["keypoints"]] != names:
                raise UserError(
                    f"{self.ann_file}: categories {defining[0]['id']} and {category['id']} name different keypoints; "
                    "Keypoint R-CNN predicts one set of points for every class: give them the same list"
                )
        skeleton = []
        for pair in defining[0].get("skeleton") or []:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(k, int) and 1 <= k <= len(names)
                                                                       for k in pair)):  # fmt: skip
                raise UserError(
                    f"{self.ann_file}: skeleton pair {pair} of category {defining[0]['id']}; COCO's skeleton pairs "
                    f"are two keypoint numbers counted from 1 to {len(names)}"
                )
            skeleton.append((pair[0] - 1, pair[1] - 1))
        return names, skeleton

    def trains_on(self, idx: int) -> bool:
        """Only images with an annotation that is not a crowd region: COCO files list unlabelled images too."""
        return any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[self.image_ids[idx]])

    def annotation_path(self, idx: int) -> Path:
        return self.ann_file

    def outlines(self) -> str:
        return self._outlines

    def annotation_warnings(self) -> list[str]:
        """Boxes outside their image (they are clipped), labelled keypoints outside it (they are dropped),
        and num_keypoints that disagree with the labelled points: one line each; in mixed data, annotations
        without a segmentation: one line for all."""
        bare = [a["id"] for a in self.coco.anns.values() if not a.get("segmentation")]
        warnings = []
        if self._outlines == "some":
            warnings.append(
                f"{self.ann_file}: {len(bare)} annotations (ids {bare[:5]}...) have a box and no segmentation: box "
                "and keypoint models train on them, mask models stop at their images (or skip them)"
            )
        for annotation in self.coco.anns.values():
            info = self.coco.imgs.get(annotation["image_id"])
            if info is None:
                continue
            where = f"{self.ann_file}: annotation {annotation['id']} of {info['file_name']}"
            x, y, w, h = annotation["bbox"]
            if x < 0 or y < 0 or x + w > info["width"] + 1 or y + h > info["height"] + 1 or w <= 0 or h <= 0:
                warnings.append(
                    f"{where} has bbox {[x, y, w, h]} outside its {info['width']}x{info['height']} image; it is clipped"
                )
            if not self.keypoint_names or not annotation.get("keypoints") or self._annotation_problem(annotation):
                continue
            points = torch.tensor(annotation["keypoints"], dtype=torch.float32).reshape(-1, 3)
            labelled = points[:, 2] > 0
            outside = labelled & ~labelled_inside(points, info["height"], info["width"])
            if outside.any():
                names = [self.keypoint_names[k] for k in outside.nonzero().flatten().tolist()]
                warnings.append(
                    f"{where} has keypoints {names} outside its {info['width']}x{info['height']} image; "
                    "they are left unlabelled"
                )
            if "num_keypoints" in annotation and annotation["num_keypoints"] != int(labelled.sum()):
                warnings.append(
                    f"{where} has num_keypoints {annotation['num_keypoints']} but {int(labelled.sum())} labelled "
                    "points (visibility 1 or 2); COCO's keypoint AP ignores objects with num_keypoints 0"
                )
        return warnings

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
        if segmentation or self.masks:  # a box model reads past a missing outline, never past a broken one
            problem = self._segmentation_problem(segmentation, info, where)
            if problem:
                return problem
        points = annotation.get("keypoints")
        if self.keypoint_names and points:
            size = 3 * len(self.keypoint_names)
            numbers = isinstance(points, list) and all(isinstance(v, int | float) for v in points)
            if not numbers or len(points) != size:
                return (
                    f"{where} has keypoints {str(points)[:40]}; give {size} numbers, x, y, visibility for each of "
                    f"{len(self.keypoint_names)} keypoints"
                )
        return None

    def _segmentation_problem(self, segmentation: Any, info: dict[str, Any], where: str) -> str | None:
        """What makes a segmentation unusable (polygons, or an RLE of the image's size); None if usable."""
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
            return (
                f'{where} has no "segmentation" (polygons or RLE): mask models learn from outlines; train a box '
                f"model on boxes ({BOX_MODELS_HINT})"
            )
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
        boxes = np.zeros((len(annotations), 4), np.float32)
        for k, annotation in enumerate(annotations):
            x, y, w, h = annotation["bbox"]
            boxes[k] = [x, y, x + w, y + h]
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in annotations], dtype=torch.int64),
            "image_id": idx,
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in annotations], dtype=torch.int64),
        }
        if self.masks:  # each outline drawn in its own window, painted into one map: no N x H x W stack
            painted = MapBuilder(height, width)
            pixels = np.zeros(len(annotations), np.int64)
            for k, annotation in enumerate(annotations):
                window, top, left = rasterise(annotation["segmentation"], height, width)
                painted.add(window, top, left)
                pixels[k] = window.sum()
            target["instance_map"] = painted.result()
        else:  # COCO's area is the outline's, where there is one; else the box's
            pixels = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        target["area"] = torch.tensor([a.get("area", p) for a, p in zip(annotations, pixels, strict=True)],
                                      dtype=torch.float32)  # fmt: skip
        if self.keypoint_names:
            target["keypoints"] = self._keypoints(annotations, height, width)
        return image, target

    def _keypoints(self, annotations: list[dict[str, Any]], height: int, width: int) -> torch.Tensor:
        """N x K x 3 float32 keypoints; unlabelled points, and labelled ones outside the image, are (0, 0, 0)."""
        points = np.zeros((len(annotations), len(self.keypoint_names), 3), np.float32)
        for k, annotation in enumerate(annotations):
            if annotation.get("keypoints"):
                points[k] = np.asarray(annotation["keypoints"], np.float32).reshape(-1, 3)
        keypoints = torch.from_numpy(points)
        return keypoints * labelled_inside(keypoints, height, width)[..., None]

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """(height, width) of image `idx` from the annotation file."""
        info = self.coco.imgs[self.image_ids[idx]]
        return info["height"], info["width"]
