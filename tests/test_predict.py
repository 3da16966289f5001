import json
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import ROOT
from PIL import Image

from model import get_model, model_config


@pytest.fixture
def checkpoint(tmp_path):
    """A best.pth as train.py writes it, of an untrained model (it still returns detections)."""
    torch.manual_seed(0)
    model = get_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=3, weights="none", min_size=64, max_size=128)
    config = {**model_config(model, "maskrcnn_mobilenet_v3_large_fpn"), "class_names": ["background", "cat", "dog"]}
    path = tmp_path / "best.pth"
    torch.save({"model": model.state_dict(), "model_config": config, "epoch": 0}, path)
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (90, 120)), ("b.jpg", (110, 80)), ("c.png", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.png").write_text("not an image")  # a broken file among the inputs
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "readme.txt").write_text("not picked from a folder: not an image suffix")
    return folder


def run_predict(*args):
    command = [sys.executable, "predict.py", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_pictures_and_coco_json_for_every_readable_image(checkpoint, photos, tmp_path):
    out = tmp_path / "predictions"
    result = run_predict("--checkpoint", checkpoint, photos, "--output-dir", out, "--score-threshold", 0, "-b", 2)
    assert result.returncode == 0, result.stderr
    skipped = result.stderr.strip().splitlines()
    assert len(skipped) == 2 and all(line.startswith("skipped ") for line in skipped)
    assert "notes.png: cannot read the image" in result.stderr and "empty.jpg: cannot read the image" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "predictions.json"]

    detections = json.loads((out / "predictions.json").read_text())
    assert {d["file_name"] for d in detections} == {str(photos / n) for n in ("a.png", "b.jpg", "c.png")}
    for name in ("a.png", "b.jpg", "c.png"):
        source = np.asarray(Image.open(photos / name).convert("RGB"))
        drawn = np.asarray(Image.open(out / (name.split(".")[0] + ".png")))
        assert drawn.shape == source.shape
        found = [d for d in detections if d["file_name"].endswith(name)]
        assert found and (drawn != source).any()  # something was drawn where something was found
        for detection in found:
            assert detection["category_name"] == ["background", "cat", "dog"][detection["category_id"]]
            assert tuple(mask_utils.decode(detection["segmentation"]).shape) == source.shape[:2]
            x, y, w, h = detection["bbox"]
            assert 0 <= x and 0 <= y and x + w <= source.shape[1] + 1e-3 and y + h <= source.shape[0] + 1e-3


def test_the_score_threshold_filters_pictures_and_json(checkpoint, photos, tmp_path):
    out = tmp_path / "predictions"
    result = run_predict("--checkpoint", checkpoint, photos / "a.png", "--output-dir", out, "--score-threshold", 1)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "predictions.json").read_text()) == []
    assert (np.asarray(Image.open(out / "a.png")) == np.asarray(Image.open(photos / "a.png"))).all()


@pytest.mark.parametrize(
    "make_args,expected",
    [
        (lambda ckpt, photos: [photos / "notes.png"], "skipped"),  # nothing readable: reported, exit 2
        (lambda ckpt, photos: [photos / "gone.png"], "gone.png: no such file or folder"),
        (lambda ckpt, photos: ["--checkpoint", photos / "a.png", photos], "a.png: refused to load it"),
    ],
)
def test_user_errors_exit_2(make_args, expected, checkpoint, photos, tmp_path):
    result = run_predict("--checkpoint", checkpoint, "--output-dir", tmp_path / "out", *make_args(checkpoint, photos))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
