import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import ROOT, run_here, slow, untrained_checkpoint, watch_views
from PIL import Image

import predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A best.pth as train.py writes it, of an untrained model (it still returns detections), compact (a few MB, not
    86); the tests read it, and a test that changes it changes a copy."""
    path = tmp_path_factory.mktemp("checkpoint") / "best.pth"
    return untrained_checkpoint(path, "maskrcnn_mobilenet_v3_large_fpn", ["background", "cat", "dog"], min_size=64,
                                max_size=128)  # fmt: skip


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
    """predict.py as a user runs it: a process of its own, where a stray warning would show as a line of stderr."""
    command = [sys.executable, "predict.py", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def run_predict_here(capsys, *args):
    """predict.cli in this process (conftest.run_here): what a process of its own would add is its start-up."""
    return run_here(predict.cli, capsys, *args)


@pytest.mark.slow
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


def test_the_score_threshold_filters_pictures_and_json(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "predictions"
    result = run_predict_here(
        capsys, "--checkpoint", checkpoint, photos / "a.png", "--output-dir", out, "--score-threshold", 1
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "predictions.json").read_text()) == []
    assert (np.asarray(Image.open(out / "a.png")) == np.asarray(Image.open(photos / "a.png"))).all()


def test_detections_speak_the_datasets_ids(checkpoint, photos, tmp_path, capsys):
    saved = torch.load(checkpoint, weights_only=True)
    saved["model_config"]["category_ids"] = [3, 7]  # a COCO json's own ids for "cat" and "dog"
    checkpoint = tmp_path / "best.pth"
    torch.save(saved, checkpoint)
    ann_file = tmp_path / "instances.json"
    images = [{"id": 42, "file_name": "photos/a.png"}, {"id": 17, "file_name": "b.jpg"}]
    images = [{**image, "height": 1, "width": 1} for image in images]
    ann_file.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 3}, {"id": 7}]}))
    out = tmp_path / "predictions"
    inputs = [photos / "a.png", photos / "b.jpg", photos / "c.png"]
    result = run_predict_here(capsys, "--checkpoint", checkpoint, *inputs, "--output-dir", out, "--ann-file", ann_file,
                              "--score-threshold", 0)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "note: 1 images are not in" in result.stdout
    detections = json.loads((out / "predictions.json").read_text())
    image_of = {Path(d["file_name"]).name: d["image_id"] for d in detections}
    assert image_of == {"a.png": 42, "b.jpg": 17, "c.png": 43 + 2}  # c.png: counted on above the json's ids
    assert {d["category_id"] for d in detections} <= {3, 7} and detections
    assert all({3: "cat", 7: "dog"}[d["category_id"]] == d["category_name"] for d in detections)


@pytest.mark.parametrize(
    "make_args,expected",
    [
        # nothing readable: reported, exit 2; as a user runs it, where a stray warning would be one more line
        pytest.param(lambda ckpt, photos: [photos / "notes.png"], "skipped", marks=slow),
        (lambda ckpt, photos: [photos / "gone.png"], "gone.png: no such file or folder"),
        (lambda ckpt, photos: ["--checkpoint", photos / "a.png", photos], "a.png: refused to load it"),
        (lambda ckpt, photos: [photos, "--output-dir", photos / "a.png"], "a.png: is a file, not a folder"),
        (lambda ckpt, photos: [photos, "--tile", 0], "--tile 0: a tile is a positive number of photo pixels"),
        (lambda ckpt, photos: [photos, "--tile", 64, "--tile-overlap", 1], "--tile-overlap 1.0: a fraction of a tile"),
    ],
)
def test_user_errors_exit_2(make_args, expected, checkpoint, photos, tmp_path, capsys):
    run = run_predict if expected == "skipped" else functools.partial(run_predict_here, capsys)
    result = run("--checkpoint", checkpoint, "--output-dir", tmp_path / "out", *make_args(checkpoint, photos))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr


def test_tiles_and_mirror_images_are_predicted_in_the_photos_pixels(checkpoint, photos, tmp_path, capsys, monkeypatch):
    seen = watch_views(monkeypatch)
    out = tmp_path / "predictions"
    inputs = [photos / "a.png", photos / "c.png"]
    result = run_predict_here(capsys, "--checkpoint", checkpoint, *inputs, "--output-dir", out, "--score-threshold", 0,
                              "--tile", 64, "--tta")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # a.png (90 x 120): 2 x 3 tiles of 64 and the whole photo; c.png (64 x 64) fits one tile: itself; each mirrored too
    assert seen.count((64, 64)) == 2 * 6 + 2 and seen.count((90, 120)) == 2 and len(seen) == 16
    detections = json.loads((out / "predictions.json").read_text())
    assert {Path(d["file_name"]).name for d in detections} == {"a.png", "c.png"}
    for detection in detections:
        height, width = (90, 120) if detection["file_name"].endswith("a.png") else (64, 64)
        x, y, w, h = detection["bbox"]
        assert 0 <= x and 0 <= y and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert detection["segmentation"]["size"] == [height, width]


def predict_untrained(name, class_names, photo, out, config_extra=None, **model_options):
    """predict.py (in this process) at --score-threshold 0 with an untrained `name` model: the detections it wrote."""
    best = untrained_checkpoint(out.parent / "best.pth", name, class_names, config_extra, min_size=64, **model_options)
    predict.cli(["--checkpoint", str(best), str(photo), "--output-dir", str(out), "--score-threshold", "0"])
    return json.loads((out / "predictions.json").read_text())


@pytest.mark.slow
def test_the_tutorials_backbone_predicts_and_draws(photos, tmp_path):
    out = tmp_path / "predictions"
    # its box head narrowed (--box-head 128): 8 M parameters where torchvision's has 64 M
    detections = predict_untrained("maskrcnn_mobilenet_v2", ["background", "leaf"], photos / "a.png", out, box_head=128)
    assert detections and all(d["category_name"] == "leaf" and "segmentation" in d for d in detections)
    drawn, source = np.asarray(Image.open(out / "a.png")), np.asarray(Image.open(photos / "a.png"))
    assert drawn.shape == source.shape and (drawn != source).any()


@pytest.mark.slow
def test_keypoints_are_drawn_and_written_as_coco_results(photos, tmp_path, capsys):
    out = tmp_path / "predictions"
    names, skeleton = ["background", "figure"], {"skeleton": [(0, 1), (0, 2)]}
    config = {**skeleton, "keypoint_names": ["left_eye", "right_eye", "nose"]}
    detections = predict_untrained("keypointrcnn_resnet50_fpn", names, photos / "a.png", out, config, num_keypoints=3,
                                   box_head=128, keypoint_head=(2, 128))  # fmt: skip
    assert detections  # an untrained model still finds something in noise
    for record in detections:
        assert len(record["keypoints"]) == 9 and record["keypoints"][2::3] == [1, 1, 1]
        assert len(record["keypoint_scores"]) == 3 and "segmentation" not in record
    picture = np.asarray(Image.open(out / "a.png"))
    assert picture.shape == (90, 120, 3) and (picture == 255).all(axis=2).any()  # white points and bones
    best = out.parent / "best.pth"
    predict.cli(["--checkpoint", str(best), str(photos / "a.png"), "--output-dir", str(out), "--score-threshold", "0",
                 "--tta"])  # fmt: skip
    mirrored = json.loads((out / "predictions.json").read_text())
    # in the photo's columns, give or take the pixel that keypoint heads may reach past an edge
    assert mirrored and all(-2 <= x <= 122 for d in mirrored for x in d["keypoints"][0::3])
    saved = torch.load(best, weights_only=True)
    saved["model_config"]["keypoint_names"] = ["left_eye", "nose", "tail"]  # no right eye to swap with
    torch.save(saved, best)
    with pytest.raises(SystemExit) as stop:
        predict.cli(["--checkpoint", str(best), str(photos / "a.png"), "--output-dir", str(out), "--tta"])
    assert stop.value.code == 2
    assert "--tta mirrors the keypoints too, and keypoint 'left_eye' names a side" in capsys.readouterr().err
