"""bench.py --parts tiles: small objects in big photos, seen whole, tiled at prediction, and tiled in training too.

"Big photos" are made from a mask-folder dataset of single plants (CVPPP A1: 128 plants of 500 x 530 pixels) by
laying GRID x GRID of them side by side (2000 x 2120 pixels, each leaf at its own resolution): the plants are
shuffled with --seed, GRID * GRID to a photo; train.py's split of the photos (the same --seed, --tiles-test-photos
held out) then holds out whole photos, so no plant is in both parts. Each run is a train.py command under
--budget-minutes, measured as bench.py --parts recipe measures a recipe (bench_recipe.run_recipe), on cpu-12min's
recipe with --box-detections-per-img 300 (a photo holds about 200 leaves, and COCO's 100 would cap the recall):

- whole: the photos at train.py's default sizes (--min-size 800, --max-size 1333), one a step (WHOLE);
- whole, tiled: whole's last checkpoint, evaluated with --tile (--test-only): each tile, and the photo, resized
  to 800 as that model resizes a photo;
- tiles: --train-tile and --tile (training and every evaluation on tiles);
- tiles, nmm: tiles' last checkpoint with --tile and --tile-merge nmm (cut objects joined: not the default);
- tiles, tta: tiles' last checkpoint with --tile and --tta.

Each row gives box and mask AP and AP small (COCO's: under 32 x 32 photo pixels) on the held-out photos of the
last epoch (no test photo chooses anything), the epochs, and the seconds per held-out photo of a --test-only
evaluation of that checkpoint as it was scored (its start-up included: a process of its own).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import utils
from bench_recipe import ROOT, run_recipe
from dataset import MaskFolderDataset
from image_io import read_instance_mask

GRID = 4
TILE_RECIPE = ["--recipe", "cpu-12min", "--box-detections-per-img", "300"]
# Whole photos at train.py's default sizes, one photo a step: six training photos make three steps an epoch at
# batch 2. Chosen on --seed 1 (6-minute runs, AMD EPYC Zen 5, Dec 5): batch 1 reached box / mask AP 0.025 / 0.042,
# batch 2 0.010 / 0.009, batch 2 at lr 0.0006 0.010 / 0.020.
WHOLE = ["--min-size", "800", "--max-size", "1333", "--batch-size", "1"]


def add_tiles_args(parser: argparse.ArgumentParser) -> None:
    """bench.py's flags for --parts tiles."""
    add = parser.add_argument
    add("--tile-size", type=int, default=512, help="tiles: --tile and --train-tile, photo pixels (default: 512)")
    add("--tiles-test-photos", type=int, default=2, help="tiles: big photos held out (default: %(default)s)")


def compose_big_photos(args: argparse.Namespace, folder: Path) -> int:
    """GRID x GRID plants of --data-path to a photo, shuffled by --seed, written to `folder` as <k>_rgb.png and
    <k>_label.png (16-bit instance values); the number of photos (left-over plants are not used)."""
    plants = MaskFolderDataset(args.data_path, args.mask_path or args.data_path, args.image_suffix, args.mask_suffix)
    order = torch.randperm(len(plants), generator=torch.Generator().manual_seed(args.seed)).tolist()
    per_photo = GRID * GRID
    photos = len(order) // per_photo
    if photos < args.tiles_test_photos + 1:
        raise utils.UserError(f"--parts tiles: {len(plants)} images make {photos} photos of {per_photo}; "
                              f"--tiles-test-photos {args.tiles_test_photos} leaves none to train on")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(photos):
        group = order[k * per_photo : (k + 1) * per_photo]
        sizes = [plants.get_height_and_width(i) for i in group]
        cell_height, cell_width = max(h for h, _ in sizes), max(w for _, w in sizes)
        pixels = np.zeros((GRID * cell_height, GRID * cell_width, 3), np.uint8)
        labels = np.zeros((GRID * cell_height, GRID * cell_width), np.uint16)
        instances = 0
        for cell, index in enumerate(group):
            top, left = (cell // GRID) * cell_height, (cell % GRID) * cell_width
            image = plants.load(index)[0].permute(1, 2, 0).numpy()
            mask = read_instance_mask(plants.mask_paths[index])
            values, ranks = np.unique(mask, return_inverse=True)  # each instance's rank among the plant's values
            first = instances + (0 if values[0] == 0 else 1)  # numbered on from the photo's plants before
            relabelled = np.where(mask > 0, ranks.reshape(mask.shape) + first, 0)
            instances += int((values > 0).sum())
            pixels[top : top + image.shape[0], left : left + image.shape[1]] = image
            labels[top : top + mask.shape[0], left : left + mask.shape[1]] = relabelled
        Image.fromarray(pixels).save(folder / f"big{k:02d}_rgb.png")
        Image.fromarray(labels).save(folder / f"big{k:02d}_label.png")
    return photos


COLUMNS = {"run": "", "box_ap": ".3f", "box_ap_small": ".3f", "mask_ap": ".3f", "mask_ap_small": ".3f", "epochs": "d",
           "seconds_per_photo": ".1f"}  # fmt: skip


def measure_tiles(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The four rows of the module docstring, one training run after the other."""
    with tempfile.TemporaryDirectory(prefix="bench-tiles-") as tmp:
        return _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    photos = tmp / "photos"
    count = compose_big_photos(args, photos)
    print(f"{count} photos of {GRID} x {GRID} plants in {photos}; {args.tiles_test_photos} held out", flush=True)
    big = copy.copy(args)  # bench.py's flags, with the big photos as the data (the folder route)
    vars(big).update(data_path=str(photos), image_suffix="_rgb", mask_suffix="_label", dataset=None, mask_path=None,
                     ann_file=None, test_size=args.tiles_test_photos)  # fmt: skip
    tile = str(args.tile_size)
    rows = []
    for name, flags, views in (
        ("whole", [*TILE_RECIPE, *WHOLE], [("whole, tiled", ["--tile", tile])]),
        ("tiles", [*TILE_RECIPE, "--train-tile", tile, "--tile", tile],
         [("tiles, nmm", ["--tile-merge", "nmm"]), ("tiles, tta", ["--tta"])]),
    ):  # fmt: skip
        output_dir = tmp / name
        output_dir.mkdir()
        trained = run_recipe(big, name, output_dir, [*flags, "--time-budget", str(args.budget_minutes)])
        rows.append(_row(name, trained, _test_only(output_dir, [], tmp / f"{name}-eval")))
        for view, more in views:
            rows.append(_row(view, trained, _test_only(output_dir, more, tmp / view.replace(", ", "-"))))
        for row in rows[-1 - len(views) :]:
            print(f"{row['run']}: {row}", flush=True)
    return rows


def _test_only(run: Path, flags: list[str], output_dir: Path) -> dict[str, Any]:
    """--test-only of `run`'s last checkpoint with `flags`: its eval.json, and the seconds it took a held-out photo
    (nothing where the budget ended before a first epoch)."""
    if not (run / "checkpoint.pth").exists():
        return {"seconds_per_photo": None, "command": None}
    command = [sys.executable, str(ROOT / "train.py"), "--resume", str(run / "checkpoint.pth"), "--test-only",
               "--output-dir", str(output_dir), *flags]  # fmt: skip
    start = time.time()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise utils.UserError(f"{' '.join(command[1:])} failed: {finished.stderr.strip().splitlines()[-1:]}")
    evaluated = json.loads((output_dir / "eval.json").read_text())
    photos = len(json.loads((run / "split.json").read_text())["test"])
    return {**evaluated, "seconds_per_photo": (time.time() - start) / photos, "command": " ".join(command[1:])}


def _row(name: str, trained: dict[str, Any], evaluated: dict[str, Any]) -> dict[str, Any]:
    """A table row: AP and AP small (COCOeval's stats 0 and 3) of boxes and masks, epochs, seconds per photo."""
    row = {"run": name, "epochs": trained["points"][-1]["epoch"] + 1 if trained["points"] else 0}
    for iou_type, short in (("bbox", "box"), ("segm", "mask")):
        stats = evaluated.get(iou_type)
        row[f"{short}_ap"], row[f"{short}_ap_small"] = (stats[0], stats[3]) if stats else (None, None)
    row["seconds_per_photo"] = evaluated["seconds_per_photo"]
    row["train_command"], row["eval_command"] = trained["command"], evaluated["command"]
    return row
