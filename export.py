"""Export a trained model for inference (ONNX or TorchScript), then check it against PyTorch.

    python export.py --checkpoint output/best.pth --format onnx --output model.onnx --image photo.jpg

The exported model takes one image, a float32 tensor 3 x H x W with values in [0, 1]
(RGB), and returns boxes (N x 4, xyxy pixels), labels (N), scores (N) and, for Mask R-CNN,
masks (N x 1 x H x W probabilities), for Keypoint R-CNN keypoints (N x K x 3: x, y, 1) and
keypoints_scores (N x K): the outputs of torchvision's models in eval mode.
After exporting, the file is loaded back (onnxruntime for ONNX) and run on every --image
beside PyTorch; the largest differences are printed and the exit status is 1 when any
goes beyond TOLERANCES. ONNX export traces the model on the first --image: pass images
of the sizes you will feed it. ONNX needs `pip install -r requirements-export.txt`.
"""

from __future__ import annotations

import argparse
import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import utils
from checkpoint import model_from_checkpoint
from image_io import read_image

OUTPUTS = ("boxes", "labels", "scores", "masks", "keypoints", "keypoints_scores")  # what a detection model may give
# The largest absolute differences still accepted (pixels for boxes and keypoints, probabilities for scores and
# masks, heatmap logits for keypoint scores).
TOLERANCES = {"boxes": 1.0, "labels": 0, "scores": 1e-3, "masks": 1e-2, "keypoints": 1.0, "keypoints_scores": 1e-2}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a checkpoint to ONNX or TorchScript and check it")
    add = parser.add_argument
    add("--checkpoint", required=True, help="best.pth or checkpoint.pth written by train.py")
    add("--format", required=True, choices=("onnx", "torchscript"), help="onnx or torchscript")
    add("--output", required=True, help="the file to write (model.onnx, model.pt)")
    add("--image", nargs="*", default=[], help="images to export with and check on (default: a synthetic one)")
    add("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    return parser


def sample_images(paths: list[str], min_size: int) -> list[torch.Tensor]:
    """The --image files as float 3 x H x W in [0, 1], or one synthetic image of the model's size."""
    if paths:
        return [read_image(Path(path)).as_subclass(torch.Tensor).float() / 255 for path in paths]
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, min_size, min_size * 4 // 3, generator=generator)]


def export_onnx(model: torch.nn.Module, image: torch.Tensor, path: Path, opset: int) -> None:
    """torch.onnx.export with the TorchScript-based exporter, which handles torchvision's detection models."""
    with torch.inference_mode():  # the graph's outputs come in the order of the model's dict (R-CNNs put labels
        outputs = [name for name in model([image])[0] if name in OUTPUTS]  # first, RetinaNet, FCOS and SSD scores)
    dynamic = {"image": [1, 2], **{name: [0] for name in outputs}}
    if "masks" in outputs:
        dynamic["masks"] = [0, 2, 3]
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():  # the tracer's many warnings about Python control flow are expected here
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            ([image],),
            str(path),
            opset_version=opset,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=dynamic,
            **options,
        )


def import_onnxruntime() -> Any:
    """onnxruntime, or a one-line error saying how to install it (before any time is spent exporting)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise utils.UserError("--format onnx needs onnxruntime: pip install -r requirements-export.txt") from error
    return onnxruntime


def onnx_runner(path: Path) -> Any:
    """A function image -> outputs that runs the ONNX file in onnxruntime on the CPU."""
    session = import_onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(image: torch.Tensor) -> dict[str, torch.Tensor]:
        values = session.run(None, {"image": image.numpy()})
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(names, values, strict=True)}

    return run


def torchscript_runner(path: Path) -> Any:
    """A function image -> outputs that runs the saved TorchScript file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.load(str(path))

    def run(image: torch.Tensor) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "RCNN always returns a")  # scripted models return (losses, detections)
            _, detections = scripted([image])
        return detections[0]

    return run


def matched(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`got`'s detections in `expected`'s order, each paired with the unpaired one of the same label nearest in box
    and score: the order among (nearly) equal scores is arbitrary, and eager PyTorch and an exported graph break
    such ties differently (an untrained model scores many alike)."""
    boxes, scores = got["boxes"].float(), got["scores"].float()
    free = torch.ones(len(scores), dtype=torch.bool)
    order = []
    for box, label, score in zip(
        expected["boxes"].float(), expected["labels"], expected["scores"].float(), strict=True
    ):
        distance = (boxes - box).abs().amax(dim=1) + (scores - score).abs() * 1000  # pixels; 1e-3 of score = 1 pixel
        distance[~free | (got["labels"] != label)] = float("inf")
        if not torch.isfinite(distance.min()):
            return got  # no counterpart: compared as it stands, it differs
        order.append(int(distance.argmin()))
        free[order[-1]] = False
    return {name: value[order] for name, value in got.items()}


def largest_differences(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest absolute difference of each output, detections in canonical order; inf where the numbers of
    detections differ."""
    differences = {}
    if expected["scores"].shape == got["scores"].shape:
        got = matched(expected, got)
    for name in expected:
        a, b = expected[name].float(), got[name].float()
        differences[name] = float((a - b).abs().max()) if a.shape == b.shape and a.numel() else 0.0
        if a.shape != b.shape:
            differences[name] = float("inf")
    return differences


def main(args: argparse.Namespace) -> bool:
    """Export, then check; True when every difference is within TOLERANCES."""
    if args.format == "onnx":
        import_onnxruntime()
    model, config = model_from_checkpoint(args.checkpoint)
    model.eval()
    images = sample_images(args.image, config["min_size"][0])
    output = Path(args.output)
    utils.writable_folder(output.parent, "--output's folder")
    if args.format == "onnx":
        export_onnx(model, images[0], output, args.opset)
        run = onnx_runner(output)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            torch.jit.script(model).save(str(output))
        run = torchscript_runner(output)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB); checking it against PyTorch")

    ok = True
    for k, image in enumerate(images):
        with torch.inference_mode():
            expected = model([image])[0]
            differences = largest_differences(expected, run(image))
        name = args.image[k] if args.image else "synthetic image"
        shown = ", ".join(f"{key} {value:.3g}" for key, value in differences.items())
        size = f"{image.shape[-2]}x{image.shape[-1]}"
        print(f"{name} ({size}, {len(expected['scores'])} detections): largest |diff| {shown}")
        if len(expected["scores"]) == 0:
            print(f"  nothing detected in {name}: pass a photo where the model finds objects for a real check")
        ok &= all(differences[key] <= TOLERANCES[key] for key in differences)
    tolerances = ", ".join(f"{key} {TOLERANCES[key]:g}" for key in expected)
    print(("matches PyTorch" if ok else "DIFFERS from PyTorch") + f" (tolerances: {tolerances})")
    return ok


if __name__ == "__main__":
    try:
        matches = main(get_args_parser().parse_args())
    except utils.UserError as error:
        utils.exit_with_user_error(error)
    raise SystemExit(0 if matches else 1)
