"""Ultralytics segmentation datasets: data.yaml forms, polygons as masks, and every malformed label named."""

import json
import re

import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import LAYOUT, check_here, saves_in_memory, write_yolo
from test_train import FAST, fast_box_model, run_cli, run_cli_here

from dataset_cli import get_dataset
from masks import instance_masks
from utils import UserError
from yolo_utils import YoloDataset, read_data_yaml, yolo_dataset

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def test_polygons_become_masks_with_their_boxes_and_classes(tmp_path):
    data = yolo_dataset(write_yolo(tmp_path))
    assert data.classes == ["background", "stem", "leaf"] and data.category_ids == [0, 1]
    names = [p.name for p in data.image_paths]
    assert names == [f"img{i}.png" for i in (0, 2, 3, 5, 6, 8, 9)]
    for idx, name in enumerate(names):
        height, width, instances = LAYOUT[int(name[3:-4])]
        image, target = data[idx]
        assert image.shape == (3, height, width) and instance_masks(target).shape == (len(instances), height, width)
        assert target["labels"].tolist() == [k % 2 + 1 for k in range(len(instances))]
        for k, (_, y1, y2, x1, x2) in enumerate(instances):
            # as pycocotools rasterises the same polygon in pixels (COCO's rule), and the box is the mask's
            polygon = [float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]
            expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))
            assert abs(instance_masks(target)[k].numpy().astype(int) - expected).sum() <= 2 * (y2 - y1 + x2 - x1)
            assert target["boxes"][k].tolist() == pytest.approx([x1, y1, x2, y2], abs=1)
            assert target["area"][k] == instance_masks(target)[k].sum()
    _, background = data[names.index("img2.png")]  # no label file: kept, with no instance
    assert len(background["labels"]) == 0 and instance_masks(background).shape[0] == 0


def test_data_yaml_forms_as_ultralytics_and_roboflow_write_them(tmp_path):
    write_yolo(tmp_path / "ds")
    roboflow = tmp_path / "ds" / "data.yaml"
    roboflow.write_text("train: ../images/train\nval: ../images/val\nnc: 2\nnames: ['stem', 'leaf']\n")
    parts = read_data_yaml(roboflow)  # "../images/train" is not there: tried as "images/train"
    assert parts["names"] == ["stem", "leaf"] and len(parts["train"]) == 7 and len(parts["val"]) == 3
    listed = tmp_path / "ds" / "train.txt"
    listed.write_text("./images/train/img0.png\n./images/train/img3.png\n")
    (tmp_path / "list.yaml").write_text("path: ds\ntrain: train.txt\nnames: [stem, leaf]\n")
    parts = read_data_yaml(tmp_path / "list.yaml")
    assert [p.name for p in parts["train"]] == ["img0.png", "img3.png"] and parts["val"] is None
    assert len(yolo_dataset(tmp_path / "list.yaml")) == 2  # the other images' label files are no orphans


def test_a_folder_of_images_and_labels_is_inferred_and_named_by_classes_txt(tmp_path):
    write_yolo(tmp_path)
    (tmp_path / "data.yaml").unlink()
    assert get_dataset(None, tmp_path).classes == ["background", "class 0", "class 1"]  # numbered from the labels
    (tmp_path / "labels" / "classes.txt").write_text("stem\nleaf\n")  # where LabelImg writes it
    data = get_dataset(None, tmp_path)
    assert isinstance(data, YoloDataset) and data.classes == ["background", "stem", "leaf"] and len(data) == 10


MALFORMED = {
    "not numbers": ("0 0.1 0.1 zero 0.5 0.2 0.9", "line 2 is not numbers"),
    "class out of range": ("5 0.1 0.1 0.5 0.1 0.5 0.5", "line 2 has class 5; the dataset has classes 0 to 1"),
    "odd coordinates": ("1 0.1 0.1 0.5 0.1 0.5", "line 2 has 5 coordinates"),
    "three numbers": ("1 0.1 0.1 0.5", "line 2 has 3 coordinates; give a box (xc yc w h) or a polygon"),
    "a box past the edge": ("1 0.5 0.5 1.2 0.2", "line 2 has coordinates outside 0..1"),
    "not normalised": ("0 10 10 50 10 50 50", "line 2 has coordinates outside 0..1"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_line_is_named_with_its_file_and_line(case, tmp_path):
    line, expected = MALFORMED[case]
    label = tmp_path / "labels" / "train" / "img0.txt"
    write_yolo(tmp_path)
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    data = yolo_dataset(tmp_path / "data.yaml")
    with pytest.raises(UserError, match=re.escape(f"img0.txt: {expected}")):
        data.load(0)


def test_a_label_file_without_its_image_is_a_warning_and_unused(tmp_path):
    # Ultralytics reads past such files (its coco128 ships two), and so do we.
    write_yolo(tmp_path)
    (tmp_path / "images" / "train" / "img3.png").unlink()
    data = yolo_dataset(tmp_path / "data.yaml")
    assert len(data) == 6 and not data.problems
    (warning,) = data.warnings
    assert warning.endswith(f"img3.txt: a label file without an image in {tmp_path / 'images' / 'train'}; it is unused")


@pytest.mark.slow
def test_trains_on_its_own_data_yaml_with_val_as_the_test_set(tmp_path):
    yaml, out = write_yolo(tmp_path / "ds"), tmp_path / "out"
    result = run_cli(*FAST, "--data-path", yaml, "--epochs", 1, "--output-dir", out)
    assert result.returncode == 0, result.stderr
    assert "Training maskrcnn_tiny_fpn on 7 images, testing on 3" in result.stdout  # img2 too: background
    split = json.loads((out / "split.json").read_text())
    assert split["test"] == [f"images/val/img{i}.png" for i in (1, 4, 7)] and "images/train/img2.png" in split["train"]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(record["per_class"]["segm"]) == {"stem", "leaf"}
    config = torch.load(out / "best.pth", weights_only=True)["model_config"]
    assert config["class_names"] == ["background", "stem", "leaf"] and config["category_ids"] == [0, 1]


@pytest.mark.slow
def test_skip_bad_samples_leaves_out_a_malformed_label_file_with_one_line(tmp_path, capsys, monkeypatch):
    saves_in_memory(monkeypatch)  # no file of it is read
    yaml, out = write_yolo(tmp_path / "ds"), tmp_path / "out"
    (tmp_path / "ds" / "labels" / "train" / "img5.txt").write_text("0 0.1 0.1\n")
    stopped = run_cli_here(capsys, *FAST, "--data-path", yaml, "--epochs", 1, "--output-dir", out)
    assert stopped.returncode == 2 and len(stopped.stderr.strip().splitlines()) == 1
    assert "img5.txt: line 1 has 2 coordinates" in stopped.stderr
    skipped = run_cli_here(capsys, *FAST, "--data-path", yaml, "--epochs", 1, "--output-dir", out, "--skip-bad-samples")
    assert skipped.returncode == 0, skipped.stderr
    assert "img5.txt: line 1 has 2 coordinates; give a box (xc yc w h) or a polygon (3 or more x, y); skipped" in (
        skipped.stdout
    )
    assert "on 6 images, testing on 3" in skipped.stdout


def test_dataset_check_reads_both_parts(tmp_path, capsys):
    yaml = write_yolo(tmp_path)
    (tmp_path / "labels" / "val" / "img4.txt").write_text("7 0.1 0.1 0.5 0.1 0.5 0.5\n")
    result = check_here(capsys, "--data-path", yaml)
    assert result.returncode == 2
    assert "dataset (validation): YoloDataset" in result.stdout
    assert "img4.txt: line 1 has class 7" in result.stdout and "img2.txt: no instances in img2.png" in result.stdout
    assert "not usable: 1 errors" in result.stdout


@pytest.mark.slow
def test_flags_that_do_not_fit_a_yolo_dataset_are_refused(tmp_path, capsys):
    yaml, out = write_yolo(tmp_path / "ds"), tmp_path / "out"
    result = run_cli_here(capsys, *FAST, "--data-path", yaml, "--val-data-path", tmp_path, "--output-dir", out)
    assert result.returncode == 2 and "a YOLO dataset's validation images are its data.yaml's val:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (out / "checkpoint.pth").exists()


def _as_detection_labels(root, parts=("train", "val"), keep=()):
    """Rewrite polygon lines as Ultralytics detection lines (class xc yc w h), but in the files named in `keep`."""
    for part in parts:
        for path in (root / "labels" / part).glob("*.txt"):
            if path.stem in keep:
                continue
            lines = []
            for line in path.read_text().splitlines():
                category, *xy = line.split()
                xs, ys = [float(v) for v in xy[0::2]], [float(v) for v in xy[1::2]]
                centre = ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2)
                lines.append(
                    f"{category} {centre[0]:.6f} {centre[1]:.6f} {max(xs) - min(xs):.6f} {max(ys) - min(ys):.6f}"
                )
            path.write_text("\n".join(lines) + "\n")


def test_detection_labels_are_boxes_and_polygons_give_box_models_their_box(tmp_path):
    yaml = write_yolo(tmp_path)
    outlined = yolo_dataset(yaml, masks=False)  # polygons, read for a box model: each polygon's box
    assert outlined.outlines() == "all"
    _as_detection_labels(tmp_path, keep=("img3",))  # a folder that mixes both
    mixed = yolo_dataset(yaml, masks=False)
    assert mixed.outlines() == "some" and yolo_dataset(yaml, masks=None).masks is False
    for idx, path in enumerate(mixed.image_paths):
        height, width, instances = LAYOUT[int(path.stem[3:])]
        target, expected = mixed[idx][1], outlined[idx][1]
        assert "masks" not in target and torch.equal(target["labels"], expected["labels"])
        assert torch.allclose(target["boxes"], expected["boxes"], atol=1e-3)  # 6 decimals of a normalised box
        boxes = [[x1, y1, x2, y2] for _, y1, y2, x1, x2 in instances]
        assert torch.allclose(target["boxes"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), atol=1e-3)
    with pytest.raises(UserError, match=r"img0.txt: label 1 is a box \(xc yc w h\); mask models learn from polygons"):
        yolo_dataset(yaml, masks=True).load(0)  # a mask model's read: the image is a bad sample
    assert instance_masks(yolo_dataset(yaml, masks=True).load(2)[1]).shape[0] == 2  # img3 kept its polygons


@pytest.mark.slow
def test_ultralytics_coco128_as_it_ships_passes_check_and_trains(tmp_path, capsys, monkeypatch):
    saves_in_memory(monkeypatch)  # no file of it is read
    # coco128: one folder for train: and val:, and label files whose image is not there.
    root = tmp_path / "coco128"
    write_yolo(root, val=())
    _as_detection_labels(root, parts=("train",))
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames:\n  0: stem\n  1: leaf\n")
    (root / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    check = check_here(capsys, "--data-path", root / "data.yaml")
    assert check.returncode == 0, check.stdout
    assert "note: " in check.stdout and "val: names the training images; holding out --test-size" in check.stdout
    assert "gone.txt: a label file without an image in" in check.stdout
    assert "usable: 0 errors, 2 warnings" in check.stdout  # and img2, without instances
    box_model = fast_box_model()
    result = run_cli_here(
        capsys, "--data-path", root / "data.yaml", *box_model, "--epochs", 1, "--output-dir", tmp_path / "out"
    )
    assert result.returncode == 0, result.stderr
    assert "Training fasterrcnn_tiny_fpn on 7 images, testing on 3" in result.stdout
    assert "warning: " in result.stdout and "gone.txt: a label file without an image" in result.stdout
