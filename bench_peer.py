"""The peer a CPU user would pick instead of us: Ultralytics YOLO, trained from scratch by its own code on the split our
recipes train on, its predictions scored by our own COCO evaluation (`bench.py --parts recipe --recipes yolov8n`).

    python bench.py --data-path CVPPP_A1 --image-suffix _rgb --mask-suffix _label --parts recipe \
        --recipes yolov8n cpu-box-20min --seed 0 --test-size 16 -j 2 --budget-minutes 20

Ultralytics is AGPL-3.0: the collection never imports it. The benchmark runs it in a process of its own
(`python bench_peer.py PEER TRAIN.PY FLAGS`), only where a user installed it (requirements-bench.txt), and the run
is timed as a recipe's train.py is, from the process's start to its metrics line. In that process:

1. the split train.py makes, from the same dataset flags, --seed and --test-size (loaders.make_loaders);
2. the training images as our reader decodes them, written out as a YOLO layout: each instance's box, or for a -seg
   peer its outline (the largest ring of its mask, traced by contourpy, matplotlib's own) as a polygon; Ultralytics
   validates on two training images, as it must validate on some: it chooses nothing (last.pt is scored);
3. `YOLO(yaml).train(imgsz=..., batch=8, time=...)`, its defaults otherwise: `time` is what remains of
   --budget-minutes when its training starts, less RESERVE_SECONDS for its last validation and the scoring;
4. last.pt's predictions on the test images (conf 0.001, at most 100 an image, masks at the image's size) scored
   by coco_eval.score_detections, as train.py's evaluation scores ours, and written as a metrics.jsonl line;
5. after the budget, its milliseconds per test image with predict()'s defaults (bench_speed.py), in speed.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import contourpy
import numpy as np
import torch
import yaml
from PIL import Image

import train
import utils
from bench_speed import median_ms
from coco_eval import coco_detections, coco_ground_truth, score_detections
from loaders import make_loaders
from masks import instance_masks

ROOT = Path(__file__).resolve().parent
# name: (Ultralytics' model yaml, its imgsz): our recipes' 320, and Ultralytics' default 640
PEERS: dict[str, tuple[str, int]] = {
    "yolov8n": ("yolov8n.yaml", 320),
    "yolov8n-640": ("yolov8n.yaml", 640),
    "yolov8n-seg": ("yolov8n-seg.yaml", 320),
    "yolov8n-seg-640": ("yolov8n-seg.yaml", 640),
}
BATCH, VALIDATION_IMAGES, RESERVE_SECONDS = 8, 2, 20


def check_peers(names: list[str]) -> None:
    """Refuse, in one line, peers asked for where Ultralytics is not installed."""
    peers = [name for name in names if name in PEERS]
    if peers and importlib.util.find_spec("ultralytics") is None:
        raise utils.UserError(
            f"--recipes {' '.join(peers)}: Ultralytics is not installed; pip install -r requirements-bench.txt "
            "(AGPL-3.0, for this benchmark only), or leave the yolov8n peers out"
        )


def peer_command(name: str, train_flags: list[str], deadline: float) -> list[str]:
    """The command that runs peer `name` with train.py's dataset, split and output flags, until `deadline`."""
    return [sys.executable, str(ROOT / "bench_peer.py"), name, str(deadline), *train_flags]


def outline(mask: np.ndarray) -> np.ndarray | None:
    """The largest closed ring around a mask's pixels, as K x 2 (x, y) in COCO's continuous coordinates (pixel
    column i spans [i, i + 1], so the ring's box is the mask's box as ours are); None for an empty mask."""
    padded = np.pad(mask.astype(np.float64), 1)  # rings close at the image's edge
    rings = contourpy.contour_generator(z=padded).lines(0.5)
    if not rings:
        return None

    def area(ring: np.ndarray) -> float:  # the shoelace formula
        x, y = ring[:, 0], ring[:, 1]
        return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2

    return max(rings, key=area) - 0.5  # the padding's pixel, less half a pixel: from centres to edges


def yolo_label_lines(target: dict[str, Any], height: int, width: int, segments: bool) -> list[str]:
    """One image's instances as YOLO label lines: `CLASS xc yc w h`, or `CLASS x1 y1 x2 y2 ...` (an outline),
    normalised to [0, 1]; YOLO class c is our label c + 1."""
    lines, scale = [], np.array([width, height], dtype=np.float64)
    masks = instance_masks(target).numpy() if segments else None
    for k, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True)):
        ring = outline(masks[k] > 0) if masks is not None else None
        if ring is not None and len(ring) >= 3:
            values = np.clip(ring / scale, 0, 1).flatten()
        elif segments:  # an instance without pixels: no outline to learn
            continue
        else:
            x1, y1, x2, y2 = box
            values = np.array([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height])
        lines.append(f"{label - 1} " + " ".join(f"{v:.6f}" for v in values))
    return lines


def write_yolo_layout(dataset: Any, indices: list[int], classes: list[str], folder: Path, segments: bool) -> Path:
    """Images `indices` of `dataset` (decoded as our reader decodes them) as a YOLO layout in `folder`: images/,
    labels/ and data.yaml (returned), which validates on the first VALIDATION_IMAGES of them."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for n, idx in enumerate(indices):
        image, target = dataset.load(idx)
        height, width = image.shape[-2:]
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "images" / f"{n:05d}.png", compress_level=1)
        lines = yolo_label_lines(target, height, width, segments)
        (folder / "labels" / f"{n:05d}.txt").write_text("".join(line + "\n" for line in lines))
    images = sorted(str(path) for path in (folder / "images").iterdir())
    (folder / "validation.txt").write_text("\n".join(images[:VALIDATION_IMAGES]) + "\n")
    data = {"path": str(folder), "train": "images", "val": "validation.txt", "names": dict(enumerate(classes[1:]))}
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def yolo_output(boxes: Any, scores: Any, classes: Any, masks: Any | None) -> dict[str, torch.Tensor]:
    """Ultralytics' detections of one image (xyxy boxes, confidences, class indices, N x H x W masks at the
    image's size or None) as our models' output: labels are classes + 1, masks N x 1 x H x W."""
    output = {
        "boxes": torch.as_tensor(np.asarray(boxes), dtype=torch.float32).reshape(-1, 4),
        "scores": torch.as_tensor(np.asarray(scores), dtype=torch.float32).reshape(-1),
        "labels": torch.as_tensor(np.asarray(classes)).reshape(-1).long() + 1,
    }
    if masks is not None:
        output["masks"] = torch.as_tensor(np.asarray(masks), dtype=torch.float32)[:, None]
    return output


def ultralytics_folder(output_dir: Path) -> dict[str, Any]:
    """Ultralytics' settings for where its run goes: `output_dir`/yolo. The path is made absolute: Ultralytics puts a
    relative `project` under its own runs_dir (its settings' folder), not under the working directory."""
    return {"project": str(Path(output_dir).resolve()), "name": "yolo", "exist_ok": True, "plots": False}


def run(name: str, deadline: float, train_flags: list[str]) -> None:
    """Peer `name` trained and scored as the module docstring says, until `deadline` (time.time()); its metrics
    line in train.py's --output-dir of `train_flags`."""
    from ultralytics import YOLO  # AGPL-3.0: imported here only, in the benchmark's own process

    model_yaml, imgsz = PEERS[name]
    segments = "-seg" in name
    our_model = "maskrcnn_resnet18_fpn" if segments else "fasterrcnn_resnet18_fpn"  # reads masks, or boxes only
    args, _ = train.parse_args([*train_flags, "--model", our_model, "--weights", "none"])
    output_dir = Path(args.output_dir)
    train_loader, _, test_loader, classes, _ = make_loaders(args, torch.device(args.device))
    train_set = train_loader.dataset  # train.py's training images: a Subset of its training dataset
    data_yaml = write_yolo_layout(train_set.dataset, train_set.indices, classes, output_dir / "yolo-data", segments)
    model = YOLO(model_yaml)
    hours = max(deadline - time.time() - RESERVE_SECONDS, 1) / 3600
    device = "cpu" if args.device == "cpu" else args.device.partition(":")[2] or "0"  # Ultralytics' names
    settings = {"imgsz": imgsz, "batch": BATCH, "time": hours, "device": device, "workers": args.workers}
    model.train(data=str(data_yaml), seed=args.seed, verbose=False, **settings, **ultralytics_folder(output_dir))
    epochs = model.trainer.epoch + 1
    last = YOLO(str(Path(model.trainer.save_dir) / "weights" / "last.pt"))
    per_image, bgr = [], []
    for images, targets in test_loader:  # the test images as evaluate() reads them
        image, target = images[0], targets[0]
        pixels = np.ascontiguousarray((image * 255).round().byte().permute(1, 2, 0).numpy()[..., ::-1])  # BGR
        bgr.append(pixels)
        result = last.predict(pixels, imgsz=imgsz, conf=0.001, max_det=100, retina_masks=True, verbose=False)[0]
        masks = None
        if segments:
            masks = np.zeros((0, *image.shape[-2:])) if result.masks is None else result.masks.data.cpu().numpy()
        boxes = result.boxes
        output = yolo_output(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy(), masks)
        image_id, size = int(target["image_id"]), tuple(image.shape[-2:])
        record, gt = coco_ground_truth(image_id, *size, target)
        per_image.append((record, gt, coco_detections(image_id, output, size)))
    stats = score_detections(per_image, classes)
    with open(output_dir / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"epoch": epochs - 1, **stats}) + "\n")
    # its speed as a user's predict() has it (its defaults at its imgsz), after the budget (bench_speed.py)
    speed = median_ms(lambda pixels: last.predict(pixels, imgsz=imgsz, verbose=False), bgr)
    utils.write_json({"ms_per_image": speed}, output_dir / "speed.json")


if __name__ == "__main__":
    try:
        run(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
    except utils.UserError as error:
        utils.exit_with_user_error(error)
