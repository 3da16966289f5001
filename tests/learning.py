"""Synthetic data that every model can overfit, and the train.py run that makes it learn (tests/test_learning.py).

Four 96 x 96 images of large, distinct objects: red squares (category 1) and blue discs (category 2) on a dark
noisy ground, 1 to 3 to an image, 29 to 53 pixels across, as a COCO json with polygons. The training folder
holds `COPIES` copies of each (an epoch of 16 steps at batch 2), the test folder the four originals, so that
the test images are the very images trained on: the test proves heads, sizes and box conventions, not
generalisation. The keypoint variant draws figures (one category) with a white head, a red left hand and a blue
right hand, each point on a dot of its colour.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SIZE = 96
COPIES = 8
# per image: (category, x1, y1, x2, y2)
SHAPES = [
    [(1, 6, 8, 45, 52), (2, 52, 38, 90, 88)],
    [(2, 8, 6, 52, 45), (1, 50, 48, 91, 90)],
    [(1, 22, 18, 75, 78)],
    [(2, 4, 52, 42, 92), (1, 45, 4, 90, 42), (2, 54, 54, 87, 87)],
]
COLOURS = {1: (230, 60, 40), 2: (40, 120, 240)}
KEYPOINT_NAMES = ["head", "left_hand", "right_hand"]
KEYPOINT_COLOURS = [(250, 250, 250), (250, 40, 40), (40, 40, 250)]


def _ellipse(x1: int, y1: int, x2: int, y2: int, corners: int = 32) -> list[float]:
    """The polygon of the ellipse inscribed in a box, as COCO's [x, y, x, y, ...]."""
    angles = np.linspace(0, 2 * np.pi, corners, endpoint=False)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    return [round(float(v), 2) for a in angles for v in (cx + rx * np.cos(a), cy + ry * np.sin(a))]


def write_shapes(folder: Path, copies: int, keypoints: bool = False) -> Path:
    """`copies` copies of each image of SHAPES in `folder`, with their COCO json (returned): shapes, or figures with
    keypoints."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index, objects in enumerate(SHAPES):
        pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        found = []
        for category, x1, y1, x2, y2 in objects:
            polygon = [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]
            if keypoints:  # a figure: a green body, three dots
                pixels[y1:y2, x1:x2] = (60, 160, 60)
                points = [((x1 + x2) // 2, y1 + 3), (x1 + 3, (y1 + y2) // 2), (x2 - 4, (y1 + y2) // 2)]
                for (x, y), colour in zip(points, KEYPOINT_COLOURS, strict=True):
                    pixels[y - 2 : y + 3, x - 2 : x + 3] = colour
                extra = {"keypoints": [v for x, y in points for v in (x, y, 2)], "num_keypoints": 3}
                category = 1
            elif category == 1:
                pixels[y1:y2, x1:x2] = COLOURS[1]
                extra = {}
            else:
                polygon = _ellipse(x1, y1, x2, y2)
                mask = Image.new("L", (SIZE, SIZE))
                ImageDraw.Draw(mask).polygon(polygon, fill=1)
                pixels[np.asarray(mask) > 0] = COLOURS[2]
                extra = {}
            box = [x1, y1, x2 - x1, y2 - y1]
            found.append({"category_id": category, "bbox": box, "area": float(box[2] * box[3]),
                          "segmentation": [polygon], "iscrowd": 0, **extra})  # fmt: skip
        for copy in range(copies):
            name = f"shape{index}_{copy}.png"
            Image.fromarray(pixels).save(folder / name)
            images.append({"id": len(images) + 1, "file_name": name, "height": SIZE, "width": SIZE})
            for annotation in found:
                annotations.append({**annotation, "id": len(annotations) + 1, "image_id": images[-1]["id"]})
    if keypoints:
        categories = [{"id": 1, "name": "figure", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]}]
    else:
        categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _few_rois(sampled: int = 32) -> list[str]:
    """The R-CNNs sample fewer RoIs, keep fewer proposals and detections than their defaults (512; 2000 in training,
    1000 when predicting; 100): a few large objects need no more, and the heads' cost is per RoI."""
    return ["--box-batch-size-per-image", str(sampled), "--rpn-pre-nms-top-n-train", "200",
            "--rpn-post-nms-top-n-train", "100", "--rpn-post-nms-top-n-test", "100",
            "--box-detections-per-img", "10"]  # fmt: skip


_NARROW_HEADS = ["--box-head", "256", "--rpn-head", "256"]  # the MobileNetV2 models': their 1280 channels, narrowed


def _flags(size: int | None, epochs: int, lr: float, *more: str) -> list[str]:
    sizes = [] if size is None else ["--min-size", str(size), "--max-size", str(size)]
    return [*sizes, "--epochs", str(epochs), "--lr", str(lr), *more]


# What each model needs to overfit the shapes, measured on the 2-core CPU (AMD EPYC, torch 2.14.1) from --seed 0, AdamW
# and a cosine schedule: an input size (None: the builder's own), epochs of 16 steps (SSD300's: 32 of one image), a
# learning rate, and other flags; the smallest input and the fewest epochs found to reach AP >= 0.5 with a margin.
# The ResNet-50 R-CNNs without normalisation in their FPN (v1) learn sooner at lr 3e-4 than at 1e-3, where their
# loss jumps after the warm-up; the MobileNetV3 FPNs, which see only strides 16 and 32, need 320 pixels; SSDlite and
# the RetinaNets learn sooner without flips.
LEARNING: dict[str, list[str]] = {
    "fasterrcnn_resnet18_fpn": _flags(96, 4, 0.001, *_few_rois()),
    # 16 sampled RoIs where 32 cost more and proved no more (one thread, two runs side by side, Dec 6): the R50 (v1)
    # 0.675 in 36 s against 0.677 in 45 s (4 epochs: 0.532 and 0.611); the v2 0.693 in 46 s against 0.654 in 62 s
    # (3 epochs: 0.548); the ResNet-18 0.654 in 23 s against 0.656 in 27 s (kept at 32: little to gain); the
    # MobileNetV3 Faster R-CNN 0.490 (kept at 32) and the ResNet-18 Mask R-CNN 0.470 / mask 0.690 (kept at 32)
    "fasterrcnn_resnet50_fpn": _flags(96, 5, 0.0003, *_few_rois(16)),
    "fasterrcnn_resnet50_fpn_v2": _flags(96, 4, 0.001, *_few_rois(16)),  # 32 RoIs: 0.654 in 63 s; 5 epochs 0.701
    # the MobileNetV3 FPNs at 0.003 learned on one AMD EPYC and not on the next (Zen 5: box AP 0.505, and the Mask
    # R-CNN's loss jumped to 10, box AP 0.05); at 0.001 without flips the AP climbs smoothly to 0.85-0.92 there.
    # Fewer epochs, measured with one thread (a CI worker's) on the Zen 4 EPYC: 5 reach box AP 0.673 (6: 0.813 in
    # 39 s; 8: 0.794 in 50 s); the Mask R-CNN's 6 reach 0.745 / mask 0.807 in 85 s (7: 0.885 / 0.904 in 98 s; 5: 0.720
    # / 0.860, but 4 ended at 0.000: two epochs of margin). With 16 sampled RoIs, its 6 reach 0.653 / 0.817 in 55 s
    # where 32 took 89 s in CI, and 5 still pass (0.582 / 0.719)
    "fasterrcnn_mobilenet_v3_large_fpn": _flags(320, 5, 0.001, "--augmentation", "none", *_few_rois()),
    # its builder's 320 / 640: the same model at 320 px, the same 0.673 in 5 epochs
    "fasterrcnn_mobilenet_v3_large_320_fpn": _flags(None, 5, 0.001, "--augmentation", "none", *_few_rois()),
    "maskrcnn_resnet18_fpn": _flags(96, 3, 0.001, *_few_rois()),  # 0.726 / mask 0.785 (one thread); 4: 0.716 / 0.844
    # the R50 mask heads (4 convolutions of 256 on each positive RoI) cost most: with 16 RoIs sampled, box / mask
    # AP 0.65 / 0.77 and 0.78 / 0.85 in 45 s and 63 s, against 0.71 / 0.76 and 0.63 / 0.83 in 56 s and 81 s with 32
    "maskrcnn_resnet50_fpn": _flags(96, 5, 0.0003, *_few_rois(16)),
    # the v2's box and mask heads (4 convolutions and BatchNorm each) cost most per RoI: on the Xeon with AMX (Dec 7,
    # one thread, every epoch evaluated) 8 sampled RoIs reach 0.670 / mask 0.729 in 91 s, 16 reach 0.688 / 0.900 in
    # 114 s (the 4th of 5 epochs: 0.523 / 0.713 with 8, 0.600 / 0.732 with 16); with two threads 0.641 / 0.800
    "maskrcnn_resnet50_fpn_v2": _flags(96, 5, 0.001, *_few_rois(8)),
    "maskrcnn_mobilenet_v3_large_fpn": _flags(320, 6, 0.001, "--augmentation", "none", *_few_rois(16)),
    # the tutorial's MobileNetV2 models: one map at stride 32 (8 x 8 at 256 px), 16 sampled RoIs: their RoIAlign
    # (1280 channels, its backward one thread on a CPU) and 64 M parameter box head cost per RoI. Faster R-CNN: box AP
    # 0.685 in 129 s with 16, against 0.847 in 157 s with 32; with 8, 0.651 in 73 s (two threads) and 0.663 in 112 s
    # (one, beside another run), against 0.676 in 139 s with 16 there. The Mask R-CNN's box AP is the slowest to come
    # (one map at stride 32): with flips and 16 RoIs, 10 epochs ended at 0.395 on the Zen 5 EPYC (0.467 the epoch
    # before); without flips, 12 epochs climb steadily, to 0.766 (mask AP 0.819) in 150 s with 16 RoIs, 0.793 (0.838)
    # in 113 s with 8. With one thread on the Zen 4 EPYC: the Faster R-CNN without flips reaches 0.690 in 7 epochs
    # (91 s; with flips, 0.663 in 10, 139 s; at 192 px 0.664 in 10, 123 s, and 0.592 in 7, 96 s; with 4 RoIs 0.326 in
    # 99 s: what costs is its 64 M parameter layer, read and written whole each step; at 320 px 0.404 in 5); the Mask
    # R-CNN at 256 px 0.734 / mask 0.803 in 9 (170 s), 0.491 / 0.719 in 8, 0.392 / 0.545 in 7, 0.684 / 0.895 in 12
    # (228 s); at 320 px (a 10 x 10 map) 0.655 / 0.792 in 7 (151 s), 0.592 / 0.758 in 6 (131 s), 0.278 / 0.341 in 5:
    # sooner, and an epoch fewer still passes (Dec 6, two runs side by side as in CI; lr 0.003 at 256 px diverged).
    # Their box head 256 wide (--box-head, a user's flag; 16 M parameters, not 64): the Faster R-CNN 0.601 in 73 s
    # (against 0.690 in 103 s in CI; 6 epochs 0.411; 128 wide 0.512 in 66 s), the Mask R-CNN 0.660 / mask 0.771 in
    # 123 s (against 0.655 / 0.792 in 170 s; 6 epochs 0.629 / 0.774; 128 wide 0.683 / 0.782 in 116 s). What they
    # prove is the worked example's backbone, anchors and RoI pooling; torchvision's 1024-wide box head, 1280-wide RPN
    # head and 4 x 256 mask head on them get their losses, gradients and predictions in tests/test_model.py, as every
    # model's heads do.
    # On the Xeon with AMX (Dec 6, one thread) the Faster R-CNN's 7 epochs ended at 0.516 (0.601 on the Zen 4): too
    # near 0.5 for a CPU not yet tried; 8 reach 0.583 there (0.38 at the 7th of 8): 86 s became 107 s in CI.
    # Their RPN head 256 wide (--rpn-head, a user's flag; torchvision's convolution keeps the map's 1280 channels,
    # 14.7 M weights at every position): on the Xeon with AMX (Dec 7, one thread, every epoch evaluated) the Mask
    # R-CNN's 7 epochs reach 0.583 / mask 0.728 in 104 s against 0.535 / 0.709 in 175 s (its box AP by epoch: 0.089,
    # 0.259, 0.726, 0.583 from the 4th), the Faster R-CNN's 8 reach 0.680 in 62 s against 0.583 in 127 s (7th: 0.618);
    # in CI, two runs at once, 89 s and 54 s where they took 152 s and 109 s. The Mask R-CNN's mask head 2 x 128
    # (torchvision's 4 x 256 reads the 1280 channels on each positive RoI at 14 x 14): 0.702 / 0.805 in 88 s (box AP
    # by epoch: 0.025, 0.361, 0.702 from the 5th). With two threads (pytest without -n): 0.725 / 0.801 in 63 s, and the
    # Faster R-CNN 0.766 in 46 s
    "fasterrcnn_mobilenet_v2": _flags(256, 8, 0.001, "--augmentation", "none", *_NARROW_HEADS, *_few_rois(8)),
    "maskrcnn_mobilenet_v2": _flags(
        320, 7, 0.002, "--augmentation", "none", *_NARROW_HEADS, "--mask-head", "2", "128", *_few_rois(8)
    ),
    # the keypoint head (8 convolutions of 512 channels on each positive RoI) costs most: with 8 sampled RoIs, box /
    # keypoint AP 0.588 / 0.893 in 63 s with one thread, against 0.628 / 0.986 in 103 s with 16. On the Xeon with AMX
    # (Dec 6, one thread) 3 epochs end at 0.529 / 0.841, and 4 at 0.457 / 0.882: its box AP is not yet steady here
    "keypointrcnn_resnet50_fpn": _flags(96, 3, 0.0003, *_few_rois(8)),
    # no norm in its heads: slowest. 8 epochs reach 0.628 in 59 s with one thread (Zen 4); 10: 0.847 in 74 s
    "retinanet_resnet50_fpn": _flags(96, 8, 0.0003, "--augmentation", "none"),
    # 8 epochs reached 0.740 with two threads and 0.493 with one (a pytest-xdist worker's); 10: 0.794 and 0.627
    "retinanet_resnet50_fpn_v2": _flags(96, 10, 0.001, "--augmentation", "none"),
    "fcos_resnet50_fpn": _flags(96, 4, 0.001),  # 0.732 in 29 s (one thread); 5: 0.751 in 36 s
    # 268: its smallest side; VGG without BatchNorm, so batches of one image (twice the steps for the same work):
    # 1.5 s an image with one thread. On the Zen 4 EPYC, one thread, without flips at lr 3e-4: 2 epochs at batch 1
    # reach box AP 0.650 in 101 s; at batch 2, 3 epochs 0.766 in 146 s, 2 epochs 0.396. With flips at 2e-4, 4 epochs
    # reached 0.707 on the Zen 5 EPYC and 0.639 in CI on the Zen 4 (194 s), 3 epochs 0.502 on the Zen 5
    "ssd300_vgg16": _flags(None, 2, 0.0003, "--min-size", "268", "--augmentation", "none", "--batch-size", "1"),
    "ssdlite320_mobilenet_v3_large": _flags(None, 16, 0.006, "--min-size", "192", "--augmentation", "none"),
}


# The runs whose last epoch tests/test_box_models.py then evaluates, predicts and exports: torchvision's one-stage box
# detectors, and its Faster R-CNN with its own sizes. The others' runs keep no weights (an R50's are 170 MB).
PREDICTED = [
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn",
]  # fmt: skip


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while a learning run trains: how a convolution sums its terms depends on the number of
    threads, and with it the last digits of every step and the AP a run ends at. LEARNING's margins were measured
    with one, as CI's two workers on 2 cores run; with two (pytest without -n on 2 cores), the MobileNetV3 Faster
    R-CNN ended at box AP 0.484 and the RetinaNet at 0.487 on the Xeon with AMX (Dec 7), and a machine of more cores
    gives each worker more. One thread makes a run the same wherever the CPU is the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def learning_command(name: str, root: Path, flags: list[str]) -> list[str]:
    """train.py's arguments for model `name` from scratch on the data in `root` (train/, test/), with `flags`: on the
    CPU, where LEARNING's margins were measured (a GPU sums in other orders too), whatever the machine has."""
    keypoints = name.startswith("keypoint")
    train = write_shapes(root / "train", COPIES, keypoints)
    test = write_shapes(root / "test", 1, keypoints)
    return [
        "--dataset", "coco", "--data-path", str(train.parent), "--ann-file", str(train),
        "--val-data-path", str(test.parent), "--val-ann-file", str(test), "--model", name, "--weights", "none",
        "--opt", "adamw", "--lr-scheduler", "cosineannealinglr", "-j", "0", "--aspect-ratio-group-factor", "-1",
        "--print-freq", "100", "--device", "cpu", "--output-dir", str(root / "run"), *flags,
    ]  # fmt: skip
