"""bench.py --parts memory: what a big photo with many objects costs in memory, through each data route.

    python bench.py --parts memory                         # 4000 x 3000 photos, 300 instances each
    python bench.py --parts memory --models maskrcnn_resnet18_fpn maskrcnn_resnet50_fpn

Synthetic data, written to a temporary folder: --memory-images photos of --memory-size (4000 x 3000)
with --memory-instances instances each (polygons that do not overlap, on a jittered grid), and the
same instances on copies at the size the model sees (1067 x 800 at --min-size 800). Each route
(a mask folder with 16-bit label PNGs, COCO polygons, YOLO polygons) is measured on both sizes, for
each of --models:

- check: `python dataset.py check` (once a route and size: it builds no model);
- train: `python train.py --epochs 1 -j 0` on all but one photo, as a user runs it: the training loop, the
  epoch's evaluation of the last photo, and what the run writes after it (the checkpoints, best_predictions.png,
  curves.png), one process; and each of those three stages' own peak (training_mb, evaluation_mb, pictures_mb);
- evaluate: `python train.py --test-only` on that checkpoint's test photo;
- predict: `python predict.py` on that photo with --score-threshold 0 (every detection pasted and drawn);
- read: seconds per sample for reading and transforming (the training transform, in this process).

Each command is a process of its own, and its peak resident memory is the kernel's (the
ru_maxrss of os.wait4), so no measurement inherits another's. A stage's peak is sampled (the
process's resident memory every 20 ms, each sample placed in the stage the run's printed lines
say it is in), so it can miss a spike shorter than that. A command that runs out of memory
(it is limited to --memory-limit-gb) is reported as failed, not as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

ROUTES = ("folder", "coco", "yolo")
COMMANDS = ("check", "train", "evaluate", "predict")
STAGES = ("training", "evaluation", "pictures")  # of the train command: its peaks apart
SAMPLE_SECONDS = 0.02


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
    seconds, its exit status (with the last line it printed when it failed), and for a train.py run the sampled
    peak of each of its STAGES (`stage_peaks_mb`)."""
    limit = int(limit_gb * 2**30)

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.time()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line printed when it happens: the stages' marks
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment, preexec_fn=set_limit)  # fmt: skip
    lines: list[tuple[float, str]] = []
    samples: list[tuple[float, float]] = []
    threads = [threading.Thread(target=_read_lines, args=(process.stdout, lines)),
               threading.Thread(target=_sample_rss, args=(process.pid, samples))]  # fmt: skip
    for thread in threads:
        thread.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    for thread in threads:
        thread.join()
    printed = [line for _, line in lines if line.strip()]
    result = {"peak_mb": usage.ru_maxrss / 1024, "seconds": time.time() - start, "returncode": process.returncode,
              "stage_peaks_mb": stage_peaks(lines, samples)}  # fmt: skip
    if process.returncode != 0:
        result["error"] = printed[-1][-200:] if printed else "no output"
    return result


def _read_lines(stream, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.monotonic(), line.rstrip("\n")))


def _sample_rss(pid: int, samples: list[tuple[float, float]]) -> None:
    """(time, resident MB) of process `pid` every SAMPLE_SECONDS until it ends (an ended process has no VmRSS)."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            rss = next((line for line in status.read_text().splitlines() if line.startswith("VmRSS:")), None)
        except OSError:
            return
        if rss is None:
            return
        samples.append((time.monotonic(), int(rss.split()[1]) / 1024))
        time.sleep(SAMPLE_SECONDS)


def stage_peaks(lines: list[tuple[float, str]], samples: list[tuple[float, float]]) -> dict[str, float | None]:
    """The largest sample in each of a train.py run's STAGES, told apart by what it printed: the training loop ends
    with its last "Epoch: [N] Total time" line, the evaluation with its last COCO summary line (" Average ..."),
    and the pictures stage is what follows (the checkpoints, best_predictions.png, curves.png). None for a stage
    that the printed lines do not show (another command, a run that failed)."""
    ends = [max((when for when, line in lines if test(line)), default=None) for test in (
        lambda line: line.startswith("Epoch: [") and "] Total time" in line,
        lambda line: line.startswith(" Average "),
    )]  # fmt: skip
    if None in ends:
        return dict.fromkeys(STAGES)
    bounds = [(float("-inf"), ends[0]), (ends[0], ends[1]), (ends[1], float("inf"))]
    return {stage: max((mb for when, mb in samples if low < when <= high), default=None)
            for stage, (low, high) in zip(STAGES, bounds, strict=True)}  # fmt: skip


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
    """bench.py --parts memory: one row per route, size and model (see the module docstring)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        big = tuple(args.memory_size)
        small = model_size(big, args.min_size, args.max_size)
        print(f"writing {args.memory_images} photos of {big[0]} x {big[1]} (and {small[0]} x {small[1]}) with "
              f"{args.memory_instances} instances each")  # fmt: skip
        flags = write_photos(root / "data", args.memory_images, args.memory_instances, big, small)
        for route in args.memory_routes:
            for size_name, size in (("small", small), ("big", big)):
                dataset_flags = flags[size_name][route]
                check_command = [sys.executable, "dataset.py", "check", *dataset_flags]
                check = _measure(args, "check", check_command, f"{route} {size_name}")
                seconds = seconds_per_sample(dataset_flags, args.min_size, args.max_size)
                for model in args.models:
                    row = {"route": route, "photo": size_name, "size": "x".join(map(str, size)), "model": model,
                           "instances": args.memory_instances, **check}  # fmt: skip
                    out = root / f"run-{route}-{size_name}-{model}"
                    commands = _commands(args, dataset_flags, model, out)
                    row["train_command"] = shlex.join(commands["train"][1:])  # what was measured, --memory-args too
                    for name, command in commands.items():
                        row.update(_measure(args, name, command, f"{route} {size_name} {model}"))
                    row["read_seconds_per_sample"] = seconds
                    rows.append(row)
    small_rows = {(row["route"], row["model"]): row for row in rows if row["photo"] == "small"}
    for row in rows:  # big against small, where both ran
        small_row = small_rows[row["route"], row["model"]]
        for name in (*COMMANDS, *STAGES):
            big_mb, small_mb = row.get(f"{name}_mb"), small_row.get(f"{name}_mb")
            row[f"{name}_ratio"] = big_mb / small_mb if big_mb and small_mb else None
    return rows


def _commands(args: argparse.Namespace, dataset_flags: list[str], model: str, out: Path) -> dict[str, list[str]]:
    """The train, evaluate and predict commands of one route, size and model, writing into `out`."""
    python = sys.executable
    train = [python, "train.py", *dataset_flags, "--epochs", "1", "-j", "0", "--test-size", "1", "--weights",
             "none", "--lr", "0.001", "-b", str(args.batch_size), "--min-size", str(args.min_size), "--max-size",
             str(args.max_size), "--output-dir", str(out), "--model", model, "--device", args.device,
             *shlex.split(args.memory_args)]  # fmt: skip
    photos = Path(dataset_flags[dataset_flags.index("--data-path") + 1])
    photos = photos / "images" if (photos / "images").is_dir() else photos  # the YOLO layout's
    test_photo = sorted(photos.glob("*.jpg"))[-1]  # with --test-size 1 and seed 0, any photo serves: all alike
    return {
        "train": train,
        "evaluate": [*train, "--test-only", "--resume", str(out / "checkpoint.pth"), "--output-dir", str(out / "t")],
        "predict": [python, "predict.py", "--checkpoint", str(out / "best.pth"), str(test_photo), "--output-dir",
                    str(out / "predictions"), "--score-threshold", "0", "--device", args.device],
    }  # fmt: skip


def _measure(args: argparse.Namespace, name: str, command: list[str], what: str) -> dict[str, Any]:
    """`name`_mb and `name`_seconds of `command` (`name`_error where it failed), and its stages' peaks."""
    result = run_measured(command, args.memory_limit_gb, Path(__file__).resolve().parent)
    failed = result["returncode"] != 0
    row = {f"{name}_mb": None if failed else result["peak_mb"], f"{name}_seconds": result["seconds"]}
    if failed:
        row[f"{name}_error"] = result["error"]
    if name == "train":
        row.update({f"{stage}_mb": mb for stage, mb in result["stage_peaks_mb"].items()})
    shown = f"failed: {result['error']}" if failed else f"{result['peak_mb']:.0f} MB"
    print(f"{what} {name}: {shown} in {result['seconds']:.0f} s", flush=True)
    return row


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--memory-size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"), help="memory: the photos' size")
    add("--memory-images", type=int, default=3, help="memory: photos per route (default: %(default)s)")
    add("--memory-instances", type=int, default=300, help="memory: instances per photo (default: %(default)s)")
    add("--memory-routes", nargs="+", choices=ROUTES, default=list(ROUTES), help="memory: the routes (default: all)")
    add("--memory-limit-gb", type=float, default=20, help="memory: address space per command (default: 20)")
    add(
        "--memory-args",
        default="",
        help="memory: train.py flags added to each training run, e.g. "
        '--memory-args="--fpn-channels 128 --mask-head 2 128" for the cpu-* recipes\' narrower model',
    )
