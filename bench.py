"""Measure speed and memory, ours beside the tutorial's way, and print tables and JSON.

    python bench.py --data-path ../shared/data/CVPPP_A1 --image-suffix _rgb --mask-suffix _label \
        --models maskrcnn_resnet50_fpn maskrcnn_mobilenet_v3_large_fpn --min-size 320 --max-size 640

--parts picks what is measured:
- data: images per second through the training data pipeline (dataset, transforms,
  collate) with -j 0 and -j N, for our dataset class and for the tutorial's (as it is
  today, and as it was in 2019, finding each box with np.where), on the images the
  tutorial reads as ours does (see epoch).
- train: training images per second and peak memory per model, float32 and --amp,
  contiguous and channels_last (--channels-last, train.py's default is on). Each
  runs in a fresh process, so its peak memory is its own: PyTorch's peak GPU allocation
  on CUDA (the training log's "max mem"), the process's peak RSS on the CPU. The first
  --warmup iterations are not timed.
- eval: seconds per test image for the tutorial's way (torchvision's reference evaluate:
  one thread, and the ground truth rebuilt by loading and transforming every test image
  again) and for engine.evaluate (split into model and metric time) on the same model,
  whose AP must be identical; then engine.evaluate on the model in channels_last.
- memory: peak resident memory of `dataset.py check`, one train.py run (its training loop, evaluation
  and pictures apart as well), --test-only and predict.py, for each of --models, on synthetic
  4000 x 3000 photos with 300 instances each, beside the same at 1067 x 800, through the folder,
  COCO and YOLO routes (bench_memory.py).
- tiles: big photos of 4 x 4 plants, seen whole, tiled at prediction, tiled in training too (bench_tiles.py).
- epoch: one whole training epoch (--epoch-images images, data loading included) of
  train.py's pipeline and of the tutorial's (its dataset, transforms and loop), each in
  a fresh process, with the first of --models, on the same images: those the tutorial's
  __getitem__ reads as ours does (torchvision.io misreads 4-bit palette PNGs; its
  masks_to_boxes gives an instance one pixel wide or high an empty box, which Mask
  R-CNN refuses).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch

import utils
from bench_memory import COMMANDS, STAGES, add_memory_args, measure_memory
from bench_peer import PEERS, check_peers
from bench_recipe import FAMILIES, LEVERS, RECIPES, measure_recipes, recipe_table_rows
from bench_tiles import COLUMNS, add_tiles_args, measure_tiles
from checkpoint import model_from_checkpoint
from dataset_cli import add_dataset_args, dataset_from_args
from engine import backward_and_step, evaluate, forward_losses, train_one_epoch
from group_by_aspect_ratio import training_batches
from model import MODELS, get_model
from recipe import make_optimizer
from split import split_indices
from transforms import get_transform
from tutorial import (
    Tutorial2019Dataset,
    TutorialDataset,
    evaluate_like_the_tutorial,
    train_like_the_tutorial,
    tutorial_readable,
    tutorial_transform,
)

PARTS = ("data", "train", "eval", "epoch", "recipe", "memory", "tiles")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark training speed and memory")
    add = parser.add_argument
    add_dataset_args(parser)
    add("--parts", nargs="+", choices=PARTS, default=list(PARTS[:4]),
        help="what to measure (default: all but recipe, memory and tiles)")  # fmt: skip
    add(
        "--models",
        nargs="+",
        default=["maskrcnn_resnet50_fpn"],
        choices=list(MODELS),
        metavar="NAME",
        help="train, eval, epoch: the models to measure; recipe: the first is the tutorial's model "
        "(maskrcnn_resnet50_fpn, or fasterrcnn_resnet50_fpn for boxes)",
    )
    add("--weights", default="none", help="none (default), DEFAULT, or a local .pth (a COCO file: fine-tuning)")
    add("--device", default=utils.default_device())
    add("-b", "--batch-size", type=int, default=2)
    add("--min-size", type=int, default=800)
    add("--max-size", type=int, default=1333)
    add("--amp", choices=("off", "on", "both"), default="both", help="fp32, mixed precision, or each (default)")
    add("--channels-last", choices=("off", "on", "both"), default="on", help="train: memory format(s) (default: on)")
    add("--iterations", type=int, default=20, help="timed training iterations (default: %(default)s)")
    add("--warmup", type=int, default=5, help="untimed iterations first (default: %(default)s)")
    add("-j", "--workers", type=int, default=4)
    add("--lr", type=float, default=0.001)
    add("--test-size", type=int, default=20, help="eval: images held out as train.py does (default: %(default)s)")
    add("--checkpoint", help="eval: a checkpoint of train.py to evaluate (default: the first of --models)")
    add("--epoch-images", type=int, default=0, help="epoch: train on the first N usable images (default: all)")
    add(
        "--recipes",
        nargs="+",
        default=["tutorial", *(name for name in RECIPES if name not in FAMILIES and name not in LEVERS)],
        choices=["tutorial", *RECIPES, *PEERS],
        metavar="NAME",
        help=f"recipe: which to run (default: all but the family-* and lever-* runs and the peers): tutorial, "
        f"{', '.join(RECIPES)}; the peer, Ultralytics YOLO from scratch (requirements-bench.txt): {', '.join(PEERS)}",
    )
    add("--budget-minutes", type=float, default=43, help="recipe: wall clock for each (default: %(default)s)")
    add("--recipe-args", default="", help='recipe: train.py flags added to each recipe, e.g. --recipe-args="-b 2 '
        '--epochs 12" (the "=" lets it start with a dash)')  # fmt: skip
    add("--tutorial-epochs", type=int, default=10, help="recipe: the tutorial's epochs (default: %(default)s)")
    add("--seed", type=int, default=0, help="recipe: the split's seed, as train.py's (default: %(default)s)")
    add("--plot", help="recipe: also draw AP against minutes into this PNG")
    add("--keep-runs", metavar="DIR", help="recipe: keep each run's folder (checkpoints, metrics) and log in DIR, "
        "not in a temporary folder deleted at the end; the tutorial's run keeps none")  # fmt: skip
    add("--output", default="bench.json", help="where the JSON goes (default: %(default)s)")
    add_memory_args(parser)
    add_tiles_args(parser)
    return parser


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "device": device.type}
    info["processor"] = platform.processor() or platform.machine()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def model_and_optimizer(
    args: argparse.Namespace, model_name: str, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (--weights, sizes) on `device` in training mode, and train.py's default optimizer (SGD)."""
    model = get_model(model_name, num_classes, weights=args.weights, min_size=args.min_size, max_size=args.max_size)
    model.to(device, memory_format=memory_format(channels_last)).train()
    return model, make_optimizer(model, lr=args.lr)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def measure_training(args: argparse.Namespace, model_name: str, amp: bool, channels_last: bool) -> dict[str, Any]:
    """Images per second over `iterations` steps after `warmup`, and peak memory, for one model and setting."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    data = dataset_from_args(args, get_transform(True))
    num_samples = (args.warmup + args.iterations) * args.batch_size
    sampler = torch.utils.data.RandomSampler(
        data, replacement=True, num_samples=num_samples, generator=torch.Generator().manual_seed(0)
    )
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        collate_fn=utils.collate_fn,
        pin_memory=device.type == "cuda",
    )
    model, optimizer = model_and_optimizer(args, model_name, len(data.classes), device, channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda") if amp else None

    start = time.perf_counter()
    for iteration, (images, targets) in enumerate(loader):
        if iteration == args.warmup:
            _synchronize(device)
            start = time.perf_counter()
        loss, _ = forward_losses(model, images, targets, device, amp)  # train_one_epoch's step, without its logging
        backward_and_step(loss, optimizer, scaler)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "model": model_name,
        "precision": ("float16" if device.type == "cuda" else "bfloat16") if amp else "float32",
        "channels_last": channels_last,
        "batch_size": args.batch_size,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "images_per_second": args.iterations * args.batch_size / seconds,
        "seconds_per_iteration": seconds / args.iterations,
        "peak_memory_mb": utils.peak_memory_mb(),
        "final_loss": loss.item(),
    }


# ---------------------------------------------------------------------------
# The measurements.


def measure_data(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Images per second through DataLoader(dataset, transforms, collate), for ours and the tutorial's."""
    ours = dataset_from_args(args, get_transform(True))
    if not hasattr(ours, "mask_paths"):
        raise utils.UserError(
            "--parts data compares with the tutorial's mask-folder dataset: use a mask-folder dataset"
        )
    usable = tutorial_readable(ours)  # where all three read the same
    candidates = {
        "ours": ours,
        "tutorial": TutorialDataset(ours.image_paths, ours.mask_paths, tutorial_transform()),
        "tutorial 2019": Tutorial2019Dataset(ours.image_paths, ours.mask_paths, tutorial_transform()),
    }
    candidates = {name: torch.utils.data.Subset(data, usable) for name, data in candidates.items()}
    rows = []
    for workers in sorted({0, args.workers}):
        for name, data in candidates.items():
            torch.manual_seed(0)
            loader = torch.utils.data.DataLoader(
                data, batch_size=args.batch_size, num_workers=workers, collate_fn=utils.collate_fn
            )
            start = time.perf_counter()
            batches = iter(loader)
            count = len(next(batches)[0])
            first_batch = time.perf_counter() - start  # what every epoch pays again unless workers persist
            count += sum(len(images) for images, _ in batches)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "pipeline": name,
                    "workers": workers,
                    "images": count,
                    "images_per_second": count / seconds,
                    "first_batch_seconds": first_batch,
                }
            )
            print(f"data {name}, -j {workers}: {count / seconds:.1f} images/s", flush=True)
    return rows


def measure_eval(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per test image on the split train.py would hold out: the tutorial's way, ours on the same model,
    and ours with --channels-last (train.py's default) unless it is off. The AP of the first two must be
    identical; channels_last changes the arithmetic's order, so its AP is reported, not required equal."""
    device = torch.device(args.device)
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = get_model(args.models[0], 2, weights=args.weights, min_size=args.min_size, max_size=args.max_size)
    model.to(device).eval()
    data = dataset_from_args(args, get_transform(False))
    _, test_ids = split_indices(len(data), args.test_size, seed=0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, test_ids), batch_size=1, num_workers=args.workers, collate_fn=utils.collate_fn
    )
    n = len(test_ids)
    ways = [("tutorial", False), ("ours", False)] + [("ours", True)] * (args.channels_last != "off")
    rows = []
    for way, channels_last in ways:
        model.to(memory_format=memory_format(channels_last))
        with torch.inference_mode():  # warm up (lazy initialisation, caches) before it is timed
            model([loader.dataset[0][0].to(device)])
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if way == "ours":
            stats = evaluate(model, loader, device, timings=timings)
        else:
            stats = evaluate_like_the_tutorial(model, loader, device)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "evaluation": way + (" + channels_last" if channels_last else ""),
                "images": n,
                "seconds_per_image": seconds / n,
                "model_seconds_per_image": timings["model_seconds"] / n if timings else None,
                "metric_seconds_per_image": timings["metric_seconds"] / n if timings else None,
                "bbox_ap": stats["bbox"][0],
                "segm_ap": stats["segm"][0] if "segm" in stats else None,
                "stats": stats,
            }
        )
    tutorial, ours = (row["stats"] for row in rows[:2])
    same = tutorial["bbox"] == ours["bbox"] and tutorial.get("segm") == ours.get("segm")
    for row in rows:
        row["identical_ap"] = same if row is rows[1] else None
        row["speed_up"] = rows[0]["seconds_per_image"] / row["seconds_per_image"]
    return rows


def measure_epoch(args: argparse.Namespace, loop: str) -> dict[str, Any]:
    """Seconds for one training epoch, data loading included: train.py's way ("ours") or the tutorial's."""
    device = torch.device(args.device)
    ours = dataset_from_args(args, get_transform(True))
    usable = tutorial_readable(ours)
    indices = usable[: args.epoch_images or None]
    common = {"num_workers": args.workers, "collate_fn": utils.collate_fn, "pin_memory": device.type == "cuda"}
    torch.manual_seed(0)
    if loop == "ours":
        data = torch.utils.data.Subset(ours, indices)
        batches = training_batches(data, args.batch_size, group_factor=3, seed=0)  # train.py's defaults
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches, **common)
    else:
        tutorial = TutorialDataset(ours.image_paths, ours.mask_paths, tutorial_transform())
        data = torch.utils.data.Subset(tutorial, indices)
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, **common)
    channels_last = loop == "ours" and args.channels_last != "off"
    model, optimizer = model_and_optimizer(args, args.models[0], len(ours.classes), device, channels_last)
    start = time.perf_counter()
    if loop == "ours":
        train_one_epoch(model, optimizer, loader, device, epoch=0, print_freq=10**9)
    else:
        train_like_the_tutorial(model, optimizer, loader, device)
    _synchronize(device)
    seconds = time.perf_counter() - start
    left_out = len(ours) - len(usable)
    return {"loop": loop, "images": len(indices), "left_out": left_out, "seconds": seconds,
            "images_per_second": len(indices) / seconds}  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """rows as an aligned text table; `columns` maps each key to its format."""
    cells = [list(columns)]
    cells += [[format(row[key], fmt) if row[key] is not None else "-" for key, fmt in columns.items()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.iterations <= 0 or args.warmup < 0 or args.batch_size <= 0:
        raise utils.UserError("--iterations and --batch-size must be positive, --warmup not negative")
    utils.check_device(args.device)
    if "recipe" in args.parts:
        check_peers(args.recipes)
    device = torch.device(args.device)
    report: dict[str, Any] = {"machine": machine(device), "args": vars(args)}
    print(f"{args.data_path} on {report['machine']}")
    if "data" in args.parts:
        report["data"] = measure_data(args)
        columns = {"pipeline": "", "workers": "d", "images": "d", "images_per_second": ".1f"}
        print(table(report["data"], {**columns, "first_batch_seconds": ".2f"}))
    if "train" in args.parts:
        choices = {"off": [False], "on": [True], "both": [False, True]}
        rows = []
        for model_name in args.models:
            for amp in choices[args.amp]:
                for channels_last in choices[args.channels_last]:
                    row = utils.in_fresh_process(measure_training, args, model_name, amp, channels_last)
                    setting = f"{row['precision']}{', channels_last' if channels_last else ''}"
                    print(f"{model_name} {setting}: {row['images_per_second']:.2f} images/s", flush=True)
                    rows.append(row)
        report["training"] = rows
        columns = {"model": "", "precision": "", "channels_last": "", "batch_size": "d", "min_size": "d"}
        columns.update(images_per_second=".2f", seconds_per_iteration=".3f", peak_memory_mb=".0f")
        print(f"training: {args.iterations} timed iterations after {args.warmup}")
        print(table(rows, columns))
    if "eval" in args.parts:
        report["evaluation"] = measure_eval(args)
        columns = {"evaluation": "", "images": "d", "seconds_per_image": ".3f", "model_seconds_per_image": ".3f"}
        columns.update(metric_seconds_per_image=".3f", speed_up=".2f", bbox_ap=".4f", segm_ap=".4f", identical_ap="")
        print(table(report["evaluation"], columns))
    if "epoch" in args.parts:
        report["epoch"] = [utils.in_fresh_process(measure_epoch, args, "ours")]
        try:
            report["epoch"].append(utils.in_fresh_process(measure_epoch, args, "tutorial"))
        except Exception as error:  # a safety net: the tutorial's code fails on data it misreads; say so
            print(f"the tutorial's epoch failed: {utils.one_line(error)}")
            failed = {"loop": "tutorial", "images": None, "left_out": None, "seconds": None, "images_per_second": None}
            report["epoch"].append({**failed, "error": utils.one_line(error)})
        print(f"one training epoch of {args.models[0]}")
        columns = {"loop": "", "images": "d", "left_out": "d", "seconds": ".1f", "images_per_second": ".2f"}
        print(table(report["epoch"], columns))
    if "recipe" in args.parts:
        report["recipes"] = measure_recipes(args)
        print(f"held-out AP against wall-clock minutes, seed {args.seed}, {args.test_size} test images")
        columns = {
            "recipe": "",
            "last_ap": ".3f",
            "best_ap": ".3f",
            "best_minutes": ".1f",
            "minutes": ".1f",
            "epochs": "d",
            "ms_per_image": ".0f",
        }
        print(table(recipe_table_rows(report["recipes"]), columns))
    if "memory" in args.parts:
        report["memory"] = measure_memory(args)
        print(f"peak resident memory (MB) at --min-size {args.min_size}, -j 0, each command a process; train's three "
              "stages apart (sampled); ratio: big photos against the same at the model's size")  # fmt: skip
        columns = {"route": "", "size": "", "model": "", **{f"{name}_mb": ".0f" for name in (*COMMANDS, *STAGES)}}
        print(table([{key: row.get(key) for key in columns} for row in report["memory"]], columns))
        columns = {"route": "", "size": "", "model": "", **{f"{name}_ratio": ".2f" for name in (*COMMANDS, *STAGES)}}
        columns["read_seconds_per_sample"] = ".3f"
        print(table([{key: row.get(key) for key in columns} for row in report["memory"]], columns))
    if "tiles" in args.parts:
        report["tiles"] = measure_tiles(args)
        print(f"big photos, seed {args.seed}: held-out AP of each run's last epoch\n{table(report['tiles'], COLUMNS)}")
    utils.write_json(report, args.output)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except utils.UserError as error:
        utils.exit_with_user_error(error)
