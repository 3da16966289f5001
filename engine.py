"""One epoch of training, one pass of evaluation (scored by coco_eval.py)."""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import distributed
import utils
from budget import OutOfTime
from coco_eval import all_results, coco_detections, coco_ground_truth, score_detections
from errors import confusion_matrix, errors_record
from tiles import Tiling, detect
from visualize import shrink

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


def amp_pays(device: torch.device) -> bool:
    """Whether --amp trains faster than float32 on `device`: on a GPU, and on a CPU with bfloat16 instructions
    (utils.cpu_bfloat16); any other CPU would emulate bfloat16."""
    return device.type != "cpu" or utils.cpu_bfloat16()


def forward_losses(
    model: torch.nn.Module, images: tuple, targets: tuple, device: torch.device, amp: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A training batch from the loader through the model on `device` (under autocast with `amp`):
    the summed loss and each of torchvision's losses."""
    images, targets = to_device(images, targets, device)
    with autocast(device, enabled=amp):
        loss_dict = model(images, targets)
        return sum(loss_dict.values()), loss_dict


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
    deadline: float | None = None,
    ema: Any = None,
) -> dict[str, float]:
    """Train for one epoch; return the mean of each loss (torchvision's names, plus "loss").

    Epoch 0 warms the learning rate up linearly from 1/1000 over its first iterations
    (at most 1000), as torchvision's reference does. With a `scaler`, the forward pass
    runs under autocast: float16 on CUDA, bfloat16 on CPU. Under DDP the logged and
    returned losses are means over all ranks, so every rank stops together on a NaN.
    `first_batch(images, targets)` sees the epoch's first batch as the loader made it. Past
    `deadline` (a time.time(); every rank agrees) the epoch stops with budget.OutOfTime. An `ema`
    (ema.ModelEMA) takes each step into its average.
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
        if deadline is not None and distributed.any_rank(time.time() > deadline, device):
            raise OutOfTime(f"the time budget ended in epoch {epoch}, at iteration {iteration} of {len(data_loader)}")
        if iteration == 0 and first_batch is not None:
            first_batch(images, targets)
        loss, loss_dict = forward_losses(model, images, targets, device, amp=scaler is not None)

        losses = distributed.mean_over_ranks(loss_dict)
        loss_value = sum(losses.values())
        if not math.isfinite(loss_value):
            shown = ", ".join(f"{name} {value:.4g}" for name, value in losses.items())
            raise TrainingDiverged(
                f"epoch {epoch} iteration {iteration}: the loss is {loss_value} ({shown}); "
                f"it diverged at lr {optimizer.param_groups[0]['lr']:g}; lower --lr"
            )

        backward_and_step(loss, optimizer, scaler)
        if ema is not None:
            ema.update(model)
        if warmup is not None:
            warmup.step()

        logger.update(loss=loss_value, **losses)
        logger.update(lr=optimizer.param_groups[0]["lr"])
    return {name: meter.global_avg for name, meter in logger.meters.items() if name != "lr"}


# ---------------------------------------------------------------------------
# Evaluation: ground truth from the targets the loader yields, scored by pycocotools (coco_eval.py).


def evaluate(
    model: torch.nn.Module,
    data_loader: torch.utils.data.DataLoader,
    device: torch.device,
    class_names: list[str] | None = None,
    timings: dict[str, float] | None = None,
    results: dict[str, list[dict]] | None = None,
    samples: list[tuple] | None = None,
    keypoint_sigmas: list[float] | None = None,
    tiling: Tiling | None = None,
    errors: dict[str, Any] | None = None,
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO bbox (and segm, for mask models; keypoints, for keypoint models) stats: {"bbox": [12 floats],
    "segm": [12 floats]} or {"bbox": [...], "keypoints": [10 floats]}, keypoints scored with `keypoint_sigmas`.

    The ground truth comes from the targets the loader yields (the test transform must
    not resize), so no image is decoded twice. Stats are pycocotools' own, in its order.
    With more than one class in `class_names` (background first), the result also holds
    "per_class": {"bbox": {name: AP}, "segm": {name: AP}}, printed as a table.
    Under DDP each rank runs the model on its own share of the test set, with rank 0's
    BatchNorm statistics (those that get saved); rank 0 scores all of them, in image id
    order, and every rank returns the same stats. A `timings` dict receives this rank's
    "images", "model_seconds" and "metric_seconds" (conversion to COCO and COCOeval).
    A `results` dict receives, on rank 0, the detections as COCO results: "bbox" (and
    "segm" or "keypoints"), with the targets' image_id and the model's labels as category_id. A `samples`
    list receives (image, target, output) of this rank's first images, on the CPU, until it
    holds SAMPLES_KEPT: for pictures. With a `tiling` (tiles.py) each image is seen in tiles, or mirrored, as
    it says, the detections merged in the image's coordinates. An `errors` dict receives, on rank 0, the
    confusion matrix and precision-recall curves of errors.py (errors.errors_record). Each image's
    `max_detections` best detections of a class count (COCO's 100; a model built for more: coco_eval.coco_stats).
    """
    distributed.copy_buffers_from_rank_0(model)
    logger = utils.MetricLogger()
    per_image = _detect(model, data_loader, device, logger, samples, tiling)
    # Gathered outside inference mode: under it, torch 2.4's all_gather_object fails on every rank with "Inplace
    # update to inference tensor outside InferenceMode" (the version floors' torchrun tests).
    start = time.time()
    per_image = sorted(
        (item for part in distributed.all_gather_object(per_image) for item in part), key=lambda i: i[0]["id"]
    )
    stats, curves = None, {} if errors is not None else None
    if distributed.is_main_process():
        stats = score_detections(per_image, class_names, keypoint_sigmas, curves, max_detections)
        if errors is not None:
            errors.update(errors_of(per_image, class_names, curves))
    if results is not None and distributed.is_main_process():
        results.update(all_results(per_image))
    if timings is not None:
        timings["images"] = logger.meters["model_time"].count
        timings["model_seconds"] = logger.meters["model_time"].total
        timings["metric_seconds"] = logger.meters["metric_time"].total + time.time() - start
    return distributed.broadcast_object(stats)


def errors_of(per_image: list[tuple], class_names: list[str] | None, curves: dict[str, dict]) -> dict[str, Any]:
    """errors.errors_record of an evaluation: its confusion matrix, and the `curves` score_detections gave."""
    if not class_names:  # name the labels found
        labels = [a["category_id"] for _, gt, found in per_image for a in [*gt, *found.get("bbox", [])]]
        class_names = ["background", *(f"class {k}" for k in range(1, max(labels, default=1) + 1))]
    return errors_record(confusion_matrix(per_image, len(class_names)), curves, class_names)


@torch.inference_mode()
def _detect(model, data_loader, device, logger, samples, tiling) -> list[tuple]:
    """(image record, ground truth, {iou type: results}) for each of this rank's test images (evaluate)."""
    model.eval()
    per_image = []
    for batch_images, targets in logger.log_every(data_loader, 100, "Test:"):
        batch_images = [image.to(device, non_blocking=True) for image in batch_images]
        start = time.time()
        outputs = detect(model, batch_images, tiling)  # masks pasted below a few at a time, not at once
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_time = time.time() - start
        start = time.time()
        for image, target, output in zip(batch_images, targets, outputs, strict=True):
            if samples is not None and len(samples) < SAMPLES_KEPT:  # kept at a screen's size, not the photo's
                picture, shown = shrink(image, target)
                samples.append((picture, shown, shrink(image, {key: v.cpu() for key, v in output.items()})[1]))
            image_id, size = int(target["image_id"]), tuple(image.shape[-2:])
            record, gt = coco_ground_truth(image_id, *size, target)
            per_image.append((record, gt, coco_detections(image_id, output, size)))
        logger.update(model_time=model_time, metric_time=time.time() - start)
    return per_image
