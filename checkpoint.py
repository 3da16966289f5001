"""What a checkpoint of train.py holds, and how a resumed run takes its settings and split from it.

Every epoch writes checkpoint.pth, and best.pth when the test AP improves. Both hold

    model          the model's state dict
    model_config   what rebuilds the model with no flag and no download (model_config below)
    args           every setting of the run, as plain types
    split          {"train": [...], "val": [...], "test": [...], "skipped": [...]}: image paths relative
                   to the dataset's image folder ("val" with --val-size), and the bad samples
                   --skip-bad-samples left out
    changes        what resumes changed: [{"epoch", "flag", "from", "to"}]
    epoch, stats   the epoch it ends and that epoch's evaluation (of the test split)
    budget         with --time-budget: {"spent": seconds of the budget used, "plans": how often the
                   epochs that fit were planned (the plan, args' epochs and schedule, is made
                   before the epoch's save)}, so that a resume from any epoch keeps the budget's
                   end and its schedule

and checkpoint.pth also the optimizer, lr_scheduler, scaler (with --amp), best_score,
metrics (every epoch's record) and rng (every rank's random state). model_from_checkpoint
rebuilds the model from either file alone (predict.py, export.py, bench.py).

A resume is the same run, continued: its settings and its split come from the checkpoint,
so `--resume output/checkpoint.pth` needs no other flag. A flag given beside it may change
only what leaves the data, the split and the model as they were (OVERRIDABLE); other
settings change only with --allow-changes, and the split, the model and the optimizer never do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from anchors import anchor_sizes_of, set_anchor_sizes
from builders import fpn_channels_of
from distributed import distributed_env, get_rank, get_world_size
from heads import (
    box_head_width,
    head_settings,
    keypoint_head_shape,
    mask_head_shape,
    num_classes_of,
    num_keypoints_of,
    rpn_head_width,
    set_heads_of,
)
from model import MODELS, build, has_reduced_tail
from tiles import VIEW_SETTINGS
from utils import UserError, load_checkpoint, save_checkpoint, tensor_bytes
from weights import freeze_batchnorm, freeze_like_pretrained

# Settings a resume may change: the length of the run, the learning rate after a divergence, the machine, how
# evaluation sees a photo (tiles, mirror images).
OVERRIDABLE = (
    "epochs", "time_budget", "lr", "workers", "device", "print_freq", "output_dir", "tensorboard", "amp",
    "channels_last", "use_deterministic_algorithms", "skip_bad_samples", *VIEW_SETTINGS,
)  # fmt: skip
TRAINING_ONLY = ("epochs", "time_budget", "lr", "tensorboard")  # mean nothing to --test-only
# Never changed by a resume, even with --allow-changes: a new split or model is a new run.
SPLIT_SETTINGS = ("seed", "test_size", "val_size", "val_data_path", "val_ann_file")
MODEL_SETTINGS = (
    "model", "weights", "weights_backbone", "trainable_backbone_layers", "mask_head", "box_head", "rpn_head",
    "keypoint_head", "fpn_channels", "anchor_sizes", "box_batch_size_per_image",
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
    "box_detections_per_img",
)  # fmt: skip
# the saved state is of this optimizer, schedule and weight average
OPTIMIZER_SETTINGS = ("opt", "lr_scheduler", "norm_weight_decay", "model_ema", "model_ema_decay")
# Flags that say what to do this time, not what the run is.
COMMANDS = ("resume", "test_only", "allow_changes", "download", "overwrite")
PATHS = ("data_path", "mask_path", "ann_file", "val_data_path", "val_ann_file", "output_dir", "weights",
         "weights_backbone")  # fmt: skip


def flag(name: str) -> str:
    """The command-line flag of a setting: "min_size" -> "--min-size"."""
    return "--" + name.replace("_", "-")


def _same(name: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if name in PATHS and isinstance(old, str) and isinstance(new, str):
        return Path(old).resolve() == Path(new).resolve()
    return False


def resume_settings(
    stored: dict[str, Any],
    given: dict[str, Any],
    checkpoint_path: str | Path,
    test_only: bool,
    allow_changes: bool,
    say: Callable[[str], Any] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The settings of a resumed run, and what the `given` flags changed ({"flag", "from", "to"} each).

    stored: the checkpoint's settings; given: the flags on the command line, by setting
    name. Each change is said once (`say`). A flag that may not change its setting raises
    a UserError naming the flag and both values.
    """
    settings, changes = dict(stored), []
    for name, value in given.items():
        old = stored.get(name)
        if name in COMMANDS or _same(name, old, value):
            continue
        said = f"{flag(name)} {value}: the run has {old} ({checkpoint_path})"
        if test_only and name in TRAINING_ONLY:
            say(f"{flag(name)} {value}: ignored with --test-only")
            continue
        if name == "recipe":
            raise UserError(
                f"{said}; a resume keeps the settings its recipe gave: drop --recipe, and type the flag you mean to "
                "change (a new recipe is a new run: another --output-dir, without --resume)"
            )
        if name in SPLIT_SETTINGS:
            raise UserError(
                f"{said}; the split is the run's and a resume never changes it: split anew in a new run "
                "(another --output-dir, without --resume)"
            )
        if name in MODEL_SETTINGS:
            raise UserError(
                f"{said}; a resume continues the checkpoint's model: to start a new run from its weights, "
                f"pass --weights {checkpoint_path} without --resume"
            )
        if name in OPTIMIZER_SETTINGS:
            raise UserError(
                f"{said}; a resume continues the checkpoint's optimizer state: to train with another, start a new "
                f"run with --weights {checkpoint_path} without --resume"
            )
        if name not in OVERRIDABLE and not allow_changes:
            raise UserError(
                f"{said}; a resume keeps the run's data, sizes and recipe: drop the flag, or add --allow-changes "
                "to change it on purpose"
            )
        say(f"{flag(name)} {value} replaces the run's {old}" + ("" if name in OVERRIDABLE else " (--allow-changes)"))
        settings[name] = value
        changes.append({"flag": flag(name), "from": old, "to": value})
    return settings, changes


def settings_of_run(
    checkpoint: Any,
    checkpoint_path: str | Path,
    defaults: dict[str, Any],
    given: dict[str, Any],
    test_only: bool,
    allow_changes: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """For --resume: the run's settings (the checkpoint's, over the command line's `defaults`), changed by the
    `given` flags as resume_settings allows; the run goes on in the checkpoint's folder. Only rank 0 says what
    changed (this runs before the process group exists)."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("args"), dict):
        raise UserError(f"--resume {checkpoint_path}: not a checkpoint of train.py; pass its checkpoint.pth")
    stored = {**defaults, **{k: v for k, v in checkpoint["args"].items() if k in defaults}}
    stored["output_dir"] = str(Path(checkpoint_path).parent)
    ranks = distributed_env()
    say = print if ranks is None or ranks[0] == 0 else (lambda line: None)
    return resume_settings(stored, given, checkpoint_path, test_only, allow_changes, say)


def stored_split(checkpoint: dict[str, Any], checkpoint_path: str | Path) -> dict[str, list[str]] | None:
    """The run's split: from the checkpoint, else from the split.json beside it; None if neither has one."""
    if "split" in checkpoint:
        return checkpoint["split"]
    beside = Path(checkpoint_path).parent / "split.json"
    if beside.is_file():
        try:
            return json.loads(beside.read_text())
        except ValueError as error:
            raise UserError(f"{beside}: not valid json ({error}); restore it from the run") from error
    return None


# ---------------------------------------------------------------------------
# Saving an epoch, and taking a run up again where it stopped.


def save_epoch(
    output_dir: Path,
    weights: dict[str, Any],
    is_best: bool,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    best_score: float,
    metrics: list[dict[str, Any]],
    rng: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write checkpoint.pth (and best.pth when `is_best`), each atomically.

    weights: what best.pth holds (model, model_config, args, split, changes, epoch, stats);
    checkpoint.pth adds the optimizer, scheduler, scaler, best score, metrics, every rank's RNG and `extra`
    (--model-ema's raw weights).
    """
    if is_best:
        save_checkpoint(weights, output_dir / "best.pth")
    state = {**weights, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}
    state.update(best_score=best_score, metrics=metrics, rng=rng, **(extra or {}))
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    save_checkpoint(state, output_dir / "checkpoint.pth")


OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # state tensors per trainable parameter: momentum; AdamW's two moments


def checkpoint_size(model: nn.Module, optimizer_name: str) -> int:
    """About the bytes of a checkpoint.pth of `model` trained with `optimizer_name`: weights and optimizer state."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return tensor_bytes(model.state_dict()) + OPTIMIZER_SLOTS.get(optimizer_name, 2) * trainable


def restore_training(
    checkpoint: dict[str, Any],
    checkpoint_path: str | Path,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> tuple[int, float, list[dict[str, Any]]]:
    """Load a checkpoint.pth's optimizer, scheduler, scaler and this rank's RNG state into a new run.

    Returns the epoch to start at, the best score so far and the metrics of the epochs done.
    """
    if "optimizer" not in checkpoint:
        raise UserError(f"--resume {checkpoint_path}: holds weights only; resume from checkpoint.pth")
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    if len(checkpoint["rng"]) == get_world_size():  # one state per rank
        set_rng_state(checkpoint["rng"][get_rank()])
    else:
        print(f"--resume {checkpoint_path}: saved by {len(checkpoint['rng'])} processes; random streams restart")
    return checkpoint["epoch"] + 1, checkpoint["best_score"], checkpoint["metrics"]


# ---------------------------------------------------------------------------
# The model: described by plain types, rebuilt with no flag and no download.


def model_config(model: nn.Module, name: str) -> dict[str, Any]:
    """What a checkpoint needs to rebuild `model` without its original flags (plain types only)."""
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    return {
        "name": name,
        "num_classes": num_classes_of(model),
        "frozen_bn_eps": frozen[0].eps if frozen else None,
        "frozen_parameters": [key for key, param in model.named_parameters() if not param.requires_grad],
        "min_size": list(model.transform.min_size),
        "max_size": model.transform.max_size,
        "masks": mask_head_shape(model) is not None,
        "num_keypoints": num_keypoints_of(model),
        "heads": head_settings(model),
        "mask_head": mask_head_shape(model),
        "box_head": box_head_width(model),  # absent from older checkpoints: the builder's own
        "rpn_head": rpn_head_width(model),  # the same
        "keypoint_head": keypoint_head_shape(model),  # the same
        "fpn_channels": fpn_channels_of(model, name),  # None: the builder's own width
        "anchor_sizes": anchor_sizes_of(model),  # None: torchvision's 32 to 512
        "reduced_tail": has_reduced_tail(model),  # SSDlite's MobileNetV3: full with ImageNet backbone weights
    }


def model_from_config(config: dict[str, Any], **kwargs: Any) -> nn.Module:
    """The architecture that model_config() describes, untrained; nothing is downloaded.

    FrozenBatchNorm and the frozen parameters are those of the model the config was
    taken from, so an optimizer's saved state fits the rebuilt model's parameters.
    kwargs replace the config's sizes (min_size, max_size).
    """
    name = config["name"]
    if name not in MODELS:
        raise UserError(f"the checkpoint's model {name} is not one of {', '.join(MODELS)}")
    sizes = {"min_size": tuple(config["min_size"]), "max_size": config["max_size"], **kwargs}
    heads = config.get("heads", {})  # absent from checkpoints older than the head settings: the defaults
    if config.get("num_keypoints"):
        heads = {**heads, "num_keypoints": config["num_keypoints"]}
    if config.get("fpn_channels"):  # absent from older checkpoints: 256
        heads = {**heads, "fpn_channels": config["fpn_channels"]}
    model = build(name, weights=None, weights_backbone=None, num_classes=config["num_classes"],
                  reduced_tail=config.get("reduced_tail"), **heads, **sizes)  # fmt: skip
    set_heads_of(model, config)
    if config.get("anchor_sizes"):  # absent from older checkpoints: torchvision's
        set_anchor_sizes(model, config["anchor_sizes"])
    if config["frozen_bn_eps"] is not None:  # trained from pretrained weights: FrozenBatchNorm in the backbone
        freeze_batchnorm(model, config["frozen_bn_eps"])
    if "frozen_parameters" in config:
        frozen = set(config["frozen_parameters"])
        for key, param in model.named_parameters():
            param.requires_grad_(key not in frozen)
    elif config["frozen_bn_eps"] is not None:  # a checkpoint from before the list was kept: the default stages
        freeze_like_pretrained(model, name, 3, config["frozen_bn_eps"])
    return model


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model a checkpoint of train.py holds, rebuilt from its model_config alone, and that config.

    No training flag is needed and nothing is downloaded: the architecture, class count,
    sizes and BatchNorm kind all come from the file.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("model_config") if isinstance(checkpoint, dict) else None
    if not config or config.get("name") not in MODELS:
        raise UserError(f"{path}: not a checkpoint of train.py (no model_config); pass its best.pth or checkpoint.pth")
    model = model_from_config(config)
    model.load_state_dict(checkpoint["model"])
    return model, config


# ---------------------------------------------------------------------------
# Every random generator's state: a resumed run draws what the straight run would have.


def get_rng_state() -> dict[str, Any]:
    """Every random generator's state as plain types and tensors, safe for weights_only loading."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what get_rng_state() returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
