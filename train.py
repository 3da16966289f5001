"""Fine-tune a torchvision detection or instance-segmentation model: the command line.

    python train.py --data-path PennFudanPed --download --epochs 10
    torchrun --nproc_per_node=2 train.py --data-path PennFudanPed --epochs 10   # DDP: GPUs, or CPU processes

This file only wires the other modules together; see README.md for every flag.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

import utils
from curves import TensorBoardLogger, plot_curves
from dataset import add_dataset_args, dataset_from_args, download_pennfudan, find_bad_samples, split_indices
from engine import evaluate, train_one_epoch
from group_by_aspect_ratio import training_batches
from model import MODELS, get_model, model_config
from transforms import AUGMENTATIONS, get_transform


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune Mask R-CNN or Faster R-CNN", add_help=add_help)
    add = parser.add_argument
    add_dataset_args(parser)
    add("--download", action="store_true", help="download Penn-Fudan into --data-path if it does not exist")
    add("--model", default="maskrcnn_resnet50_fpn", choices=list(MODELS), metavar="NAME", help=", ".join(MODELS))
    add("--weights", default="DEFAULT", help="DEFAULT (COCO), a torchvision weights name, none, or a local .pth")
    add("--weights-backbone", default=None, help="with --weights none: DEFAULT (ImageNet), a name, none, or a .pth")
    add("--trainable-backbone-layers", type=int, help="backbone stages to train (default: 3 if pretrained)")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    add("--device", default=default_device, help="cuda, cuda:N or cpu (default: %(default)s)")
    add("-b", "--batch-size", type=int, default=2, help="images per training batch (default: %(default)s)")
    add("--epochs", type=int, default=10, help="total epochs to train (default: %(default)s)")
    add("-j", "--workers", type=int, default=4, help="data loading processes (default: %(default)s)")
    add("--lr", type=float, default=0.005, help="SGD learning rate (default: %(default)s; from scratch try 0.001)")
    add("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    add("--weight-decay", "--wd", type=float, default=5e-4, help="SGD weight decay (default: %(default)s)")
    add("--lr-step-size", type=int, default=3, help="epochs between lr decays (default: %(default)s)")
    add("--lr-gamma", type=float, default=0.1, help="lr decay factor (default: %(default)s)")
    add("--test-size", type=int, default=50, help="images held out for evaluation (default: %(default)s)")
    add("--seed", type=int, default=0, help="seeds the split, init and data order (default: %(default)s)")
    add("--min-size", type=int, default=800, help="shorter image side the model resizes to (default: %(default)s)")
    add("--max-size", type=int, default=1333, help="longer image side at most (default: %(default)s)")
    add("--augmentation", default="hflip", choices=AUGMENTATIONS, help="training augmentation (default: %(default)s)")
    add("--amp", action="store_true", help="mixed precision: float16 on CUDA, bfloat16 on CPU")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC convolutions (default: on)")
    add("--aspect-ratio-group-factor", type=int, default=3, help="batch by aspect ratio; -1: off (default: 3)")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun (CUDA only)")
    add("--print-freq", type=int, default=10, help="iterations between progress lines (default: %(default)s)")
    add("--output-dir", default="output", help="where checkpoints and metrics go (default: %(default)s)")
    add("--resume", default="", help="checkpoint.pth to continue training from (or to evaluate with --test-only)")
    add("--test-only", action="store_true", help="only evaluate the --resume checkpoint on the test split")
    add("--use-deterministic-algorithms", action="store_true", help="reproducible results, at some cost in speed")
    add("--tensorboard", action="store_true", help="also log losses, AP and lr to --output-dir/tensorboard")
    add("--skip-bad-samples", action="store_true", help="leave out unreadable or broken samples (default: stop)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible flag values before any work starts."""
    positive = ("batch_size", "lr", "lr_step_size", "print_freq", "min_size", "max_size", "test_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise utils.UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.epochs < 0 or args.workers < 0:
        raise utils.UserError("--epochs and --workers must not be negative")
    if args.min_size > args.max_size:
        raise utils.UserError(f"--min-size {args.min_size} is above --max-size {args.max_size}; raise --max-size")
    if args.download and (args.dataset in ("folder", "coco") or args.ann_file):
        raise utils.UserError("--download fetches Penn-Fudan only; drop it to train on your own data")
    if args.test_only and not args.resume:
        raise utils.UserError("--test-only needs --resume PATH: the checkpoint to evaluate")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise utils.UserError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.sync_bn and not args.device.startswith("cuda") and utils.distributed_env() is not None:
        raise utils.UserError("--sync-bn: SyncBatchNorm runs on CUDA only; drop it when training on CPU processes")


def preflight(args: argparse.Namespace, *splits: tuple[Any, list[int]]) -> tuple[list[int], list[int], list[str]]:
    """Read every sample once before training, so that a broken file stops the run now, not hours into it.

    Each rank reads its share. Without --skip-bad-samples the first problem stops the run
    (one line, exit 2); with it, each bad sample is left out with a warning. Returns the
    train and test indices that remain, and the problems (for split.json).
    """
    start, rank, world_size = time.time(), utils.get_rank(), utils.get_world_size()
    problems = list(dict.fromkeys(problem for data, _ in splits for problem in getattr(data, "problems", [])))
    kept = []
    for data, ids in splits:
        bad: dict[int, str] = {}
        for part in utils.all_gather_object(find_bad_samples(data, ids[rank::world_size], args.workers)):
            bad.update(part)
        problems += [bad[i] for i in ids if i in bad]
        kept.append([i for i in ids if i not in bad])
    if problems and not args.skip_bad_samples:
        more = f" ({len(problems)} bad samples: python dataset.py check lists them all)" if len(problems) > 1 else ""
        raise utils.UserError(f"{problems[0]}{more}; or leave them out with --skip-bad-samples")
    for problem in problems:
        print(f"warning: {problem}; skipped (--skip-bad-samples)")
    train_ids, test_ids = kept
    if not train_ids or not test_ids:
        raise utils.UserError(f"{args.data_path}: no readable {'training' if not train_ids else 'test'} images left")
    total = sum(len(ids) for _, ids in splits)
    print(f"Read {total} samples in {time.time() - start:.1f} s: {len(problems)} bad")
    return train_ids, test_ids, problems


def make_loaders(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, Any, dict]:
    """The train and test DataLoaders over a seeded split, the dataset, and the split by file name.

    Under DDP each rank trains on its own shard of every epoch's shuffle and evaluates on
    every world_size-th test image, so each test image is counted exactly once.
    """
    data_path = Path(args.data_path)
    if not data_path.exists() and args.download and utils.is_main_process():
        download_pennfudan(data_path)  # once, by rank 0, while the other ranks wait
    utils.barrier()
    strict = not args.skip_bad_samples  # strict: a missing file stops the run; else it is left out, with a warning
    train_data = dataset_from_args(args, get_transform(True, args.augmentation), include_crowd=False, strict=strict)
    if args.val_data_path or args.val_ann_file:  # a fixed validation set: train on every training image
        test_data = dataset_from_args(args, get_transform(False), validation=True, strict=strict)
        train_ids, test_ids = list(range(len(train_data))), list(range(len(test_data)))
        if test_data.classes != train_data.classes:
            raise utils.UserError(
                f"the validation set's classes {test_data.classes[1:]} differ from the training set's"
            )
    else:
        test_data = dataset_from_args(args, get_transform(False), strict=strict)
        train_ids, test_ids = split_indices(len(train_data), args.test_size, args.seed)
    if hasattr(train_data, "num_instances"):  # COCO files list unlabelled images: evaluate on them, do not train
        train_ids = [i for i in train_ids if train_data.num_instances(i) > 0]
    train_ids, test_ids, skipped = preflight(args, (train_data, train_ids), (test_data, test_ids))
    split = {
        "train": [train_data.image_paths[i].name for i in train_ids],
        "test": [test_data.image_paths[i].name for i in test_ids],
        "skipped": skipped,
    }
    rank, world_size = utils.get_rank(), utils.get_world_size()
    train_set = torch.utils.data.Subset(train_data, train_ids)
    # One sampler for one process and for many: a seeded shuffle per epoch (set_epoch), this rank's share of it.
    batches = training_batches(
        train_set, args.batch_size, args.aspect_ratio_group_factor, args.seed, num_replicas=world_size, rank=rank
    )
    common = {"num_workers": args.workers, "collate_fn": utils.collate_fn, "pin_memory": device.type == "cuda"}
    # Training workers start again each epoch, seeded from the main RNG, which a checkpoint restores: a resumed run
    # augments as the straight one did. Test workers have nothing random: they persist (bench.py: first batch time),
    # seeded from their own generator, so that the main RNG is drawn from the same way with and without a resume.
    train_loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, **common)
    test_set = torch.utils.data.Subset(test_data, test_ids[rank::world_size])
    test_loader = torch.utils.data.DataLoader(
        test_set, batch_size=1, persistent_workers=args.workers > 0, generator=torch.Generator(), **common
    )
    return train_loader, test_loader, train_data, split


def main(args: argparse.Namespace) -> dict[str, list[float]] | None:
    check_args(args)
    if args.use_deterministic_algorithms:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # MKL's results otherwise depend on memory alignment
        torch.use_deterministic_algorithms(True)
    device = utils.init_distributed(args.device)
    utils.seed_everything(args.seed + utils.get_rank())  # ranks augment differently; DDP copies rank 0's init
    output_dir = Path(args.output_dir)

    train_loader, test_loader, dataset, split = make_loaders(args, device)
    model = get_model(
        args.model,
        num_classes=len(dataset.classes),
        weights=args.weights,
        weights_backbone=args.weights_backbone,
        trainable_backbone_layers=args.trainable_backbone_layers,
        min_size=args.min_size,
        max_size=args.max_size,
    ).to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    model_without_ddp = model  # what is saved, evaluated and resumed
    if utils.is_distributed():
        if args.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model_without_ddp = model
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda") if args.amp else None

    start_epoch, best_score, history = 0, -math.inf, []
    if args.resume:
        checkpoint = utils.load_checkpoint(args.resume)
        try:
            model_without_ddp.load_state_dict(checkpoint["model"])
        except (KeyError, RuntimeError) as error:
            message = f"--resume {args.resume}: does not fit --model {args.model} with this dataset's classes"
            raise utils.UserError(message) from error
        if not args.test_only:
            if "optimizer" not in checkpoint:
                raise utils.UserError(f"--resume {args.resume}: holds weights only; resume from checkpoint.pth")
            optimizer.load_state_dict(checkpoint["optimizer"])
            lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            if args.lr != checkpoint["args"]["lr"]:  # a lower --lr after a diverged run must take effect
                print(f"--lr {args.lr} replaces the checkpoint's {checkpoint['args']['lr']}")
                utils.set_base_lr(optimizer, lr_scheduler, args.lr)
            if scaler is not None and "scaler" in checkpoint:
                scaler.load_state_dict(checkpoint["scaler"])
            start_epoch = checkpoint["epoch"] + 1
            best_score = checkpoint["best_score"]
            history = checkpoint["metrics"]
            if len(checkpoint["rng"]) == utils.get_world_size():  # one state per rank
                utils.set_rng_state(checkpoint["rng"][utils.get_rank()])
            else:
                print(f"--resume {args.resume}: saved by {len(checkpoint['rng'])} processes; random streams restart")

    if args.test_only:
        stats = evaluate(model_without_ddp, test_loader, device, dataset.classes)
        if utils.is_main_process():
            utils.write_json(stats, output_dir / "eval.json")
        utils.cleanup_distributed()
        return stats

    if utils.is_main_process():
        for path in utils.remove_stale_temporaries(output_dir):  # left by a run that was killed while writing
            print(f"removed {path}, an unfinished write of a killed run")
        utils.write_json({**vars(args), "class_names": dataset.classes}, output_dir / "args.json")
        utils.write_json(split, output_dir / "split.json")
        utils.write_jsonl(history, output_dir / "metrics.jsonl")  # drops epochs the checkpoint does not hold
    config = {**model_config(model_without_ddp, args.model), "class_names": dataset.classes}
    tensorboard = None
    if args.tensorboard and utils.is_main_process():
        tensorboard = TensorBoardLogger(output_dir / "tensorboard", start_epoch)
    stats = None
    print(f"Training {args.model} on {len(split['train'])} images, testing on {len(split['test'])}")
    for epoch in range(start_epoch, args.epochs):
        train_loader.batch_sampler.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        start = time.time()
        losses = train_one_epoch(model, optimizer, train_loader, device, epoch, args.print_freq, scaler)
        train_seconds = time.time() - start
        lr = optimizer.param_groups[0]["lr"]
        lr_scheduler.step()
        start = time.time()
        stats = evaluate(model_without_ddp, test_loader, device, dataset.classes)
        eval_seconds = time.time() - start

        history.append(
            {"epoch": epoch, "lr": lr, **losses, **stats, "train_seconds": train_seconds, "eval_seconds": eval_seconds}
        )
        score = stats["segm"][0] if "segm" in stats else stats["bbox"][0]
        is_best, best_score = score > best_score, max(score, best_score)
        rng_states = utils.all_gather_object(utils.get_rng_state())  # every rank takes part; rank 0 writes
        if not utils.is_main_process():
            continue
        weights = {"model": model_without_ddp.state_dict(), "model_config": config, "args": vars(args)}
        weights.update(epoch=epoch, stats=stats)
        if is_best:
            utils.save_checkpoint(weights, output_dir / "best.pth")
        checkpoint = {
            **weights,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "best_score": best_score,
            "metrics": history,
            "rng": rng_states,
        }
        if scaler is not None:
            checkpoint["scaler"] = scaler.state_dict()
        utils.save_checkpoint(checkpoint, output_dir / "checkpoint.pth")
        utils.write_jsonl(history, output_dir / "metrics.jsonl")
        plot_curves(history, output_dir / "curves.png")
        if tensorboard is not None:
            tensorboard.log(history[-1])
    if tensorboard is not None:
        tensorboard.close()
    utils.cleanup_distributed()
    return stats


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    try:
        main(arguments)
    except utils.UserError as error:
        utils.exit_with_user_error(error)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with --resume {Path(arguments.output_dir) / 'checkpoint.pth'}", flush=True)
        raise SystemExit(130) from None
