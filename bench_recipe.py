"""bench.py --parts recipe: held-out AP against wall-clock minutes, for training recipes and for the tutorial's.

Each of our recipes is a train.py command (`--recipe NAME` for recipe.py's, or an EXPERIMENTS
line, plus the dataset flags, --seed, --test-size and any --recipe-args), run as a user runs
it, in its own process; an epoch's point is the time from the command's start until its metrics.jsonl line appeared, so
start-up, the pre-flight read, training and evaluation are all counted. A recipe that
outlives --budget-minutes is stopped, and its points so far stand.

"tutorial" is the tutorial's recipe run by the tutorial's code (its Mask R-CNN R50, or with `--models
fasterrcnn_resnet50_fpn` its first model, Faster R-CNN R50, for boxes): its transforms (a flip),
its loop (torchvision's reference train_one_epoch), SGD (momentum 0.9, weight decay 5e-4)
with StepLR(3, 0.1), and the reference's evaluation, after every epoch, on the same split
of the same data, at bench.py's --min-size, --max-size, --lr and -b, for as many epochs as
the budget allows. Only its reader is ours: the tutorial's reads CVPPP's 4-bit palette
masks wrong (see bench.py --parts epoch).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2 as T

import utils
from bench_peer import PEERS, peer_command
from bench_speed import ours_ms_per_image
from coco_eval import selection_score
from curves import new_figure
from dataset_cli import dataset_from_args
from masks import instance_masks
from model import get_model, learns_masks
from recipe import RECIPES as TRAIN_RECIPES
from recipe import make_optimizer
from split import split_indices
from tutorial import evaluate_like_the_tutorial, train_like_the_tutorial, tutorial_transform

ROOT = Path(__file__).resolve().parent
TUTORIAL_MODELS = ("maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn")  # the two models the tutorial fine-tunes
# Comparisons that are not recipes a user picks, as train.py flags (the dataset, split and output flags are added).
EXPERIMENTS: dict[str, list[str]] = {
    # The tutorial's hyper-parameters through train.py: the same model and recipe as "tutorial".
    "tutorial-hparams": ["--model", "maskrcnn_resnet50_fpn", "--weights", "none", "--lr", "0.001", "-b", "2",
                         "--min-size", "320", "--max-size", "640", "--epochs", "8", "--lr-step-size", "3"],
    # cpu-12min's model, sizes and schedule with SGD, which AdamW beat on --seed 1 (0.328 against 0.301 after 10).
    "r18-light-sgd": ["--recipe", "cpu-12min", "--opt", "sgd", "--lr", "0.002", "--weight-decay", "0.0005",
                      "--epochs", "10"],
}  # fmt: skip


def _family(model: str, lr: float, *more: str) -> list[str]:
    """A model family from scratch in 10 minutes with the box recipe's optimizer, schedule and augmentation."""
    return ["--model", model, "--weights", "none", "-b", "2", "--augmentation", "topdown", "--opt", "adamw",
            "--lr", str(lr), "--weight-decay", "0.05", "--norm-weight-decay", "0", "--lr-scheduler",
            "cosineannealinglr", "--time-budget", "10", *more]  # fmt: skip


# Every model family from scratch in 10 minutes (docs/results.md). Nothing here was chosen on CVPPP: each lr is the
# family's learning-test lr (tests/learning.py) x 0.3, the ratio of the box recipe's lr (chosen on --seed 1) to
# Faster R-CNN R18's learning-test lr; the input is the recipe's 320 / 640, or the builder's own where the learning
# tests showed the family needs it (SSD's squares; MobileNetV3's FPN, which sees only strides 16 and 32, 800 / 1333).
FAMILIES: dict[str, list[str]] = {
    "family-faster-r18": ["--recipe", "cpu-box-20min", "--time-budget", "10"],
    "family-faster-mnv3": _family("fasterrcnn_mobilenet_v3_large_fpn", 0.001, "--box-batch-size-per-image", "128"),
    "family-retinanet": _family("retinanet_resnet50_fpn_v2", 0.0003, "--min-size", "320", "--max-size", "640"),
    "family-fcos": _family("fcos_resnet50_fpn", 0.0003, "--min-size", "320", "--max-size", "640"),
    "family-ssd300": _family("ssd300_vgg16", 0.00006),
    "family-ssdlite": _family("ssdlite320_mobilenet_v3_large", 0.002),
    "family-mask-r18": ["--recipe", "cpu-12min", "--time-budget", "10", "--fpn-channels", "256", "--no-amp"],
}  # fmt: skip
# Issue 31's levers, each alone on its recipe, to be compared with the recipe on --seed 1 (docs/results.md, "Levers").
# cpu-12min carries the two that won (a 128-channel pyramid, bfloat16 autocast): the others take them out again.
LEVERS: dict[str, list[str]] = {
    "lever-none": ["--recipe", "cpu-12min", "--fpn-channels", "256", "--no-amp"],  # cpu-12min before its levers
    "lever-fpn128": ["--recipe", "cpu-12min", "--no-amp"],  # the pyramid at half torchvision's width
    "lever-bf16": ["--recipe", "cpu-12min", "--fpn-channels", "256"],  # bfloat16 autocast, where the CPU has it
    "lever-box-none": ["--recipe", "cpu-box-20min", "--fpn-channels", "256", "--no-amp"],  # before its levers
    "lever-box-fpn128": ["--recipe", "cpu-box-20min", "--no-amp"],
    "lever-box-bf16": ["--recipe", "cpu-box-20min", "--fpn-channels", "256"],
    "lever-ema": ["--recipe", "cpu-12min", "--model-ema"],  # a moving average of the weights, decay 0.99
    "lever-b4": ["--recipe", "cpu-12min", "-b", "4", "--lr", "0.0002"],  # cpu-12min's batch and lr before batch 2 won
    "lever-anchors": ["--recipe", "cpu-12min", "--anchor-sizes", "auto"],  # anchors fitted to the training boxes
    "lever-box-anchors": ["--recipe", "cpu-box-20min", "--anchor-sizes", "auto"],
    "lever-mosaic": ["--recipe", "cpu-12min", "--mosaic", "1.0"],  # Ultralytics' mosaic, closed for the last tenth
    "lever-box-mosaic": ["--recipe", "cpu-box-20min", "--mosaic", "1.0"],
    "lever-box-head": ["--recipe", "cpu-12min", "--box-head", "256"],  # the box head's layers a quarter as wide
    "lever-box-box-head": ["--recipe", "cpu-box-20min", "--box-head", "256"],
    # cpu-43min's input: 320 pixels (cpu-12min's, before 416 won on --seed 1) and 480 (CVPPP's own size, nearly)
    "lever-43-320": ["--recipe", "cpu-43min", "--min-size", "320", "--max-size", "640"],
    "lever-43-480": ["--recipe", "cpu-43min", "--min-size", "480", "--max-size", "960"],
    # at 43 minutes, where 12 were too few to tell: shorter sides from 0.8 x to 1.2 x 416 (332-480), and mosaic
    "lever-43-scale": ["--recipe", "cpu-43min", "--scale-range", "0.8", "1.2"],
    "lever-43-mosaic": ["--recipe", "cpu-43min", "--mosaic", "1.0"],
    # cpu-43min before torchvision's own mask head (four 256-channel convolutions) won there: cpu-12min's 2 x 128
    "lever-43-light-mask-head": ["--recipe", "cpu-43min", "--mask-head", "2", "128"],
}  # fmt: skip
EXPERIMENTS.update(FAMILIES)
EXPERIMENTS.update(LEVERS)
RECIPES: dict[str, list[str]] = {**{name: ["--recipe", name] for name in TRAIN_RECIPES}, **EXPERIMENTS}


def dataset_flags(args: argparse.Namespace) -> list[str]:
    """The dataset flags of bench.py's command line, for train.py."""
    flags = ["--data-path", args.data_path, "--image-suffix", args.image_suffix, "--mask-suffix", args.mask_suffix]
    for name in ("dataset", "mask_path", "ann_file"):
        if getattr(args, name):
            flags += ["--" + name.replace("_", "-"), getattr(args, name)]
    return flags


def _stop_with_parent() -> None:
    """In a recipe's process, before train.py starts: Linux sends it SIGTERM when the benchmark dies, however it
    dies, so that a killed benchmark leaves no training behind (elsewhere, nothing)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def run_recipe(args: argparse.Namespace, name: str, output_dir: Path, flags: list[str] | None = None) -> dict[str, Any]:
    """Run train.py with recipe `name` (or the peer `name`, bench_peer.py; or train.py's `flags`, named `name`) until
    it ends or the budget is spent; its AP after each epoch, in minutes."""
    common = ["--seed", str(args.seed), "--test-size", str(args.test_size), "--output-dir", str(output_dir)]
    common += ["-j", str(args.workers), "--device", args.device]
    metrics, points, start = output_dir / "metrics.jsonl", [], time.time()
    if name in PEERS:
        command = peer_command(name, [*dataset_flags(args), *common], start + args.budget_minutes * 60)
    else:
        command = [sys.executable, str(ROOT / "train.py"), *dataset_flags(args), *(flags or RECIPES[name])]
        command += [*shlex.split(args.recipe_args), *common]
    with open(output_dir.parent / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent)
        while True:
            finished = process.poll() is not None
            for record in utils.read_jsonl(metrics)[len(points) :]:
                points.append(_point(record["epoch"], time.time() - start, record))
            if finished:
                break
            if time.time() - start > args.budget_minutes * 60:
                process.terminate()
                process.wait()
                break
            time.sleep(0.5)
    if process.returncode not in (0, -15, 143) and not points:  # 143: train.py stopped by the budget's SIGTERM
        tail = (output_dir.parent / f"{name}.log").read_text().strip().splitlines()[-1:]
        raise utils.UserError(f"recipe {name} failed: {tail[0] if tail else process.returncode}")
    row = {"recipe": name, "command": " ".join(command[1:]), "points": points, **_best(points)}
    return {**row, "ms_per_image": _ms_per_image(name, output_dir, command[2:])}


def _ms_per_image(name: str, output_dir: Path, flags: list[str]) -> float | None:
    """Milliseconds per held-out image of what the run trained (bench_speed.py), outside its wall clock: the
    peer's, timed in its own process; ours, in a fresh one. None where nothing was trained."""
    if name in PEERS:
        speed = output_dir / "speed.json"
        return json.loads(speed.read_text())["ms_per_image"] if speed.exists() else None
    best = output_dir / "best.pth"
    return utils.in_fresh_process(ours_ms_per_image, best, flags) if best.exists() else None


def _point(epoch: int, seconds: float, stats: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": epoch, "minutes": seconds / 60, "segm_ap": stats.get("segm", [None])[0],
            "bbox_ap": stats["bbox"][0], "score": selection_score(stats)}  # fmt: skip


def _best(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch's AP (what a report may state: no test image chose it) and the best epoch's (for the plot's
    reader: the best of several epochs on the test images is not a held-out figure)."""
    best = max(points, key=lambda p: p["score"], default=None)
    return {"last_ap": points[-1]["score"] if points else None, "best_ap": best["score"] if best else None,
            "best_minutes": best["minutes"] if best else None,
            "minutes": points[-1]["minutes"] if points else None}  # fmt: skip


def run_tutorial(args: argparse.Namespace) -> dict[str, Any]:
    """The tutorial's recipe by the tutorial's code (module docstring), epoch after epoch until the budget ends."""

    start = time.time()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    name = args.models[0]  # the tutorial's Mask R-CNN, or its first model: --models fasterrcnn_resnet50_fpn
    train_data = dataset_from_args(args, None, masks=learns_masks(name))
    train_ids, test_ids = split_indices(len(train_data), args.test_size, args.seed)
    reader = _Transformed(train_data, tutorial_transform())
    test_reader = _Transformed(train_data, T.Compose([T.ToDtype(torch.float, scale=True), T.ToPureTensor()]))
    common = {"num_workers": args.workers, "collate_fn": utils.collate_fn}
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(reader, train_ids), batch_size=args.batch_size, shuffle=True, **common
    )
    test_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(test_reader, test_ids), batch_size=1, **common)
    model = get_model(name, len(train_data.classes), weights=args.weights,
                      min_size=args.min_size, max_size=args.max_size).to(device)  # fmt: skip
    optimizer = make_optimizer(model, "sgd", lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
    points = []
    for epoch in range(args.tutorial_epochs):
        if time.time() - start > args.budget_minutes * 60:
            break
        train_like_the_tutorial(model, optimizer, train_loader, device)
        scheduler.step()
        stats = evaluate_like_the_tutorial(model, test_loader, device)
        points.append(_point(epoch, time.time() - start, stats))
        print(f"tutorial epoch {epoch}: AP {points[-1]['score']:.3f} at {points[-1]['minutes']:.1f} min", flush=True)
    command = f"bench.py's tutorial code, {name}, lr {args.lr}, -b {args.batch_size}, {args.min_size}/{args.max_size}"
    return {"recipe": "tutorial", "command": command, "points": points, **_best(points), "ms_per_image": None}


class _Transformed(torch.utils.data.Dataset):
    """Our reader's samples (before transforms) through the tutorial's transforms."""

    def __init__(self, dataset: Any, transforms: Any) -> None:
        self.dataset, self.transforms = dataset, transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.dataset.load(idx)
        if "instance_map" in target:  # the tutorial's datasets hold N x H x W masks
            masks = instance_masks(target)
            target = {**{key: value for key, value in target.items() if key != "instance_map"}, "masks": masks}
        return self.transforms(image, target)


def measure_recipes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every recipe of --recipes, one after the other (each alone on the machine), and the plot of them all."""
    if "tutorial" in args.recipes and args.models[0] not in TUTORIAL_MODELS:
        raise utils.UserError(f"--models {args.models[0]}: the tutorial's code trains {' or '.join(TUTORIAL_MODELS)}")
    kept = [Path(args.keep_runs) / name for name in args.recipes if args.keep_runs and name != "tutorial"]
    for folder in kept:
        if folder.exists():
            raise utils.UserError(f"--keep-runs {args.keep_runs}: {folder} exists already; choose another folder")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
        for name in args.recipes:
            if name == "tutorial":
                rows.append(utils.in_fresh_process(run_tutorial, args))
            else:
                output_dir = Path(args.keep_runs or tmp) / name
                output_dir.mkdir(parents=True)
                rows.append(run_recipe(args, name, output_dir))
            row = rows[-1]
            print(f"{name}: last epoch's AP {row['last_ap']}, best {row['best_ap']} after {row['best_minutes']} min",
                  flush=True)  # fmt: skip
    if args.plot:
        plot_recipes(rows, args.plot, f"{Path(args.data_path).name}, seed {args.seed}, {args.test_size} held out")
    return rows


def plot_recipes(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Held-out AP against wall-clock minutes, one line per recipe, as a PNG."""
    figure = new_figure((9.5, 4.5))
    axes = figure.subplots()
    for row in rows:
        points = row["points"]
        axes.plot([p["minutes"] for p in points], [p["score"] for p in points], marker="o", markersize=3,
                  label=row["recipe"])  # fmt: skip
    axes.set(title=title, xlabel="wall-clock minutes (start-up, training and evaluation)")
    axes.set(ylabel="held-out AP (mask, else box)")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    utils.atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))


def recipe_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per recipe for bench.py's table: epochs trained, from the last scored point (a peer scores only its
    last epoch, so its points are not its epochs)."""
    keys = ("recipe", "last_ap", "best_ap", "best_minutes", "minutes", "ms_per_image")
    return [{key: row.get(key) for key in keys} | {"epochs": _epochs(row["points"])} for row in rows]


def _epochs(points: list[dict[str, Any]]) -> int:
    return points[-1]["epoch"] + 1 if points else 0
