"""What a model gets wrong, as pictures: a confusion matrix and precision-recall curves per class.

After an evaluation that writes pictures (train.py's best epoch, beside best_predictions.png; --test-only),
confusion_matrix.png shows which class each ground truth object was found as, at box IoU 0.5 and score 0.5
(best_predictions.png's threshold): its last column the objects nothing found, its last row the detections that
match no object. pr_curves.png shows each class's precision against recall at IoU 0.5 and over 0.5:0.95, from
pycocotools' own accumulated arrays (coco_eval.pr_curves), for boxes and, where the model has them, masks or
keypoints. The numbers behind both go to errors.json (a training run) or eval.json (--test-only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import utils
from curves import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

IOU_THRESHOLD, SCORE_THRESHOLD = 0.5, 0.5


def _iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of each of N xywh boxes with each of M: N x M."""
    a = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)[:, None]
    b = np.concatenate([others[:, :2], others[:, :2] + others[:, 2:]], axis=1)[None]
    sides = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = sides.prod(-1)
    return inter / np.maximum(boxes[:, None, 2:].prod(-1) + others[None, :, 2:].prod(-1) - inter, 1e-9)


def confusion_matrix(
    per_image: list[tuple[dict, list[dict], dict[str, list[dict]]]],
    num_classes: int,
    iou_threshold: float = IOU_THRESHOLD,
    score_threshold: float = SCORE_THRESHOLD,
) -> list[list[int]]:
    """num_classes x num_classes counts (background included, last): row the truth, column what it was found as.

    per_image: engine.evaluate's (image record, ground truth, detections) in COCO form, labels 1..K as category
    ids. In each image the detections scoring at least `score_threshold` take, best score first, the unmatched
    object of highest box IoU (at least `iou_threshold`), whatever its class: a cat found as a dog is counted in
    the cat's row and the dog's column; an object nothing took is in the background column, a detection that
    took nothing in the background row (unless it lies on a crowd region, which counts nothing).
    """
    background = num_classes - 1
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _, truth, detections in per_image:
        found = sorted((d for d in detections.get("bbox", []) if d["score"] >= score_threshold),
                       key=lambda d: -d["score"])  # fmt: skip
        objects = [a for a in truth if not a["iscrowd"]]
        crowds = np.array([a["bbox"] for a in truth if a["iscrowd"]], dtype=np.float64).reshape(-1, 4)
        boxes = np.array([a["bbox"] for a in objects], dtype=np.float64).reshape(-1, 4)
        taken = np.zeros(len(objects), dtype=bool)
        for detection in found:
            box = np.array([detection["bbox"]], dtype=np.float64)
            ious = np.where(taken, -1.0, _iou(box, boxes)[0]) if len(objects) else np.zeros(0)
            if len(ious) and ious.max() >= iou_threshold:
                best = int(ious.argmax())
                taken[best] = True
                counts[objects[best]["category_id"] - 1, detection["category_id"] - 1] += 1
            elif not (len(crowds) and _iou(box, crowds).max() >= iou_threshold):
                counts[background, detection["category_id"] - 1] += 1
        for annotation, found_once in zip(objects, taken, strict=True):
            if not found_once:
                counts[annotation["category_id"] - 1, background] += 1
    return counts.tolist()


def errors_record(
    confusion: list[list[int]], curves: dict[str, dict[int, dict]], class_names: list[str]
) -> dict[str, Any]:
    """errors.json's content: the matrix with its row and column names, the curves by IoU type and class name."""
    names = [*class_names[1:], "background"]
    return {
        "confusion_matrix": {"classes": names, "rows": "truth", "columns": "found as", "counts": confusion,
                             "iou": IOU_THRESHOLD, "score": SCORE_THRESHOLD},
        "pr_curves": {iou_type: {class_names[c]: curve for c, curve in by_class.items()}
                      for iou_type, by_class in curves.items()},
    }  # fmt: skip


def save_error_pictures(record: dict[str, Any], output_dir: Path) -> list[str]:
    """confusion_matrix.png and pr_curves.png of an errors_record, written atomically; their names."""
    figure = _confusion_figure(record["confusion_matrix"])
    utils.atomic_write(output_dir / "confusion_matrix.png", lambda f: figure.savefig(f, format="png", dpi=100))
    figure = _curves_figure(record["pr_curves"])
    utils.atomic_write(output_dir / "pr_curves.png", lambda f: figure.savefig(f, format="png", dpi=100))
    return ["confusion_matrix.png", "pr_curves.png"]


def _confusion_figure(matrix: dict[str, Any]) -> Figure:
    counts, names = np.array(matrix["counts"]), matrix["classes"]
    side = max(4.5, 2.5 + 0.45 * len(names))
    figure = new_figure((side + 1, side))
    axes = figure.subplots()
    shown = axes.imshow(counts, cmap="Blues")
    figure.colorbar(shown, ax=axes, shrink=0.8)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("found as")
    axes.set_ylabel("truth")
    axes.set_title(f"box IoU {matrix['iou']}, score {matrix['score']}\nlast column: missed; last row: found where "
                   "nothing is", fontsize=10)  # fmt: skip
    if len(names) <= 30:  # a number in every cell while they can be read
        middle = counts.max() / 2
        for (row, column), value in np.ndenumerate(counts):
            color = "white" if value > middle else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=9)
    return figure


def _curves_figure(curves: dict[str, dict[str, dict]]) -> Figure:
    kinds = list(curves) or ["bbox"]
    figure = new_figure((10, 4 * len(kinds)))
    grid = np.array(figure.subplots(len(kinds), 2, squeeze=False))
    for row, kind in enumerate(kinds):
        for column, (key, label) in enumerate((("iou50", "IoU 0.5"), ("iou50_95", "IoU 0.5:0.95"))):
            axes = grid[row, column]
            for name, curve in curves.get(kind, {}).items():
                ap = float(np.mean(curve[key]))
                axes.plot(curve["recall"], curve[key], label=f"{name} (AP {ap:.3f})")
            axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"{kind}, {label}")
            axes.grid(alpha=0.3)
            if axes.lines:
                axes.legend(loc="lower left", fontsize=8)
    return figure
