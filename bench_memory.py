"""bench.py --parts memory: what a big photo with many objects costs in memory, through each data route.

    python bench.py --parts memory                         # 4000 x 3000 photos, 300 instances each

Synthetic data, written to a temporary folder: --memory-images photos of --memory-size (4000 x 3000)
with --memory-instances instances each (polygons that do not overlap, on a jittered grid), and the
same instances on copies at the size the model sees (1067 x 800 at --min-size 800). Each route
(a mask folder with 16-bit label PNGs, COCO polygons, YOLO polygons) is measured on both sizes:

- check: `python dataset.py check`;
- train: `python train.py --epochs 1 -j 0` on all but one image (with the epoch's evaluation of the last);
- evaluate: `python train.py --test-only` on that checkpoint's test image;
- read: seconds per sample for reading and transforming (the training transform, in this process).

Each command is a process of its own, and its peak resident memory is the kernel's (the
ru_maxrss of os.wait4), so no measurement inherits another's. A command that runs out of memory
(it is limited to --memory-limit-gb) is reported as failed, not as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

ROUTES = ("folder", "coco", "yolo")


def _polygon(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """A star-shaped polygon of 12 points around `centre`, within `radius`: P x 2, in pixels."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = radius * rng.uniform(0.5, 1.0, 12)
    return centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def model_size(size: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height) of a photo of `size` as the model sees it: 4000 x 3000 is 1067 x 800 at 800 and 1333."""
    scale = min(min_size / min(size), max_size / max(size))
    return round(size[0] * scale), round(size[1] * scale)


def write_photos(
    root: Path, images: int, instances: int, big: tuple[int, int], small: tuple[int, int], seed: int = 0
) -> dict[str, dict[str, list[str]]]:
    """The synthetic data set at both sizes (width, height) and in the three layouts; returns each one's flags."""
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(instances * big[0] / big[1])))
    rows = int(np.ceil(instances / columns))
    cell = min(big[0] / columns, big[1] / rows)
    flags: dict[str, dict[str, list[str]]] = {}
    for size_name in ("big", "small"):
        base = root / size_name
        for folder in ("folder", "coco", "yolo/images", "yolo/labels"):
            (base / folder).mkdir(parents=True)
        flags[size_name] = {
            "folder": ["--data-path", str(base / "folder"), "--mask-suffix", "_mask"],
            "coco": ["--data-path", str(base / "coco"), "--ann-file", str(base / "coco.json")],
            "yolo": ["--data-path", str(base / "yolo")],
        }
    coco: dict[str, dict[str, Any]] = {size: {"images": [], "annotations": []} for size in ("big", "small")}
    for index in range(images):
        cells = [(r, c) for r in range(rows) for c in range(columns)][:instances]
        shapes = [_polygon(rng, (np.array([c, r]) + 0.5 + rng.uniform(-0.1, 0.1, 2)) * cell, 0.45 * cell)
                  for r, c in cells]  # fmt: skip
        colours = rng.integers(40, 256, (len(shapes), 3))
        for size_name, (width, height) in (("big", big), ("small", small)):
            base, scale = root / size_name, np.array([width / big[0], height / big[1]])
            label = np.zeros((height, width), np.uint16)
            pixels = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
            lines = []
            for value, shape in enumerate(shapes, start=1):
                points = (shape * scale).round(2)
                rle = mask_utils.merge(mask_utils.frPyObjects([points.ravel().tolist()], height, width))
                inside = mask_utils.decode(rle).astype(bool)
                label[inside], pixels[inside] = value, colours[value - 1]
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                annotation = {"id": len(coco[size_name]["annotations"]) + 1, "image_id": index + 1, "category_id": 1}
                coco[size_name]["annotations"].append({**annotation, "bbox": [x, y, w, h], "iscrowd": 0,
                                                       "segmentation": [points.ravel().tolist()],
                                                       "area": float(mask_utils.area(rle))})  # fmt: skip
                lines.append("0 " + " ".join(f"{v:.6f}" for v in np.clip(points / [width, height], 0, 1).ravel()))
            name = f"photo{index}"
            photo = Image.fromarray(pixels)
            for folder in ("folder", "coco", "yolo/images"):
                photo.save(base / folder / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(base / "folder" / f"{name}_mask.png")
            (base / "yolo/labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
            record = {"id": index + 1, "file_name": f"{name}.jpg", "height": height, "width": width}
            coco[size_name]["images"].append(record)
    for size_name in ("big", "small"):
        (root / size_name / "yolo/classes.txt").write_text("object\n")
        data = {**coco[size_name], "categories": [{"id": 1, "name": "object"}]}
        (root / size_name / "coco.json").write_text(json.dumps(data))
    return flags


def run_measured(command: list[str], limit_gb: float, cwd: Path) -> dict[str, Any]:
    """Run `command` as a process of its own, limited to `limit_gb` of address space: its peak RSS (MB), its
    seconds, and its exit status (with the last line it printed when it failed)."""
    limit = int(limit_gb * 2**30)

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.time()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=set_limit)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.strip()]
    result = {"peak_mb": usage.ru_maxrss / 1024, "seconds": time.time() - start, "returncode": process.returncode}
    if process.returncode != 0:
        result["error"] = lines[-1][-200:] if lines else "no output"
    return result


def seconds_per_sample(dataset_flags: list[str], min_size: int, max_size: int) -> float:
    """Reading and the training transform (hflip, at the model's size where the pipeline resizes), per sample."""
    from dataset_cli import add_dataset_args, dataset_from_args, training_transform

    parser = argparse.ArgumentParser()
    add_dataset_args(parser)
    args = parser.parse_args(dataset_flags)
    args.augmentation, args.min_size, args.max_size, args.keypoint_flip_map = "hflip", min_size, max_size, None
    args.model = "maskrcnn_resnet50_fpn"
    dataset = dataset_from_args(args, include_crowd=False)
    dataset.transforms = training_transform(args, dataset)
    start = time.time()
    for idx in range(len(dataset)):
        dataset[idx]
    return (time.time() - start) / len(dataset)


def measure_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """bench.py --parts memory: one row per route and size (see the module docstring)."""
    here = Path(__file__).resolve().parent
    python = sys.executable
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        big = tuple(args.memory_size)
        small = model_size(big, args.min_size, args.max_size)
        print(f"writing {args.memory_images} photos of {big[0]} x {big[1]} (and {small[0]} x {small[1]}) with "
              f"{args.memory_instances} instances each")  # fmt: skip
        flags = write_photos(root / "data", args.memory_images, args.memory_instances, big, small)
        for route in args.memory_routes:
            for size_name in ("small", "big"):
                dataset_flags = flags[size_name][route]
                out = root / f"run-{route}-{size_name}"
                train = [python, "train.py", *dataset_flags, "--epochs", "1", "-j", "0", "--test-size", "1",
                         "--weights", "none", "--lr", "0.001", "-b", str(args.batch_size), "--min-size",
                         str(args.min_size), "--max-size", str(args.max_size), "--output-dir", str(out),
                         "--model", args.models[0], "--device", args.device]  # fmt: skip
                shape = "x".join(map(str, big if size_name == "big" else small))
                row = {"route": route, "size": shape, "instances": args.memory_instances}
                measured = {
                    "check": [python, "dataset.py", "check", *dataset_flags],
                    "train": train,
                    "evaluate": [
                        *train,
                        "--test-only",
                        "--resume",
                        str(out / "checkpoint.pth"),
                        "--output-dir",
                        str(out / "test"),
                    ],  # fmt: skip
                }
                for name, command in measured.items():
                    result = run_measured(command, args.memory_limit_gb, here)
                    row[f"{name}_mb"] = result["peak_mb"] if result["returncode"] == 0 else None
                    row[f"{name}_seconds"] = result["seconds"]
                    if "error" in result:
                        row[f"{name}_error"] = result["error"]
                    shown = f"{result['peak_mb']:.0f} MB" if result["returncode"] == 0 else f"failed: {result['error']}"
                    print(f"{route} {size_name} {name}: {shown} in {result['seconds']:.0f} s", flush=True)
                row["read_seconds_per_sample"] = seconds_per_sample(dataset_flags, args.min_size, args.max_size)
                rows.append(row)
    for small_row, row in zip(rows[::2], rows[1::2], strict=True):  # big against small, where both ran
        for name in ("check", "train", "evaluate"):
            big_mb, small_mb = row[f"{name}_mb"], small_row[f"{name}_mb"]
            row[f"{name}_ratio"] = big_mb / small_mb if big_mb and small_mb else None
    return rows


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--memory-size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"), help="memory: the photos' size")
    add("--memory-images", type=int, default=3, help="memory: photos per route (default: %(default)s)")
    add("--memory-instances", type=int, default=300, help="memory: instances per photo (default: %(default)s)")
    add("--memory-routes", nargs="+", choices=ROUTES, default=list(ROUTES), help="memory: the routes (default: all)")
    add("--memory-limit-gb", type=float, default=20, help="memory: address space per command (default: 20)")
