"""Milliseconds per image of a trained model, as a user's prediction computes its detections (bench.py --parts recipe
reports it beside each recipe's AP, and the peer's beside the peer's).

Ours: best.pth rebuilt as predict.py rebuilds it, each held-out image alone through the model (which resizes it to the
recipe's size), its masks kept unpasted and then pasted at the image's size for the detections above predict.py's
default --score-threshold, as predict.py does; drawing and writing files are left out. The peer's is timed the same
way in its own process (bench_peer.py): Ultralytics' predict() with its defaults at the peer's imgsz. The first image
warms up and is not counted; the median of the others is reported, so a slow outlier (a page fault, a thread
waking) does not move it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

import train
from checkpoint import model_from_checkpoint
from loaders import make_loaders
from predict import get_args_parser as predict_args
from tiles import detect


def median_ms(predict: Callable[[Any], Any], images: Iterable[Any]) -> float | None:
    """The median milliseconds of predict(image) over `images`, the first (a warm-up) left out; None for fewer
    than two images."""
    seconds = []
    for image in images:
        start = time.perf_counter()
        predict(image)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:]) * 1000 if len(seconds) > 1 else None


def held_out_images(train_flags: list[str], model: str) -> list[torch.Tensor]:
    """The held-out images of train.py's split for `train_flags` (its dataset, --seed and --test-size), as
    evaluation reads them."""
    args, _ = train.parse_args([*train_flags, "--model", model, "--weights", "none"])
    _, _, test_loader, _, _ = make_loaders(args, torch.device(args.device))
    return [images[0] for images, _ in test_loader]


@torch.inference_mode()
def ours_ms_per_image(checkpoint: str | Path, train_flags: list[str]) -> float | None:
    """Median milliseconds per held-out image of predict.py's model from `checkpoint` (module docstring)."""
    model, config = model_from_checkpoint(checkpoint)
    model.eval()
    threshold = predict_args().get_default("score_threshold")  # predict.py's default --score-threshold

    def predict(image: torch.Tensor) -> None:
        (output,) = detect(model, [image])  # as predict.py: masks unpasted, then pasted for what is kept
        if "mask_probs" in output:
            keep = output["scores"] >= threshold
            paste_masks_in_image(output["mask_probs"][keep], output["boxes"][keep], tuple(image.shape[-2:]))

    return median_ms(predict, held_out_images(train_flags, config["name"]))
