"""The dataset side of every command line: the flags that name a dataset (train.py, bench.py and
`python dataset.py check|show` share them), the dataset they name, the pre-flight read of every
sample, and the `check` and `show` commands.

Library modules (dataset.py, coco_utils.py, yolo_utils.py) take plain values; this module turns
flags into them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import distributed
from coco_utils import CocoDataset
from dataset import InstanceDataset, MaskFolderDataset, PennFudanDataset
from image_io import high_bit_values
from keypoints import flip_permutation
from masks import MIN_INSTANCE_AREA, fragments_beside_larger, pixels_of
from model import BOX_MODELS, is_keypoint_model, learns_masks, resizes_in_data
from transforms import AUGMENTATIONS, get_transform, train_sizes
from utils import UserError, one_line, writable_folder
from visualize import draw, grid, save_png
from voc_utils import VocDataset, has_voc_val
from yolo_utils import has_val, is_yolo_source, yolo_dataset

DATASETS = ("pennfudan", "folder", "coco", "yolo", "voc")


def get_dataset(
    name: str | None,
    data_path: str | Path,
    transforms: Callable | None = None,
    image_suffix: str = "",
    mask_suffix: str = "_mask",
    mask_path: str | Path | None = None,
    ann_file: str | Path | None = None,
    include_crowd: bool = True,
    strict: bool = True,
    part: str = "train",
    keypoints: bool = True,
    masks: bool | None = None,
) -> InstanceDataset:
    """The dataset `name` at `data_path`; name None infers it: coco with `ann_file`, yolo for a data.yaml or a
    folder of images/ and labels/, voc for a folder of Annotations/, Penn-Fudan's layout (or no folder yet),
    else "folder".

    "folder": images in `data_path`, instance masks in `mask_path` (default: the same
    folder), paired by `<key><image_suffix>.<ext>` and `<key><mask_suffix>.png`.
    "coco": images in `data_path`, annotations in `ann_file` (with their keypoints, if `keypoints`).
    "yolo": an Ultralytics dataset (yolo_utils.py); "voc": Pascal VOC (voc_utils.py); `part` "train" or "val".
    masks: whether targets carry masks (True: a mask model's data; False: a box model's; None: where the
    data outlines every instance).
    """
    data_path = Path(data_path)
    if name is None and ann_file:
        name = "coco"
    if name is None and is_yolo_source(data_path):
        name = "yolo"
    if name is None and (data_path / "Annotations").is_dir():
        name = "voc"
    if name == "yolo":
        return yolo_dataset(data_path, part, transforms, strict, masks)
    if name == "voc":
        return VocDataset(data_path, part, transforms, include_crowd, strict)
    if name == "coco":
        if not ann_file:
            raise UserError("--dataset coco needs --ann-file PATH: the COCO instances json")
        return CocoDataset(data_path, ann_file, transforms, include_crowd, strict, keypoints, masks)
    if name is None and not data_path.exists():
        if data_path.name.lower() != "pennfudanped":  # only a Penn-Fudan path can be downloaded
            raise UserError(f"{data_path}: no such folder; check --data-path")
        name = "pennfudan"
    if name is None:
        is_pennfudan = (data_path / "PNGImages").is_dir() or (data_path / "PedMasks").is_dir()  # one may be missing
        name = "pennfudan" if is_pennfudan else "folder"
    if name == "pennfudan":
        return PennFudanDataset(data_path, transforms, strict, masks)
    if name == "folder":
        folders = (data_path, mask_path or data_path)
        return MaskFolderDataset(*folders, image_suffix, mask_suffix, transforms, strict, masks)
    raise UserError(f"--dataset {name}: unknown; choose one of {', '.join(DATASETS)}")


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and read a dataset, for train.py and `dataset.py check` alike."""
    add = parser.add_argument
    add("--data-path", default="PennFudanPed", help="dataset folder, image folder or data.yaml (default: %(default)s)")
    add("--dataset", choices=DATASETS, help="pennfudan, folder, coco, yolo or voc (default: inferred from the paths)")
    add("--mask-path", help="with --dataset folder: the instance-mask folder (default: --data-path)")
    add("--image-suffix", default="", help="with --dataset folder: image names end <key><suffix>.png/.jpg")
    add("--mask-suffix", default="_mask", help="with --dataset folder: mask names end <key><suffix>.png")
    add("--ann-file", help="with --dataset coco: the COCO instances json (--data-path holds the images)")
    add("--val-data-path", help="a fixed validation set in the same layout (default: split off --test-size images)")
    add(
        "--val-ann-file", help="with --dataset coco: a fixed validation json (images in --val-data-path or --data-path)"
    )
    add("--keypoint-flip-map", help="keypoints that swap in a mirror image, a:b,c:d (default: from left/right names)")
    add("--keypoint-sigmas", type=float, nargs="+", help="OKS sigma per keypoint, or one for all (default: COCO's)")


def dataset_from_args(
    args: argparse.Namespace, transforms: Callable | None = None, validation: bool = False, **kwargs: Any
) -> Any:
    """get_dataset with the flags of add_dataset_args; `validation` reads the fixed validation set they name.

    Keypoints are read for a --model that learns them, and masks for one that learns masks; `dataset.py
    check|show`, which name no model, read the keypoints and outlines the data has.
    """
    kwargs.setdefault("keypoints", is_keypoint_model(args.model) if "model" in args else True)
    if "model" in args:  # a keypoint model reads the outlines the data has: copy-paste pastes by them
        outlines = True if learns_masks(args.model) else None if is_keypoint_model(args.model) else False
        kwargs.setdefault("masks", outlines)
    data_path, ann_file, mask_path = args.data_path, args.ann_file, args.mask_path
    if validation and _is_yolo(args):  # the data.yaml's val:
        return get_dataset("yolo", data_path, transforms, part="val", **kwargs)
    if validation and _is_voc(args):  # ImageSets/Main/val.txt
        return get_dataset("voc", data_path, transforms, part="val", **kwargs)
    if validation:
        data_path, mask_path = args.val_data_path or data_path, args.val_data_path or mask_path
        ann_file = args.val_ann_file or ann_file
    options = {"image_suffix": args.image_suffix, "mask_suffix": args.mask_suffix, "mask_path": mask_path}
    return get_dataset(args.dataset, data_path, transforms, ann_file=ann_file, **options, **kwargs)


def training_transform(args: argparse.Namespace, dataset: InstanceDataset) -> Callable:
    """--augmentation's training transform for `dataset`: with keypoints, a flip swaps them as
    --keypoint-flip-map or their names say (keypoints.py), and a UserError says when neither can."""
    keypoint_flip = None
    if dataset.keypoint_names and args.augmentation != "none":
        keypoint_flip = flip_permutation(dataset.keypoint_names, args.keypoint_flip_map)
    model = getattr(args, "model", "maskrcnn_resnet50_fpn")  # `dataset.py show` names no model: the default's sizes
    sizes = train_sizes(args.augmentation, args.min_size, getattr(args, "scale_range", None))  # show has no flag
    model_sizes = (sizes, args.max_size) if resizes_in_data(model) else None
    return get_transform(True, args.augmentation, args.min_size, keypoint_flip, model_sizes)


def _is_yolo(args: argparse.Namespace) -> bool:
    return args.dataset == "yolo" or (
        args.dataset is None and not args.ann_file and is_yolo_source(Path(args.data_path))
    )


def _is_voc(args: argparse.Namespace) -> bool:
    inferred = args.dataset is None and not args.ann_file and not _is_yolo(args)
    return args.dataset == "voc" or (inferred and (Path(args.data_path) / "Annotations").is_dir())


def fixed_validation(args: argparse.Namespace) -> bool:
    """Whether the flags name a fixed validation set (--val-data-path, --val-ann-file, a data.yaml's val:, VOC's
    val.txt); if not, the test images are split off the data with --test-size."""
    if _is_yolo(args) or _is_voc(args):
        if args.val_data_path or args.val_ann_file:
            own = "a YOLO dataset's validation images are its data.yaml's val: entry"
            own = own if _is_yolo(args) else "a VOC dataset's validation images are those ImageSets/Main/val.txt lists"
            raise UserError(f"--val-data-path: {own}")
        return has_val(args.data_path) if _is_yolo(args) else has_voc_val(args.data_path)
    return bool(args.val_data_path or args.val_ann_file)


class _Probe(torch.utils.data.Dataset):
    """Loads sample indices[k] and yields (index, its problem or None, its instances not crowd): no pixels cross
    between processes."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, str | None, int]:
        idx = self.indices[k]
        try:
            _, target = getattr(self.dataset, "load", self.dataset.__getitem__)(idx)  # before transforms where it can
        except UserError as error:
            return idx, str(error), 0
        return idx, None, int((target["iscrowd"] == 0).sum())


def find_bad_samples(dataset: Any, indices: list[int], workers: int = 0) -> tuple[dict[int, str], int]:
    """Read samples `indices` once, in `workers` processes: {index: one-line problem} for each that fails, and
    how many instances (not crowd regions) the others hold."""
    loader = torch.utils.data.DataLoader(
        _Probe(dataset, list(indices)), batch_size=None, num_workers=workers, generator=torch.Generator()
    )
    bad, instances = {}, 0
    for idx, problem, count in loader:
        if problem is not None:
            bad[idx] = problem
        instances += count
    return bad, instances


def preflight(
    splits: dict[str, tuple[InstanceDataset, list[int]]], workers: int, skip_bad_samples: bool
) -> tuple[dict[str, list[int]], list[str]]:
    """Read every sample once before training, so that a broken file stops the run now, not hours into it.

    `splits` maps a part's name ("training", "test") to its dataset and indices; `workers`
    processes read them, each rank its share. Without `skip_bad_samples` the first problem
    stops the run (one line, exit 2); with it, each bad sample is left out with a warning.
    Returns the indices that remain in each part, and the problems (for split.json).
    """
    start, rank, world_size = time.time(), distributed.get_rank(), distributed.get_world_size()
    for warning in dict.fromkeys(w for data, _ in splits.values() for w in data.warnings):
        print(f"warning: {warning}")
    problems = list(dict.fromkeys(p for data, _ in splits.values() for p in data.problems))
    kept, instances = {}, {}
    for part, (data, ids) in splits.items():
        bad: dict[int, str] = {}
        instances[part] = 0
        for found, count in distributed.all_gather_object(find_bad_samples(data, ids[rank::world_size], workers)):
            bad.update(found)
            instances[part] += count
        problems += [bad[i] for i in ids if i in bad]
        kept[part] = [i for i in ids if i not in bad]
    if problems and not skip_bad_samples:
        more = f" ({len(problems)} bad samples: python dataset.py check lists them all)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; or leave them out with --skip-bad-samples")
    for problem in problems:
        print(f"warning: {problem}; skipped (--skip-bad-samples)")
    for part, ids in kept.items():
        if not ids:
            raise UserError(f"{splits[part][0].image_dir}: no readable {part} images left")
        if instances[part]:
            continue
        if part == "training":  # nothing to learn: masks that are all background, a suffix pairing the wrong files
            raise UserError(
                f"{splits[part][0].image_dir}: none of the {len(ids)} training images holds an instance; look at "
                "what is read with python dataset.py check and python dataset.py show (same dataset flags)"
            )
        images = f"{len(ids)} image{'s' if len(ids) != 1 else ''}"
        print(f"warning: the {part} split ({images}) holds no instance: there is no AP to score on it")
    total = sum(len(ids) for _, ids in splits.values())
    print(f"Read {total} samples in {time.time() - start:.1f} s: {len(problems)} bad")
    return kept, problems


def check_dataset(dataset: Any) -> tuple[list[str], list[str], list[str]]:
    """Read every sample once: (report lines, errors, warnings). Each error and warning names its file.

    Errors make the dataset unusable (unreadable, unpaired or mismatched files, unknown
    categories); warnings do not (images without instances, empty or tiny instances,
    boxes outside their image).
    """
    errors, warnings = list(dataset.problems), list(dataset.warnings)
    labelled: Counter[str] = Counter()  # keypoints labelled (visibility 1 or 2), by name
    per_class: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    deep: dict[str, list[float]] = {}  # images of more than 8 bits per value, by kind: count, lowest, highest, top
    per_image, crowd = [], 0
    tiny: list[tuple[bool, str]] = []  # instances too small to learn: (a fragment beside a larger one?, the warning)
    for idx, path in enumerate(dataset.image_paths):
        try:
            image, target = dataset[idx]
        except UserError as error:
            errors.append(str(error))
            continue
        sizes[f"{image.shape[-1]}x{image.shape[-2]}"] += 1
        found = high_bit_values(path)
        if found is not None:
            kind, low, high, top = found
            count, lowest, highest, _ = deep.get(kind, [0, low, high, top])
            deep[kind] = [count + 1, min(lowest, low), max(highest, high), top]
        per_image.append(len(target["labels"]))
        if not per_image[-1]:
            warnings.append(f"{dataset.annotation_path(idx)}: no instances in {path.name}; it teaches only background")
        for points in target.get("keypoints", []):
            labelled.update(name for name, v in zip(dataset.keypoint_names, points[:, 2].tolist(), strict=True) if v)
        crowd += int(target["iscrowd"].sum())
        pixels, what = target["area"].tolist(), "box"  # the outlines' own pixels where there are outlines:
        if "instance_map" in target:  # counted on the one map, no mask of its own per instance
            pixels, what = pixels_of(target["instance_map"], len(target["labels"])).tolist(), "mask"
        elif "masks" in target:
            pixels, what = target["masks"].flatten(1).sum(1).tolist(), "mask"
        beside = fragments_beside_larger(target["boxes"], pixels)
        for k, (label, area) in enumerate(zip(target["labels"].tolist(), pixels, strict=True)):
            per_class[dataset.classes[label]] += 1
            if area == 0:
                warnings.append(f"{path}: instance {k} ({dataset.classes[label]}) has an empty {what}")
            elif area < MIN_INSTANCE_AREA:
                tiny.append((k in beside, f"{path}: instance {k} ({dataset.classes[label]}) has only {area} pixels, "
                                          "too few to learn"))  # fmt: skip
    instances = sum(per_class.values())
    fragments = sum(is_fragment for is_fragment, _ in tiny)
    if instances and fragments > instances / 2:  # the bleed signature: one line for the dataset, not one per fragment
        warnings.append(
            f"{dataset.annotation_path(0).parent}: {fragments} of the {instances} instances are fragments of under "
            f"{MIN_INSTANCE_AREA} pixels beside larger ones, as the blurred edges of masks once saved as JPEG or drawn "
            "anti-aliased read; export the masks as PNG with one exact value per instance"
        )
        tiny = [(False, line) for is_fragment, line in tiny if not is_fragment]
    warnings += [line for _, line in tiny]
    warnings += dataset.annotation_warnings()
    if per_image and not sum(per_class.values()):
        errors.append(f"{dataset.image_dir}: no image holds an instance, so a model learns nothing; look at what is "
                      "read with python dataset.py show")  # fmt: skip
    counts = ", ".join(f"{name} {n}" for name, n in sorted(per_class.items())) or "none"
    report = [
        f"images: {len(dataset.image_paths)} readable {len(per_image)}",
        f"instances: {sum(per_class.values())} ({counts})",
        "instances per image: " + (f"min {min(per_image)}, max {max(per_image)}" if per_image else "-"),
        "image sizes: " + ", ".join(f"{size} ({n})" for size, n in sizes.most_common(5)),
    ]
    for kind, (count, lowest, highest, top) in deep.items():  # read scaled: value x 255 / top
        share = f"; the brightest uses {highest / top:.0%} of it" if highest < top / 2 else ""
        report.append(f"{kind} images: {count}, values {lowest:g}..{highest:g} of 0..{top:g} (scaled to 8 bits{share})")
    if crowd:
        report.append(f"of which crowd (COCO) or difficult (VOC): {crowd}, left out of training, ignored by evaluation")
    if dataset.outlines() != "all":
        kind = "boxes only, no outlines" if dataset.outlines() == "none" else "outlines on some instances only"
        models = f"the box models ({', '.join(BOX_MODELS)})" + (" and Keypoint R-CNN" if dataset.keypoint_names else "")
        mixed = "" if dataset.outlines() == "none" else "; mask models stop at instances without outline"
        report.append(f"annotations: {kind}; trains {models} on every instance{mixed}")
    if dataset.keypoint_names:
        counts = ", ".join(f"{name} {labelled[name]}" for name in dataset.keypoint_names)
        report.append(f"keypoints: {len(dataset.keypoint_names)} per instance; labelled: {counts}")
    return report, errors, warnings


def get_args_parser() -> argparse.ArgumentParser:
    """`python dataset.py check|show`'s flags: train.py's dataset flags, and show's own."""
    parser = argparse.ArgumentParser(prog="dataset.py", description="Check a dataset, or look at it, without training")
    commands = parser.add_subparsers(dest="command", required=True)
    add_dataset_args(commands.add_parser("check", help="read every file and report problems"))
    show = commands.add_parser("show", help="draw a few samples' ground truth, before and after the augmentation")
    add_dataset_args(show)
    add = show.add_argument
    add("--augmentation", default="hflip", help="train.py's preset to apply (default: %(default)s)")
    add("--min-size", type=int, default=800, help="train.py's --min-size (default: %(default)s)")
    add("--max-size", type=int, default=1333, help="train.py's --max-size (default: %(default)s)")
    add("--num-images", type=int, default=8, help="how many samples to draw (default: %(default)s)")
    add("--seed", type=int, default=0, help="which samples, and their augmentation (default: %(default)s)")
    add("--output-dir", default="show", help="where the pictures go (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python dataset.py check|show [train.py's dataset flags]`: 0 when done (check: and usable), 2 if not."""
    args, _ = get_args_parser().parse_known_args(argv)  # train.py's other flags may ride along
    try:
        if args.command == "show":
            return show_dataset(args)
        parts = {"": dataset_from_args(args, strict=False)}
        if fixed_validation(args):
            parts[" (validation)"] = dataset_from_args(args, validation=True, strict=False)
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    all_errors, all_warnings = [], []
    for part, dataset in parts.items():
        report, errors, warnings = check_dataset(dataset)
        print(f"dataset{part}: {type(dataset).__name__} at {args.data_path}")
        print("\n".join(report))
        all_errors, all_warnings = all_errors + errors, all_warnings + warnings
    for line in [*(f"error: {e}" for e in all_errors), *(f"warning: {w}" for w in all_warnings)]:
        print(line)
    print(f"{'not usable' if all_errors else 'usable'}: {len(all_errors)} errors, {len(all_warnings)} warnings")
    return 2 if all_errors else 0


def show_dataset(args: argparse.Namespace) -> int:
    """`dataset.py show`: for --num-images samples, OUTPUT_DIR/<image>.png: the sample as read, then as trained on."""
    if args.augmentation not in AUGMENTATIONS:
        raise UserError(f"--augmentation {args.augmentation}: unknown; choose one of {', '.join(AUGMENTATIONS)}")
    if args.num_images <= 0 or not 0 < args.min_size <= args.max_size:
        raise UserError("--num-images and --min-size must be positive, and --max-size at least --min-size")
    dataset = dataset_from_args(args, include_crowd=False)
    dataset.transforms = training_transform(args, dataset)
    output_dir = writable_folder(args.output_dir)
    torch.manual_seed(args.seed)
    chosen = torch.randperm(len(dataset))[: args.num_images].sort().values.tolist()
    for idx in chosen:
        image, target = dataset.load(idx)
        augmented, augmented_target = dataset.transforms(image, target)
        path = output_dir / f"{dataset.image_paths[idx].stem}.png"
        names, skeleton = dataset.classes, dataset.skeleton
        pictures = [draw(image, target, names, skeleton), draw(augmented, augmented_target, names, skeleton)]
        save_png(grid([pictures]), path)
        print(f"{path}: {len(target['labels'])} instances as read, {len(augmented_target['labels'])} after "
              f"{args.augmentation}")  # fmt: skip
    return 0
