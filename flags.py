"""train.py's flags: the parser, the combinations refused before any work starts, and a recipe's values.

docs/flags.md explains every flag. train.py decides what a run is from them (a new run's recipe, a resume's
checkpoint); this module only reads the command line.
"""

from __future__ import annotations

import argparse
from typing import Any

import torchvision
from torchvision import tv_tensors

import distributed
import utils
from checkpoint import flag
from dataset_cli import add_dataset_args
from heads import HEAD_SETTINGS
from keypoints import flip_permutation
from model import MODELS, is_keypoint_model
from recipe import LR, MOMENTUM, OPTIMIZERS, SCHEDULERS, WEIGHT_DECAY, recipe_help, recipe_values
from ssd import SSD_SIZES, check_input_side
from tiles import MERGES, Tiling
from transforms import AUGMENTATIONS


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune a torchvision detection model",
        epilog=recipe_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    add = parser.add_argument
    add("--recipe", help="a named recipe whose flags become this run's defaults (listed below); typed flags win")
    add_dataset_args(parser)
    add("--download", action="store_true", help="download Penn-Fudan into --data-path if it does not exist")
    add("--model", default="maskrcnn_resnet50_fpn", choices=list(MODELS), metavar="NAME", help=", ".join(MODELS))
    add("--weights", default="DEFAULT", help="DEFAULT (COCO), a torchvision weights name, none, or a local .pth")
    add("--weights-backbone", default=None, help="with --weights none: DEFAULT (ImageNet), a name, none, or a .pth")
    add("--trainable-backbone-layers", type=int, help="backbone stages to train (default: 3 if pretrained)")
    for name in HEAD_SETTINGS:  # torchvision's names; see model.py
        add(flag(name), type=int, help=f"the model's {name} (default: the model's own)")
    add("--mask-head", type=int, nargs=2, metavar=("CONVS", "CHANNELS"), help="a lighter mask head (default: 4 256)")
    add("--box-head", type=int, metavar="WIDTH", help="an R-CNN box head's fully connected width (default: 1024)")
    add("--rpn-head", type=int, metavar="WIDTH",
        help="an R-CNN RPN head's convolution width (default: its feature maps' channels)")  # fmt: skip
    add("--keypoint-head", type=int, nargs=2, metavar=("CONVS", "CHANNELS"),
        help="a lighter keypoint head (default: 8 512)")  # fmt: skip
    add("--fpn-channels", type=int, metavar="N", help="FPN width of the ResNet-18 models and maskrcnn_mobilenet_v3_"
        "large_fpn (default: 256; 128 is lighter)")  # fmt: skip
    add("--anchor-sizes", type=_size_or_auto, nargs="+", metavar="N", help="R-CNNs: five anchor sizes in pixels, "
        "or auto: fitted to the training boxes (default: 32 64 128 256 512)")  # fmt: skip
    add("--device", default=utils.default_device(), help="cuda, cuda:N or cpu (default: %(default)s)")
    add("-b", "--batch-size", type=int, default=2, help="images per training batch (default: %(default)s)")
    add("--epochs", type=int, default=10, help="total epochs to train (default: %(default)s)")
    add("--time-budget", type=float, metavar="MINUTES", help="train for this wall clock instead of --epochs")
    workers = min(4, utils.available_cpus())
    add("-j", "--workers", type=int, default=workers, help="data loading processes (default: %(default)s)")
    add("--opt", default="sgd", choices=OPTIMIZERS, help="optimizer (default: %(default)s)")
    add("--lr", type=float, default=LR, help="learning rate (default: %(default)s; from scratch try 0.001)")
    add("--momentum", type=float, default=MOMENTUM, help="SGD momentum (default: %(default)s)")
    add("--weight-decay", "--wd", type=float, default=WEIGHT_DECAY, help="weight decay (default: %(default)s)")
    add("--norm-weight-decay", type=float, help="weight decay of normalization layers (default: --weight-decay)")
    add("--lr-scheduler", default="steplr", choices=SCHEDULERS, help="lr schedule per epoch (default: %(default)s)")
    add("--lr-step-size", type=int, default=3, help="steplr: epochs between lr decays (default: %(default)s)")
    add("--lr-steps", type=int, nargs="+", help="multisteplr: the epochs at which the lr decays")
    add("--lr-gamma", type=float, default=0.1, help="steplr, multisteplr: lr decay factor (default: %(default)s)")
    add("--test-size", type=int, default=50, help="images held out for evaluation (default: %(default)s)")
    add("--val-size", type=int, default=0, help="training images set aside to choose best.pth (default: none)")
    add("--seed", type=int, default=0, help="seeds the split, init and data order (default: %(default)s)")
    add("--min-size", type=int, default=800, help="shorter image side the model resizes to (default: %(default)s)")
    add("--max-size", type=int, default=1333, help="longer image side at most (default: %(default)s)")
    add("--augmentation", default="hflip", choices=AUGMENTATIONS, help="training augmentation (default: %(default)s)")
    add("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="train at shorter sides from LOW x "
        "to HIGH x --min-size; evaluate at --min-size (default: multiscale 0.6 1, others 1 1)")  # fmt: skip
    add("--use-copypaste", action="store_true", help="Simple Copy-Paste between training images (with lsj)")
    add("--mosaic", type=float, default=0.0, metavar="P", help="each training picture a mosaic of four of its "
        "batch with probability P (mosaic.py; default: %(default)s, off)")  # fmt: skip
    add("--close-mosaic", type=int, metavar="N", help="--mosaic: the last N epochs without it (default: a tenth)")
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision: float16 on CUDA, bfloat16 on a CPU that has it (default: off; the cpu-* recipes: on)",
    )
    add("--model-ema", action="store_true", help="evaluate and save a moving average of the weights (ema.py)")
    add("--model-ema-decay", type=float, default=0.99, help="--model-ema: its decay per step (default: %(default)s)")
    add("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC convolutions (default: on)")
    add("--aspect-ratio-group-factor", type=int, default=3, help="batch by aspect ratio; -1: off (default: 3)")
    add("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun (CUDA only)")
    add("--print-freq", type=int, default=10, help="iterations between progress lines (default: %(default)s)")
    add("--output-dir", default="output", help="where checkpoints and metrics go (default: %(default)s)")
    add("--overwrite", action="store_true", help="start a new run in an --output-dir that holds an earlier one")
    add("--resume", default="", help="checkpoint.pth to continue, with the run's settings (or best.pth, --test-only)")
    add("--test-only", action="store_true", help="only evaluate the --resume checkpoint on the run's test split")
    add(
        "--allow-changes",
        action="store_true",
        help="with --resume: let flags change the run's data, sizes, augmentation",
    )
    add("--use-deterministic-algorithms", action="store_true", help="reproducible results, at some cost in speed")
    add("--tensorboard", action="store_true", help="also log losses, AP and lr to --output-dir/tensorboard")
    add("--skip-bad-samples", action="store_true", help="leave out unreadable or broken samples (default: stop)")
    add_view_args(parser)
    add("--train-tile", type=int, metavar="SIZE", help="train on tiles of SIZE photo pixels cut from each photo at its "
        "own resolution, overlapping by a fifth (train_tiles.py; default: whole photos)")  # fmt: skip
    parser.set_defaults(recipe_settings=None)  # what --recipe set (args.json, checkpoints): no flag of its own
    return parser


def add_view_args(parser: argparse.ArgumentParser) -> None:
    """--tile, --tile-overlap and --tta (tiles.py): how train.py's evaluation and predict.py see a photo."""
    add = parser.add_argument
    add("--tile", type=int, metavar="SIZE", help="detect on overlapping tiles of SIZE photo pixels and on the whole "
        "photo, merged: small objects in big photos (default: the whole photo only)")  # fmt: skip
    add("--tile-overlap", type=float, default=0.2, metavar="F", help="--tile: neighbouring tiles overlap by this "
        "fraction of a tile (default: %(default)s)")  # fmt: skip
    add("--tta", action="store_true", help="also detect on the mirror image of each photo (and tile), merged")
    add("--tile-merge", choices=MERGES, default="nms", help="how --tile and --tta join the views' detections: nms "
        "keeps the best of overlapping ones; nmm joins an object a tile cuts (default: %(default)s)")  # fmt: skip


def tiling_of(
    args: argparse.Namespace, keypoint_names: list[str] | None, flip_map: str | None, max_detections: int = 100
) -> Tiling | None:
    """The Tiling that --tile, --tile-overlap and --tta ask for (None: the whole photo, as the model sees it), with
    the flip permutation a mirror image needs for `keypoint_names` (keypoints.flip_permutation of `flip_map`),
    keeping a photo's `max_detections` best (the model's detections per image)."""
    check_view_args(args)
    if args.tile is None and not args.tta:
        return None
    keypoint_flip = None
    if args.tta and keypoint_names:
        try:
            keypoint_flip = flip_permutation(keypoint_names, flip_map)
        except utils.UserError as error:
            raise utils.UserError(f"--tta mirrors the keypoints too, and {error}") from None
    return Tiling(args.tile, args.tile_overlap, args.tta, args.batch_size, keypoint_flip, max_detections,
                  merge=args.tile_merge)  # fmt: skip


def check_view_args(args: argparse.Namespace) -> None:
    """Reject a --tile, --train-tile or --tile-overlap that cannot cut a photo."""
    for name in ("tile", "train_tile"):  # predict.py has no --train-tile
        size = getattr(args, name, None)
        if size is not None and size <= 0:
            raise utils.UserError(f"{flag(name)} {size}: a tile is a positive number of photo pixels, such as 640")
    if not 0 <= args.tile_overlap < 1:
        raise utils.UserError(f"--tile-overlap {args.tile_overlap}: a fraction of a tile, from 0 to below 1, "
                              "such as 0.2")  # fmt: skip


def _size_or_auto(value: str) -> int | str:
    """An --anchor-sizes value: a size in pixels, or auto."""
    return value if value == "auto" else int(value)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """The flags, and the names of those the command line gave: a resume takes the others from its checkpoint."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    unset = object()  # argparse fills in a default only where the namespace has no value yet
    typed = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return args, {name for name, value in vars(typed).items() if value is not unset}


def check_scale_range(args: argparse.Namespace) -> None:
    """--scale-range: around --min-size, for a preset that does not scale on its own and a model that resizes."""
    low, high = args.scale_range
    said = f"--scale-range {low:g} {high:g}"
    if not 0 < low <= 1 <= high:
        raise utils.UserError(f"{said}: LOW up to 1 and HIGH from 1, the model evaluating at 1, such as 0.8 1.2")
    if args.augmentation in ("lsj", "ssd", "ssdlite"):
        raise utils.UserError(f"{said}: --augmentation {args.augmentation} scales on its own; drop one of the two")
    if args.model in SSD_SIZES:
        raise utils.UserError(f"{said}: --model {args.model} takes one square size; drop --scale-range")


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible flag values before any work starts."""
    positive = ("batch_size", "lr", "lr_step_size", "print_freq", "min_size", "max_size", "test_size")
    for name in positive:
        if getattr(args, name) <= 0:
            raise utils.UserError(f"{flag(name)} {getattr(args, name)}: must be positive")
    if args.val_size < 0:
        raise utils.UserError(f"--val-size {args.val_size}: must not be negative")
    if not 0 < args.model_ema_decay < 1:
        raise utils.UserError(f"--model-ema-decay {args.model_ema_decay}: must lie between 0 and 1, such as 0.99")
    if args.time_budget is not None and args.time_budget <= 0:
        raise utils.UserError(f"--time-budget {args.time_budget}: must be positive (minutes)")
    if args.epochs < 0 or args.workers < 0:
        raise utils.UserError("--epochs and --workers must not be negative")
    if args.min_size > args.max_size:
        raise utils.UserError(f"--min-size {args.min_size} is above --max-size {args.max_size}; raise --max-size")
    if args.download and (args.dataset in ("folder", "coco") or args.ann_file):
        raise utils.UserError("--download fetches Penn-Fudan only; drop it to train on your own data")
    if args.test_only and not args.resume:
        raise utils.UserError("--test-only needs --resume PATH: the checkpoint to evaluate")
    if args.lr_scheduler == "multisteplr" and not args.lr_steps:
        raise utils.UserError("--lr-scheduler multisteplr needs --lr-steps: the epochs at which the lr decays")
    if not 0 <= args.mosaic <= 1:
        raise utils.UserError(f"--mosaic {args.mosaic}: a probability from 0 to 1, such as 1.0 (Ultralytics')")
    if args.mosaic and (args.use_copypaste or args.batch_size < 2):
        raise utils.UserError("--mosaic draws on the other images of a batch: give --batch-size 2 or more, and "
                              "drop --use-copypaste (one batch-wide augmentation at a time)")  # fmt: skip
    if args.close_mosaic is not None and args.close_mosaic < 0:
        raise utils.UserError(f"--close-mosaic {args.close_mosaic}: the epochs at the end without mosaic, 0 or more")
    if args.use_copypaste and args.augmentation != "lsj":
        raise utils.UserError("--use-copypaste pastes between images of one size: add --augmentation lsj")
    if args.model in SSD_SIZES and args.augmentation == "multiscale":
        raise utils.UserError(
            f"--augmentation multiscale: --model {args.model} takes one square size; use ssd or ssdlite"
        )
    if args.scale_range:
        check_scale_range(args)
    check_input_side(args.model, args.min_size)
    check_view_args(args)
    if args.train_tile and args.anchor_sizes == ["auto"]:
        raise utils.UserError("--anchor-sizes auto fits whole photos' boxes, not tiles': with --train-tile give five "
                              "sizes, such as 16 32 64 128 256")  # fmt: skip
    if args.anchor_sizes and "auto" in args.anchor_sizes and args.anchor_sizes != ["auto"]:
        raise utils.UserError("--anchor-sizes: give auto alone, or five sizes in pixels such as 16 32 64 128 256")
    if args.model.startswith("ssdlite") and args.batch_size < 2:
        raise utils.UserError(
            f"--batch-size 1: --model {args.model}'s BatchNorm cannot train on one image; use 2 or more"
        )
    if is_keypoint_model(args.model) and not hasattr(tv_tensors, "KeyPoints"):
        raise utils.UserError(
            f"--model {args.model}: keypoint training needs torchvision 0.23 or later (tv_tensors.KeyPoints), and "
            f"this is torchvision {torchvision.__version__}: pip install --upgrade torch torchvision"
        )
    if args.weights_backbone and args.weights.lower() != "none":
        raise utils.UserError(
            f"--weights-backbone needs --weights none: --weights {args.weights} is a whole model, backbone included; "
            "add --weights none"
        )
    if args.allow_changes and not args.resume:
        raise utils.UserError("--allow-changes lets --resume change a run's settings; drop it for a new run")
    if args.overwrite and args.resume:
        raise utils.UserError("--overwrite starts a new run over an earlier one; drop it to --resume a run")
    utils.check_device(args.device)
    if args.sync_bn and not args.device.startswith("cuda") and distributed.distributed_env() is not None:
        raise utils.UserError("--sync-bn: SyncBatchNorm runs on CUDA only; drop it when training on CPU processes")


def apply_recipe(args: argparse.Namespace, given: set[str]) -> None:
    """A new run's --recipe: its values become the settings the command line did not type (recipe.py)."""
    if {"epochs", "time_budget"} <= given:
        raise utils.UserError("--epochs and --time-budget: give one; the budget chooses the number of epochs")
    if not args.recipe:
        return
    values = recipe_values(args.recipe, given)
    vars(args).update(values)
    args.recipe_settings = values
    shown = " ".join(_as_typed(name, value) for name, value in values.items() if value is not None)
    print(f"recipe {args.recipe}: {shown}")


def _as_typed(name: str, value: Any) -> str:
    """A setting as its flag would be typed: `--min-size 320`, `--mask-head 2 128`, `--amp` or `--no-amp`."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    return f"{flag(name)} {' '.join(map(str, value)) if isinstance(value, list) else value}"
