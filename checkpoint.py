"""What a checkpoint of train.py holds, and how a resumed run takes its settings and split from it.

Every epoch writes checkpoint.pth, and best.pth when the test AP improves. Both hold

    model          the model's state dict
    model_config   what rebuilds the model with no flag and no download (model.model_config)
    args           every setting of the run, as plain types
    split          {"train": [...], "test": [...], "skipped": [...]}: image paths relative to the
                   dataset's image folder, and the bad samples --skip-bad-samples left out
    changes        what resumes changed: [{"epoch", "flag", "from", "to"}]
    epoch, stats   the epoch it ends and that epoch's evaluation

and checkpoint.pth also the optimizer, lr_scheduler, scaler (with --amp), best_score,
metrics (every epoch's record) and rng (every rank's random state).

A resume is the same run, continued: its settings and its split come from the checkpoint,
so `--resume output/checkpoint.pth` needs no other flag. A flag given beside it may change
only what leaves the data, the split and the model as they were (OVERRIDABLE); other
settings change only with --allow-changes, and the split, the model and the optimizer never do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils import UserError

# Settings a resume may change: the length of the run, the learning rate after a divergence, the machine.
OVERRIDABLE = (
    "epochs", "lr", "workers", "device", "print_freq", "output_dir", "tensorboard", "amp", "channels_last",
    "use_deterministic_algorithms", "skip_bad_samples",
)  # fmt: skip
TRAINING_ONLY = ("epochs", "lr", "tensorboard")  # mean nothing to --test-only
# Never changed by a resume, even with --allow-changes: a new split or model is a new run.
SPLIT_SETTINGS = ("seed", "test_size", "val_data_path", "val_ann_file")
MODEL_SETTINGS = (
    "model", "weights", "weights_backbone", "trainable_backbone_layers", "mask_head", "box_batch_size_per_image",
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
    "box_detections_per_img",
)  # fmt: skip
OPTIMIZER_SETTINGS = ("opt", "lr_scheduler", "norm_weight_decay")  # the saved state is of this optimizer and schedule
# Flags that say what to do this time, not what the run is.
COMMANDS = ("resume", "test_only", "allow_changes", "download")
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
