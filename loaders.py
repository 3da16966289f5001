"""The DataLoaders of a run: its train/validation/test split (seeded, or kept from a resumed run), the pre-flight
read of every sample, and the samplers (aspect-ratio groups, DDP shards).

train.py calls make_loaders with its flags; see split.py for how the split is kept by name.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import distributed
import utils
from dataset import download_pennfudan
from dataset_cli import dataset_from_args, fixed_validation, preflight, training_transform
from group_by_aspect_ratio import training_batches
from model import BOX_MODELS_HINT, learns_masks
from mosaic import Mosaic
from split import check_held_out, ids_of_run, sample_names, split_indices, split_off_validation
from train_tiles import TrainingTiles
from transforms import copy_paste_collate, get_transform


def make_loaders(
    args: argparse.Namespace, device: torch.device, run_split: dict[str, list[str]] | None = None
) -> tuple[Any, Any, Any, list[str], dict[str, list[str]]]:
    """The train, validation and test DataLoaders, the class names, and the split by file name.

    The split is `run_split` (a resumed run's) when given, else a seeded split of the data
    (or the fixed validation set), with --val-size training images set aside for validation
    (its loader is None without). With --test-only no training data is read and the train
    loader is None. Under DDP each rank trains on its own shard of every epoch's shuffle and
    evaluates on every world_size-th test image, so each test image is counted exactly once.
    """
    data_path = Path(args.data_path)
    if not data_path.exists() and args.download and distributed.is_main_process():
        download_pennfudan(data_path)  # once, by rank 0, while the other ranks wait
    distributed.barrier()
    strict = not args.skip_bad_samples  # strict: a missing file stops the run; else it is left out, with a warning
    fixed = fixed_validation(args)  # a fixed validation set: train on every training image
    test_data = dataset_from_args(args, get_transform(False), validation=fixed, strict=strict)
    train_data = None
    if not args.test_only:
        train_data = dataset_from_args(args, include_crowd=False, strict=strict)
        if learns_masks(args.model) and train_data.outlines() == "none":
            raise utils.UserError(
                f"{args.data_path}: boxes only, no outlines, and --model {args.model} learns masks from outlines; "
                f"train a box model: {BOX_MODELS_HINT}"
            )
        if args.use_copypaste and not train_data.masks:
            raise utils.UserError(
                f"--use-copypaste pastes objects by their outlines, and --model {args.model} reads none from "
                f"{args.data_path}; drop --use-copypaste"
            )
        train_data.transforms = training_transform(args, train_data)
        if test_data.classes != train_data.classes:
            raise utils.UserError(
                f"the validation set's classes {test_data.classes[1:]} differ from the training set's"
            )
    val_ids: list[int] = []
    if run_split is not None:
        train_ids, val_ids, test_ids = ids_of_run(run_split, train_data, test_data, fixed, args.allow_changes)
    elif fixed:
        train_ids, test_ids = list(range(len(train_data or []))), list(range(len(test_data)))
    else:
        train_ids, test_ids = split_indices(len(test_data), args.test_size, args.seed)
    val_data = None
    if train_data is not None:
        train_ids = [i for i in train_ids if train_data.trains_on(i)]
        if args.val_size and run_split is None:
            train_ids, val_ids = split_off_validation(train_ids, args.val_size, args.seed)
        check_held_out(train_data, train_ids + val_ids, test_data, test_ids)
        # the validation images are training files, read as test images are (with crowds, no augmentation)
        val_data = dataset_from_args(args, get_transform(False), strict=strict) if fixed and val_ids else test_data
    parts = {} if train_data is None else {"training": (train_data, train_ids)}
    if val_ids:
        parts["validation"] = (val_data, val_ids)
    parts["test"] = (test_data, test_ids)
    kept, skipped = preflight(parts, args.workers, args.skip_bad_samples)
    train_ids, val_ids, test_ids = kept.get("training", []), kept.get("validation", []), kept["test"]
    earlier = run_split or {}
    split = {
        "train": sample_names(train_data, train_ids) if train_data is not None else earlier.get("train", []),
        "test": sample_names(test_data, test_ids),
        "skipped": list(dict.fromkeys([*earlier.get("skipped", []), *skipped])),
    }
    if val_ids or earlier.get("val"):  # train, val, test, skipped: in that order in split.json
        val = sample_names(train_data, val_ids) if train_data is not None else earlier["val"]
        split = {"train": split["train"], "val": val, **split}
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    common = {"num_workers": args.workers, "collate_fn": utils.collate_fn, "pin_memory": device.type == "cuda"}
    train_loader = None
    if train_data is not None:
        train_set = torch.utils.data.Subset(train_data, train_ids)
        if args.train_tile:  # each photo cut into tiles at its own resolution
            train_set = TrainingTiles(train_data, train_ids, args.train_tile)
            print(f"--train-tile {args.train_tile}: {len(train_set)} tiles of {len(train_ids)} images an epoch")
        # One sampler for one process and for many: a seeded shuffle per epoch (set_epoch), this rank's share of it.
        ones = not args.model.startswith("ssdlite")  # its BatchNorm on 1 x 1 maps cannot train on one image
        batches = training_batches(train_set, args.batch_size, args.aspect_ratio_group_factor, args.seed,
                                   num_replicas=world_size, rank=rank, single_images=ones)  # fmt: skip
        if getattr(batches, "joins", False):
            print(f"note: the last batch of one image joins the one before it (--model {args.model}'s BatchNorm)")
        # Training workers start again each epoch, seeded from the main RNG, which a checkpoint restores: a resumed
        # run augments as the straight one did. Test workers have nothing random: they persist (bench.py: first batch
        # time), seeded from their own generator, so that the main RNG is drawn from the same way with and without a
        # resume.
        collate = Mosaic(args.mosaic) if args.mosaic else copy_paste_collate if args.use_copypaste else utils.collate_fn
        train_options = {**common, "collate_fn": collate}
        train_loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, **train_options)
    evaluation = {"batch_size": 1, "persistent_workers": args.workers > 0, **common}
    test_set = torch.utils.data.Subset(test_data, test_ids[rank::world_size])
    test_loader = torch.utils.data.DataLoader(test_set, generator=torch.Generator(), **evaluation)
    val_loader = None
    if val_ids:
        val_set = torch.utils.data.Subset(val_data, val_ids[rank::world_size])
        val_loader = torch.utils.data.DataLoader(val_set, generator=torch.Generator(), **evaluation)
    return train_loader, val_loader, test_loader, test_data.classes, split
