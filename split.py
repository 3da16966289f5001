"""The train/validation/test split: seeded, named by file, and kept by name when a run is resumed.

The test images (--test-size, or a fixed validation set) are scored every epoch and choose
nothing; the validation images (--val-size), set aside from the training images, choose
best.pth. Without --val-size the test images choose it too, and the run says so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from utils import UserError


def split_indices(num_images: int, test_size: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split into (train, test) indices, each sorted; the same seed gives the same split."""
    if not 0 < test_size < num_images:
        raise UserError(f"--test-size {test_size}: must be at least 1 and below the {num_images} images in the dataset")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:-test_size]), sorted(order[-test_size:])


def split_off_validation(train_ids: list[int], val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """--val-size: `val_size` of the training images, seeded, set aside to choose best.pth; (train, val), sorted."""
    if not 0 < val_size < len(train_ids):
        raise UserError(
            f"--val-size {val_size}: must be at least 1 and below the {len(train_ids)} training images; lower it"
        )
    kept, chosen = split_indices(len(train_ids), val_size, seed)
    return [train_ids[i] for i in kept], [train_ids[i] for i in chosen]


def sample_names(dataset: Any, indices: list[int]) -> list[str]:
    """How split.json names samples: each image's path relative to the dataset's image folder."""
    return [dataset.image_paths[i].relative_to(dataset.image_dir).as_posix() for i in indices]


def indices_of(dataset: Any, names: list[str]) -> tuple[list[int], list[str]]:
    """The indices of the samples sample_names() named, and the names not in `dataset` now.

    A bare file name (as older split.json files hold) also matches a file in a subfolder,
    if only one file has that name.
    """
    all_names = sample_names(dataset, list(range(len(dataset.image_paths))))
    index = {name: i for i, name in enumerate(all_names)}
    by_file_name = Counter(Path(name).name for name in all_names)
    for i, name in enumerate(all_names):
        if by_file_name[Path(name).name] == 1:
            index.setdefault(Path(name).name, i)
    found = [index[name] for name in names if name in index]
    return found, [name for name in names if name not in index]


def check_held_out(train_data: Any, train_ids: list[int], test_data: Any, test_ids: list[int]) -> None:
    """Refuse a split in which a test image is also a training image: its AP would not be a held-out figure."""
    trained = {train_data.image_paths[i].resolve() for i in train_ids}
    both = [test_data.image_paths[i] for i in test_ids if test_data.image_paths[i].resolve() in trained]
    if both:
        raise UserError(
            f"{both[0]}: a test image is also a training image ({len(both)} such); the test set must be held out "
            "(check --val-data-path, --val-ann-file or the data.yaml's val:)"
        )


def ids_of_run(
    split: dict[str, list[str]], train_data: Any | None, test_data: Any, fixed: bool, allow_changes: bool
) -> tuple[list[int], list[int], list[int]]:
    """A resumed run's (train, val, test) split, found by name in the data as they are now (the validation
    images in `train_data`); no image moves between its parts.

    An image of the split that is gone stops the run (--allow-changes: it is left out);
    an image that is new since is left out (--allow-changes: it joins training, never test).
    """
    test_ids, missing = indices_of(test_data, split["test"])
    parts = [("test", missing)]
    train_ids: list[int] = []
    val_ids: list[int] = []
    if train_data is not None:
        train_ids, missing = indices_of(train_data, split["train"])
        parts.append(("training", missing))
        val_ids, missing = indices_of(train_data, split.get("val", []))
        parts.append(("validation", missing))
    for part, missing in parts:
        if missing:
            where = f"{missing[0]}: a {part} image of the run, not in the dataset now ({len(missing)} such)"
            if not allow_changes:
                raise UserError(f"{where}; put it back, or add --allow-changes to go on without")
            print(f"{where}; going on without (--allow-changes)")
    if train_data is not None:
        assigned = set(train_ids) | set(val_ids) if fixed else set(train_ids) | set(val_ids) | set(test_ids)
        new = [i for i in range(len(train_data)) if i not in assigned and train_data.trains_on(i)]
        if new and allow_changes:
            print(f"{len(new)} images not in the run's split join its training set (--allow-changes)")
            train_ids = sorted(train_ids + new)
        elif new:
            print(f"note: {len(new)} images are not in the run's split and stay out; --allow-changes trains on them")
    return train_ids, val_ids, test_ids
