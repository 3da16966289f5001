"""Run a trained model on images: a picture with what it found, and the detections as COCO JSON.

    python predict.py --checkpoint output/best.pth photos/ extra.jpg --output-dir predictions

For each readable image, predictions/<name>.png shows the masks (or keypoints and their
skeleton), boxes, class names and scores above --score-threshold, at most 1600 pixels long
(a 12-megapixel photo is drawn at a screen's size); predictions/predictions.json
lists the same detections in COCO results format (xywh boxes, RLE masks, keypoints as
x, y, 1 triples with their keypoint_scores), each with its file_name, in the training
data's category ids (a COCO json's own ids) and, with --ann-file, that json's image ids. The checkpoint
says which model to build, its classes and its sizes. A file that is not a readable image
is reported in one line and skipped; the others are still predicted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import utils
from checkpoint import model_from_checkpoint
from coco_eval import coco_detections, in_dataset_ids
from coco_utils import read_coco
from dataset import IMAGE_EXTENSIONS
from flags import add_view_args, tiling_of
from image_io import read_image
from tiles import detect
from visualize import draw


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw and save a trained model's detections")
    add = parser.add_argument
    add("inputs", nargs="+", help="image files and folders of images")
    add("--checkpoint", required=True, help="best.pth or checkpoint.pth written by train.py")
    add("--output-dir", default="predictions", help="where the pictures and JSON go (default: %(default)s)")
    add("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this (default: 0.5)")
    add("--device", default=utils.default_device(), help="cuda or cpu")
    add("-b", "--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)")
    add("-j", "--workers", type=int, default=2, help="image decoding processes (default: %(default)s)")
    add("--ann-file", help="a COCO json listing the images: write its image_id for each image it lists")
    add_view_args(parser)
    return parser


def find_images(inputs: list[str]) -> list[Path]:
    """The files named, and the images in the folders named (sorted), each once."""
    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.exists():
            paths.append(path)
        else:
            raise utils.UserError(f"{path}: no such file or folder; pass image files or folders")
    return list(dict.fromkeys(paths))


class ImageFiles(torch.utils.data.Dataset):
    """Decoded images, or the error that one file gave: a bad file must not stop the loader."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            return index, read_image(self.paths[index])
        except utils.UserError as error:
            return index, str(error)


def image_ids_of(paths: list[Path], ann_file: str | None) -> list[int]:
    """The image_id of each input: its id in `ann_file` where the json lists it (by file_name, matched from the
    end of the path), else its position, counted on from above the json's largest id, so ids stay unique."""
    if ann_file is None:
        return list(range(len(paths)))
    coco = read_coco(Path(ann_file))
    by_name = {Path(info["file_name"]).as_posix(): image_id for image_id, info in coco.imgs.items()}
    first_free = max(coco.imgs, default=0) + 1
    ids, unlisted = [], 0
    for position, path in enumerate(paths):
        parts = path.resolve().as_posix().split("/")
        found = [by_name[name] for name in ("/".join(parts[-k:]) for k in range(len(parts), 0, -1)) if name in by_name]
        ids.append(found[0] if found else first_free + position)
        unlisted += not found
    if unlisted:
        print(f"note: {unlisted} images are not in {ann_file}; their image_id is counted from {first_free}")
    return ids


def output_names(paths: list[Path]) -> list[str]:
    """A picture name per input, <stem>.png, numbered where two inputs share a stem."""
    names, seen = [], set()
    for path in paths:
        name, k = f"{path.stem}.png", 1
        while name in seen or name == "predictions.json":
            name, k = f"{path.stem}_{k}.png", k + 1
        seen.add(name)
        names.append(name)
    return names


@torch.inference_mode()
def predict(args: argparse.Namespace) -> dict[str, Any]:
    """Predict every input; return {"predicted": [file names], "skipped": [one line per bad file]}."""
    if args.batch_size <= 0 or not 0 <= args.score_threshold <= 1:
        raise utils.UserError("--batch-size must be positive and --score-threshold between 0 and 1")
    utils.check_device(args.device)
    paths = find_images(args.inputs)
    if not paths:
        raise utils.UserError(f"{' '.join(args.inputs)}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    device = torch.device(args.device)
    model, config = model_from_checkpoint(args.checkpoint)
    model.to(device).eval()
    detections = (config.get("heads") or {}).get("box_detections_per_img") or 100
    tiling = tiling_of(args, config.get("keypoint_names"), config.get("keypoint_flip_map"), detections)
    class_names = config.get("class_names") or ["background", *(f"class {i}" for i in range(1, config["num_classes"]))]
    # the dataset's own category ids (COCO's, for a COCO json); older checkpoints: the labels 1..K
    category_ids = config.get("category_ids") or list(range(1, config["num_classes"]))
    skeleton = [tuple(pair) for pair in config.get("skeleton", [])]  # keypoints joined in the pictures
    image_ids = image_ids_of(paths, args.ann_file)
    output_dir = utils.writable_folder(args.output_dir)
    names = output_names(paths)

    loader = torch.utils.data.DataLoader(
        ImageFiles(paths), batch_size=args.batch_size, num_workers=args.workers, collate_fn=utils.collate_fn
    )
    detections, predicted, skipped = [], [], []
    for indices, images in loader:
        for image in images:
            if isinstance(image, str):
                skipped.append(image)
                print(f"skipped {image}", file=sys.stderr, flush=True)
        good = [(index, image) for index, image in zip(indices, images, strict=True) if not isinstance(image, str)]
        if not good:
            continue
        outputs = detect(model, [image.to(device).float() / 255 for _, image in good], tiling)  # masks unpasted
        for (index, image), output in zip(good, outputs, strict=True):
            keep = output["scores"] >= args.score_threshold
            output = {key: value[keep].cpu() for key, value in output.items()}
            picture = draw(image, output, class_names, skeleton).permute(1, 2, 0).numpy()  # at a screen's size
            Image.fromarray(picture).save(output_dir / names[index])
            found = coco_detections(index, output, tuple(image.shape[-2:]))
            for k, box in enumerate(found["bbox"]):
                name = class_names[box["category_id"]]
                record = {"file_name": str(paths[index]), **in_dataset_ids([box], image_ids, category_ids)[0]}
                record["category_name"] = name
                if "segm" in found:
                    record["segmentation"] = found["segm"][k]["segmentation"]
                if "keypoints" in found:
                    record["keypoints"] = found["keypoints"][k]["keypoints"]
                    record["keypoint_scores"] = output["keypoints_scores"][k].tolist()
                detections.append(record)
            predicted.append(str(paths[index]))
            print(f"{paths[index]}: {len(found['bbox'])} detections -> {output_dir / names[index]}", flush=True)
    utils.write_json(detections, output_dir / "predictions.json")
    print(f"predicted {len(predicted)} images, skipped {len(skipped)}; detections in {output_dir / 'predictions.json'}")
    return {"predicted": predicted, "skipped": skipped}


def cli(argv: list[str] | None = None) -> None:
    """`python predict.py ARGS`: predict, with a user's error told in one line and ended with SystemExit 2."""
    try:
        result = predict(get_args_parser().parse_args(argv))
    except utils.UserError as error:
        utils.exit_with_user_error(error)
    if not result["predicted"]:
        raise SystemExit(2)  # every input was bad: each has been reported above


if __name__ == "__main__":
    cli()
