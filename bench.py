"""Measure training speed and memory: images per second and peak memory, per model and precision.

    python bench.py --data-path ../shared/data/CVPPP_A1 --image-suffix _rgb --mask-suffix _label \
        --models maskrcnn_resnet50_fpn maskrcnn_mobilenet_v3_large_fpn --min-size 320 --max-size 640

Each measurement runs in a fresh process, so its peak memory is its own: PyTorch's peak
GPU allocation on CUDA (what the training log's "max mem" shows), the process's peak RSS
on the CPU. The first --warmup iterations are not timed. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import platform
import time
from typing import Any

import torch

import utils
from dataset import add_dataset_args, dataset_from_args
from engine import autocast, backward_and_step, to_device
from model import MODELS, get_model
from transforms import get_transform


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark training speed and memory")
    add = parser.add_argument
    add_dataset_args(parser)
    add("--models", nargs="+", default=["maskrcnn_resnet50_fpn"], choices=list(MODELS), metavar="NAME")
    add("--weights", default="none", help="none (default), DEFAULT, or a local .pth (a COCO file: fine-tuning)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("-b", "--batch-size", type=int, default=2)
    add("--min-size", type=int, default=800)
    add("--max-size", type=int, default=1333)
    add("--amp", choices=("off", "on", "both"), default="both", help="fp32, mixed precision, or each (default)")
    add("--iterations", type=int, default=20, help="timed training iterations (default: %(default)s)")
    add("--warmup", type=int, default=5, help="untimed iterations first (default: %(default)s)")
    add("-j", "--workers", type=int, default=4)
    add("--lr", type=float, default=0.001)
    add("--output", default="bench.json", help="where the JSON goes (default: %(default)s)")
    return parser


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "device": device.type}
    info["processor"] = platform.processor() or platform.machine()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure_training(args: argparse.Namespace, model_name: str, amp: bool) -> dict[str, Any]:
    """Images per second over `iterations` steps after `warmup`, and peak memory, for one model and precision."""
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
    model = get_model(
        model_name, len(data.classes), weights=args.weights, min_size=args.min_size, max_size=args.max_size
    )
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda") if amp else None

    start = time.perf_counter()
    for iteration, (images, targets) in enumerate(loader):
        if iteration == args.warmup:
            _synchronize(device)
            start = time.perf_counter()
        images, targets = to_device(images, targets, device)
        with autocast(device, enabled=amp):
            loss = sum(model(images, targets).values())
        backward_and_step(loss, optimizer, scaler)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "model": model_name,
        "precision": ("float16" if device.type == "cuda" else "bfloat16") if amp else "float32",
        "batch_size": args.batch_size,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "images_per_second": args.iterations * args.batch_size / seconds,
        "seconds_per_iteration": seconds / args.iterations,
        "peak_memory_mb": utils.peak_memory_mb(),
        "final_loss": loss.item(),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_fresh_process(function: Any, *args: Any) -> Any:
    """Run function(*args) in a new Python process and return its result (its errors are raised here)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """rows as an aligned text table; `columns` maps each key to its format."""
    cells = [list(columns)] + [[format(row[key], fmt) for key, fmt in columns.items()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells)


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.iterations <= 0 or args.warmup < 0 or args.batch_size <= 0:
        raise utils.UserError("--iterations and --batch-size must be positive, --warmup not negative")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise utils.UserError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    device = torch.device(args.device)
    precisions = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    rows = []
    for model_name in args.models:
        for amp in precisions:
            row = in_fresh_process(measure_training, args, model_name, amp)
            print(f"{model_name} {row['precision']}: {row['images_per_second']:.2f} images/s", flush=True)
            rows.append(row)
    columns = {"model": "", "precision": "", "batch_size": "d", "min_size": "d"}
    columns.update(images_per_second=".2f", seconds_per_iteration=".3f", peak_memory_mb=".0f")
    print(f"\nTraining on {args.data_path}, {args.iterations} timed iterations after {args.warmup}; {machine(device)}")
    print(table(rows, columns))
    report = {"machine": machine(device), "args": vars(args), "training": rows}
    utils.write_json(report, args.output)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except utils.UserError as error:
        utils.exit_with_user_error(error)
