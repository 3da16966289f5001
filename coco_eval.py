"""Model outputs and targets as COCO records, scored with pycocotools: box, mask and keypoint AP, overall and
per class.

engine.evaluate gathers the records; predict.py and train.py --test-only write the results
files (in_dataset_ids maps them to the dataset's own ids); print_summary is a run's last word on its epochs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import utils
from masks import encode_detections, encode_ground_truth


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.clone()
    boxes[:, 2:] -= boxes[:, :2]
    return boxes.tolist()


def coco_ground_truth(image_id: int, height: int, width: int, target: dict[str, Any]) -> tuple[dict, list[dict]]:
    """A COCO image record and its annotations, from one target of the contract."""
    image = {"id": image_id, "height": height, "width": width}
    columns = (_xywh(target["boxes"].cpu()), target["labels"].tolist(), target["area"].tolist(),
               target["iscrowd"].tolist())  # fmt: skip
    annotations = [
        {"image_id": image_id, "bbox": box, "category_id": label, "area": area, "iscrowd": crowd}
        for box, label, area, crowd in zip(*columns, strict=True)
    ]
    if "masks" in target or "instance_map" in target:  # encoded one instance at a time
        for annotation, rle in zip(annotations, encode_ground_truth(target), strict=True):
            annotation["segmentation"] = rle
    if "keypoints" in target:
        for annotation, points in zip(annotations, target["keypoints"].cpu(), strict=True):
            annotation["keypoints"] = points.flatten().tolist()
            annotation["num_keypoints"] = int((points[:, 2] > 0).sum())  # COCO ignores objects with none
    return image, annotations


def coco_detections(
    image_id: int, output: dict[str, torch.Tensor], size: tuple[int, int] | None = None
) -> dict[str, list[dict]]:
    """One image's model output as COCO results by IoU type: "bbox", and "segm" (masks) or "keypoints"
    where the model predicts them; labels as category ids. Unpasted "mask_probs" (masks.unpasted_masks) are
    pasted at `size`, the image's (height, width), a few at a time."""
    scores, labels = output["scores"].tolist(), output["labels"].tolist()
    found = {"bbox": [{"bbox": box} for box in _xywh(output["boxes"].cpu())]}
    if "masks" in output or "mask_probs" in output:
        found["segm"] = [{"segmentation": rle} for rle in encode_detections(output, *(size or (0, 0)))]
    if "keypoints" in output:  # x, y, and 1 for every point, as torchvision's model gives them
        found["keypoints"] = [{"keypoints": points.flatten().tolist()} for points in output["keypoints"].cpu()]
    return {
        iou_type: [
            {"image_id": image_id, "category_id": label, **result, "score": score}
            for result, label, score in zip(results, labels, scores, strict=True)
        ]
        for iou_type, results in found.items()
    }


def coco_stats(
    images: list[dict],
    annotations: list[dict],
    results: list[dict],
    iou_type: str,
    keypoint_sigmas: list[float] | None = None,
    curves: dict[int, dict[str, list[float]]] | None = None,
    max_detections: int = 100,
) -> tuple[list[float], dict[int, float | None]]:
    """COCOeval's summary numbers for `results` against the ground truth (12 for bbox and segm, 10 for keypoints,
    scored with `keypoint_sigmas`), printing the summary, and the AP@[.5:.95] of each category id (None for a
    category without ground truth). A `curves` dict receives each category's precision-recall curves (pr_curves).
    Boxes and masks count each image's `max_detections` best detections of a class (COCO's 100; more where a
    model may return more: --box-detections-per-img); keypoints COCO's 20."""
    categories = sorted({a["category_id"] for a in annotations} | {r["category_id"] for r in results})
    if not any(not a["iscrowd"] for a in annotations):  # pycocotools would print a table of -1s
        print(f"IoU metric: {iou_type}: no ground truth in the test split; nothing to score")
        return [-1.0] * (10 if iou_type == "keypoints" else 12), dict.fromkeys(categories)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' "creating index..." chatter
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": [{**a, "id": i} for i, a in enumerate(annotations, start=1)],
            "categories": [{"id": c} for c in categories],
        }
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
        if not results:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
    evaluator = COCOeval(gt, dt, iou_type)
    if keypoint_sigmas is not None:
        evaluator.params.kpt_oks_sigmas = np.array(keypoint_sigmas)
    if iou_type != "keypoints":
        evaluator.params.maxDets = [1, 10, max_detections]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    print(f"IoU metric: {iou_type}")
    with contextlib.redirect_stdout(io.StringIO()) as summary:
        evaluator.summarize()
    stats, lines = [float(s) for s in evaluator.stats], summary.getvalue().splitlines()
    if iou_type != "keypoints" and max_detections != 100:  # pycocotools scores its first number at 100 detections
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        stats[0] = float(precision[precision > -1].mean()) if (precision > -1).any() else -1.0
        lines[0] = (
            lines[0].replace("maxDets=100", f"maxDets={max_detections:>3d}").rsplit("=", 1)[0] + f"= {stats[0]:0.3f}"
        )
    print("\n".join(lines))
    per_category = {}
    for k, category in enumerate(evaluator.params.catIds):
        precision = evaluator.eval["precision"][:, :, k, 0, -1]  # IoUs x recalls, all areas, most detections
        per_category[category] = float(precision[precision > -1].mean()) if (precision > -1).any() else None
    if curves is not None:
        curves.update(pr_curves(evaluator))
    return stats, per_category


def pr_curves(evaluator: Any) -> dict[int, dict[str, list[float]]]:
    """From an accumulated COCOeval: each category id's precision at COCO's 101 recall steps, at IoU 0.5 and
    averaged over 0.5:0.95 (all areas, the most detections); categories without ground truth are left out."""
    precision = evaluator.eval["precision"]  # IoUs x recalls x categories x areas x max detections; -1: no truth
    recall = [float(r) for r in evaluator.params.recThrs]
    curves = {}
    for k, category in enumerate(evaluator.params.catIds):
        table = precision[:, :, k, 0, -1]
        if (table > -1).any():
            curves[int(category)] = {"recall": recall, "iou50": table[0].tolist(), "iou50_95": table.mean(0).tolist()}
    return curves


IOU_TYPES = ("bbox", "segm", "keypoints")  # what COCO scores: boxes, masks, keypoints (OKS)
KIND = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}  # how the summary lines name them


def all_results(per_image: list[tuple[dict, list[dict], dict[str, list[dict]]]]) -> dict[str, list[dict]]:
    """The detections of every image, by IoU type: {"bbox": [...], "segm" or "keypoints": [...]}."""
    found = [t for t in IOU_TYPES if any(t in detections for *_, detections in per_image)]
    return {t: [r for *_, detections in per_image for r in detections.get(t, [])] for t in found}


def score_detections(
    per_image: list[tuple[dict, list[dict], dict[str, list[dict]]]],
    class_names: list[str] | None,
    keypoint_sigmas: list[float] | None = None,
    curves: dict[str, dict] | None = None,
    max_detections: int = 100,
) -> dict[str, Any]:
    """evaluate()'s stats from its per-image (image record, ground truth, coco_detections) triples: the IoU
    types the model predicts and the ground truth holds (masks; keypoints, scored with `keypoint_sigmas`). A
    `curves` dict receives each IoU type's precision-recall curves by category id (pr_curves); `max_detections`:
    coco_stats'."""
    images = [record for record, *_ in per_image]
    annotations = [a for _, gt, _ in per_image for a in gt]
    iou_types = all_results(per_image)
    if "segm" in iou_types and not all("segmentation" in a for a in annotations):
        del iou_types["segm"]
    if "keypoints" in iou_types and not all("keypoints" in a for a in annotations):
        del iou_types["keypoints"]
    stats, per_class = {}, {}
    for iou_type, results in iou_types.items():
        sigmas = keypoint_sigmas if iou_type == "keypoints" else None
        found = curves.setdefault(iou_type, {}) if curves is not None else None
        stats[iou_type], per_category = coco_stats(images, annotations, results, iou_type, sigmas, found,
                                                   max_detections)  # fmt: skip
        if class_names and len(class_names) > 2:
            per_class[iou_type] = {name: per_category.get(label) for label, name in enumerate(class_names) if label}
    if per_class:
        stats["per_class"] = per_class
        print(per_class_table(per_class))
    return stats


def per_class_table(per_class: dict[str, dict[str, float | None]]) -> str:
    """AP@[.5:.95] per class and IoU type as an aligned text table ("-" where a class has no ground truth)."""
    iou_types = list(per_class)
    names = list(per_class[iou_types[0]])
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{t + ' AP':>8}" for t in iou_types)]
    for name in names:
        cells = [per_class[t][name] for t in iou_types]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:8.3f}" if c is not None else f"{'-':>8}" for c in cells))
    return "\n".join(lines)


def in_dataset_ids(
    results: list[dict], image_ids: list[int], category_ids: list[int], file_names: list[str] | None = None
) -> list[dict]:
    """COCO results with the dataset's own ids: image_id i becomes image_ids[i], label k category_ids[k - 1].

    With `file_names` (one per image index), each result also names its image's file.
    """
    mapped = []
    for result in results:
        index = result["image_id"]
        record = {**result, "image_id": image_ids[index], "category_id": category_ids[result["category_id"] - 1]}
        if file_names is not None:
            record["file_name"] = file_names[index]
        mapped.append(record)
    return mapped


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record of the epoch that best.pth keeps: the highest selection_score of its validation scores ("val",
    with --val-size), else of its test scores; None before the first."""
    return max(history, key=lambda record: selection_score(record.get("val", record)), default=None)


def selected_iou_type(stats: dict[str, Any]) -> str:
    """What ranks epochs: keypoints for a keypoint model, masks for a mask model, else boxes."""
    return next(t for t in reversed(IOU_TYPES) if t in stats)


def selection_score(stats: dict[str, Any]) -> float:
    """The number that ranks epochs (best.pth): keypoint AP, mask AP, or box AP, as selected_iou_type says."""
    return stats[selected_iou_type(stats)][0]


def has_ground_truth(stats: dict[str, Any]) -> bool:
    """Whether the stats scored anything: pycocotools gives AP -1 to a split without ground truth."""
    return selection_score(stats) >= 0


def ap_line(stats: dict[str, Any]) -> str:
    """The AP that ranks epochs as a user reads it: "mask AP 0.412" (ask has_ground_truth first)."""
    return f"{KIND[selected_iou_type(stats)]} AP {selection_score(stats):.3f}"


def write_results(
    results: dict[str, list[dict]],
    output_dir: Path,
    image_ids: list[int],
    category_ids: list[int],
    file_names: list[str],
) -> list[str]:
    """evaluate()'s results as COCO results files (results_bbox.json, results_segm.json) in the dataset's own
    image and category ids, each result with its image's file name: pycocotools scores them against the user's
    own json. Returns the files' names."""
    written = []
    for iou_type, found in results.items():
        mapped = in_dataset_ids(found, image_ids, category_ids, file_names)
        utils.write_json(mapped, output_dir / f"results_{iou_type}.json")
        written.append(f"results_{iou_type}.json")
    return written


def print_summary(history: list[dict[str, Any]], output_dir: Path) -> None:
    """Where a run's results are: the epoch best.pth keeps, who chose it, its test AP and the last epoch's."""
    if not history:
        return
    best, last = best_epoch(history), history[-1]

    def test_ap(record: dict[str, Any]) -> str:
        return ap_line(record) if has_ground_truth(record) else "no ground truth in the test split"

    if "val" not in best and not has_ground_truth(best):
        print(f"No ground truth in the test split: no epoch was scored, best.pth is the last; all in {output_dir}/")
    else:
        if "val" not in best:
            chosen = "chosen on the test images themselves, so its test AP is not held out (--val-size N chooses)"
        elif has_ground_truth(best["val"]):
            chosen = f"chosen on the validation images ({ap_line(best['val'])} there)"
        else:
            chosen = "the last (no ground truth in the validation split)"
        print(f"Best epoch {best['epoch']}, {chosen}: {test_ap(best)} on the test split")
        print(f"Last epoch {last['epoch']}: {test_ap(last)} on the test split; all in {output_dir}/")
    print(f"Predict: python predict.py --checkpoint {output_dir / 'best.pth'} IMAGES_OR_FOLDERS")
