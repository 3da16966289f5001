"""One epoch of training, one pass of COCO evaluation."""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import utils

SAMPLES_KEPT = 4  # evaluate(samples=...): held-out images kept for a picture


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if torch.is_tensor(value) else value


class TrainingDiverged(utils.UserError):
    """A loss became NaN or infinite: the learning rate is usually too high."""


def to_device(images: tuple, targets: tuple, device: torch.device) -> tuple[list, list]:
    """A batch from the loader on `device` (asynchronously from pinned memory)."""
    images = [image.to(device, non_blocking=True) for image in images]
    return images, [{k: _to(v, device) for k, v in t.items()} for t in targets]


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision as --amp means it: float16 on CUDA (with a GradScaler), bfloat16 on CPU."""
    return torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=enabled
    )


def backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Gradients of `loss` and one optimizer step, through the GradScaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    device: torch.device,
    epoch: int,
    print_freq: int = 10,
    scaler: torch.amp.GradScaler | None = None,
    first_batch: Callable[[tuple, tuple], None] | None = None,
) -> dict[str, float]:
    """Train for one epoch; return the mean of each loss (torchvision's names, plus "loss").

    Epoch 0 warms the learning rate up linearly from 1/1000 over its first iterations
    (at most 1000), as torchvision's reference does. With a `scaler`, the forward pass
    runs under autocast: float16 on CUDA, bfloat16 on CPU. Under DDP the logged and
    returned losses are means over all ranks, so every rank stops together on a NaN.
    `first_batch(images, targets)` sees the epoch's first batch as the loader made it.
    """
    model.train()
    logger = utils.MetricLogger()
    logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))

    warmup = None
    if epoch == 0:
        # With --amp on CUDA the GradScaler skips the first steps while it finds its scale, and PyTorch
        # then warns that the warm-up scheduler stepped before the optimizer: expected, and harmless.
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
        warmup_iters = min(1000, len(data_loader) - 1)
        if warmup_iters > 0:
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / 1000, total_iters=warmup_iters)

    for iteration, (images, targets) in enumerate(logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]")):
        if iteration == 0 and first_batch is not None:
            first_batch(images, targets)
        images, targets = to_device(images, targets, device)
        with autocast(device, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())

        losses = utils.mean_over_ranks(loss_dict)
        loss_value = sum(losses.values())
        if not math.isfinite(loss_value):
            shown = ", ".join(f"{name} {value:.4g}" for name, value in losses.items())
            raise TrainingDiverged(
                f"epoch {epoch} iteration {iteration}: the loss is {loss_value} ({shown}); "
                f"it diverged at lr {optimizer.param_groups[0]['lr']:g}; lower --lr"
            )

        backward_and_step(loss, optimizer, scaler)
        if warmup is not None:
            warmup.step()

        logger.update(loss=loss_value, **losses)
        logger.update(lr=optimizer.param_groups[0]["lr"])
    return {name: meter.global_avg for name, meter in logger.meters.items() if name != "lr"}


# ---------------------------------------------------------------------------
# Evaluation: ground truth from the targets the loader yields, scored by pycocotools.


def _encode(masks: torch.Tensor) -> list[dict[str, Any]]:
    """N x H x W binary masks to COCO compressed RLEs (counts as str, so json can write them)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.clone()
    boxes[:, 2:] -= boxes[:, :2]
    return boxes.tolist()


def coco_ground_truth(image_id: int, height: int, width: int, target: dict[str, Any]) -> tuple[dict, list[dict]]:
    """A COCO image record and its annotations, from one target of the contract."""
    image = {"id": image_id, "height": height, "width": width}
    annotations = []
    segmentations = _encode(target["masks"].cpu()) if "masks" in target else [None] * len(target["labels"])
    for box, label, area, crowd, segmentation in zip(
        _xywh(target["boxes"].cpu()),
        target["labels"].tolist(),
        target["area"].tolist(),
        target["iscrowd"].tolist(),
        segmentations,
        strict=True,
    ):
        annotation = {"image_id": image_id, "bbox": box, "category_id": label, "area": area, "iscrowd": crowd}
        if segmentation is not None:
            annotation["segmentation"] = segmentation
        annotations.append(annotation)
    return image, annotations


def coco_detections(image_id: int, output: dict[str, torch.Tensor]) -> tuple[list[dict], list[dict]]:
    """One image's model output as COCO results: (box results, mask results; empty for box models)."""
    scores, labels = output["scores"].tolist(), output["labels"].tolist()
    boxes = [
        {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
        for box, label, score in zip(_xywh(output["boxes"].cpu()), labels, scores, strict=True)
    ]
    segms = []
    if "masks" in output:
        rles = _encode((output["masks"][:, 0] > 0.5).cpu())
        segms = [
            {"image_id": image_id, "category_id": label, "segmentation": rle, "score": score}
            for rle, label, score in zip(rles, labels, scores, strict=True)
        ]
    return boxes, segms


def coco_stats(
    images: list[dict], annotations: list[dict], results: list[dict], iou_type: str
) -> tuple[list[float], dict[int, float | None]]:
    """COCOeval's 12 summary numbers for `results` against the ground truth, printing the summary,
    and the AP@[.5:.95] of each category id (None for a category without ground truth)."""
    categories = sorted({a["category_id"] for a in annotations} | {r["category_id"] for r in results})
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
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    print(f"IoU metric: {iou_type}")
    evaluator.summarize()
    per_category = {}
    for k, category in enumerate(evaluator.params.catIds):
        precision = evaluator.eval["precision"][:, :, k, 0, -1]  # IoUs x recalls, all areas, 100 detections
        per_category[category] = float(precision[precision > -1].mean()) if (precision > -1).any() else None
    return [float(s) for s in evaluator.stats], per_category


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data_loader: torch.utils.data.DataLoader,
    device: torch.device,
    class_names: list[str] | None = None,
    timings: dict[str, float] | None = None,
    results: dict[str, list[dict]] | None = None,
    samples: list[tuple] | None = None,
) -> dict[str, Any]:
    """COCO bbox (and segm, for mask models) stats: {"bbox": [12 floats], "segm": [12 floats]}.

    The ground truth comes from the targets the loader yields (the test transform must
    not resize), so no image is decoded twice. Stats are pycocotools' own, in its order.
    With more than one class in `class_names` (background first), the result also holds
    "per_class": {"bbox": {name: AP}, "segm": {name: AP}}, printed as a table.
    Under DDP each rank runs the model on its own share of the test set, with rank 0's
    BatchNorm statistics (those that get saved); rank 0 scores all of them, in image id
    order, and every rank returns the same stats. A `timings` dict receives this rank's
    "images", "model_seconds" and "metric_seconds" (conversion to COCO and COCOeval).
    A `results` dict receives, on rank 0, the detections as COCO results: "bbox" (and
    "segm"), with the targets' image_id and the model's labels as category_id. A `samples`
    list receives (image, target, output) of this rank's first images, on the CPU, until it
    holds SAMPLES_KEPT: for pictures.
    """
    utils.copy_buffers_from_rank_0(model)
    model.eval()
    logger = utils.MetricLogger()
    per_image = []  # (image record, ground truth, box results, mask results, has masks) for each image
    for batch_images, targets in logger.log_every(data_loader, 100, "Test:"):
        batch_images = [image.to(device, non_blocking=True) for image in batch_images]
        start = time.time()
        outputs = model(batch_images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_time = time.time() - start
        start = time.time()
        for image, target, output in zip(batch_images, targets, outputs, strict=True):
            if samples is not None and len(samples) < SAMPLES_KEPT:
                samples.append((image.cpu(), target, {key: value.cpu() for key, value in output.items()}))
            image_id = int(target["image_id"])
            record, gt = coco_ground_truth(image_id, image.shape[-2], image.shape[-1], target)
            per_image.append((record, gt, *coco_detections(image_id, output), "masks" in output))
        logger.update(model_time=model_time, metric_time=time.time() - start)

    start = time.time()
    per_image = sorted((item for part in utils.all_gather_object(per_image) for item in part), key=lambda i: i[0]["id"])
    stats = score_detections(per_image, class_names) if utils.is_main_process() else None
    if results is not None and utils.is_main_process():
        results["bbox"] = [r for _, _, boxes, _, _ in per_image for r in boxes]
        if any(masks for *_, masks in per_image):
            results["segm"] = [r for *_, segms, _ in per_image for r in segms]
    if timings is not None:
        timings["images"] = logger.meters["model_time"].count
        timings["model_seconds"] = logger.meters["model_time"].total
        timings["metric_seconds"] = logger.meters["metric_time"].total + time.time() - start
    return utils.broadcast_object(stats)


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


def selection_score(stats: dict[str, Any]) -> float:
    """The number that ranks epochs (best.pth): mask AP, or box AP for a model without masks."""
    return stats["segm"][0] if "segm" in stats else stats["bbox"][0]


def score_detections(per_image: list[tuple], class_names: list[str] | None) -> dict[str, Any]:
    """evaluate()'s stats from its per-image records."""
    images = [record for record, *_ in per_image]
    annotations = [a for _, gt, *_ in per_image for a in gt]
    box_results = [r for _, _, boxes, _, _ in per_image for r in boxes]
    mask_results = [r for *_, segms, _ in per_image for r in segms]
    has_masks = any(masks for *_, masks in per_image)
    iou_types = {"bbox": box_results}
    if has_masks and all("segmentation" in a for a in annotations):
        iou_types["segm"] = mask_results
    stats, per_class = {}, {}
    for iou_type, results in iou_types.items():
        stats[iou_type], per_category = coco_stats(images, annotations, results, iou_type)
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
