"""voc_utils.py: Pascal VOC read in place: its coordinate rule, its parts, difficult objects, every malformed file."""

import json
import re

import pytest
import torch
from conftest import LAYOUT, check_here, voc_xml, write_voc
from PIL import Image
from test_train import run_cli, run_cli_here

from coco_eval import coco_detections, coco_ground_truth, score_detections
from dataset import boxes_of_masks
from dataset_cli import main
from utils import UserError
from voc_utils import VocDataset

pytestmark = pytest.mark.usefixtures("tiny_models")  # BOX_FAST trains the tests' own model (tests/tiny_model.py)

# A box model, small and fast, from scratch: the tests' own (tests/tiny_model.py).
BOX_FAST = [
    "--model", "fasterrcnn_tiny_fpn", "--weights", "none", "--lr", "0.001",
    "--min-size", "64", "--max-size", "128", "-j", "0", "--print-freq", "5", "--box-head", "32",
]  # fmt: skip


def test_vocs_one_based_inclusive_boxes_become_the_contract_s(tmp_path):
    root = write_voc(tmp_path / "voc", val=None)
    dataset = VocDataset(root)
    assert dataset.classes == ["background", "cat", "dog"] and len(dataset) == len(LAYOUT)
    for index, (height, width, instances) in enumerate(LAYOUT):
        image, target = dataset[index]
        assert "masks" not in target and image.shape == (3, height, width)
        painted = torch.zeros(len(instances), height, width, dtype=torch.uint8)
        for k, (_, y1, y2, x1, x2) in enumerate(instances):
            painted[k, y1:y2, x1:x2] = 1
        assert torch.equal(target["boxes"], boxes_of_masks(painted))  # the box of the pixels the object covers
        assert target["labels"].tolist() == [2 if k % 2 == 0 else 1 for k in range(len(instances))]
        assert target["area"].tolist() == painted.flatten(1).sum(1).float().tolist()
    # Image 3's first object is one pixel wide: VOC's xmin == xmax, a valid box.
    assert dataset[3][1]["boxes"][0].tolist() == [50.0, 20.0, 51.0, 80.0]


def test_difficult_objects_are_left_out_of_training_and_ignored_by_evaluation(tmp_path):
    root = write_voc(tmp_path / "voc", val=None)
    assert VocDataset(root)[8][1]["iscrowd"].tolist() == [0, 1, 0]
    training = VocDataset(root, include_difficult=False)[8][1]
    assert training["iscrowd"].tolist() == [0, 0] and len(training["boxes"]) == 2
    # Scored as VOC scores: a detection of the difficult object is no false positive, missing it no miss.
    target = VocDataset(root)[8][1]
    boxes, labels = target["boxes"].as_subclass(torch.Tensor), target["labels"]
    record, ground_truth = coco_ground_truth(0, 96, 120, target)
    scores = torch.tensor([0.9, 0.95, 0.8])  # the difficult one scores highest
    found = coco_detections(0, {"boxes": boxes, "labels": labels, "scores": scores})
    assert score_detections([(record, ground_truth, found)], None)["bbox"][0] == pytest.approx(1.0)
    missed = coco_detections(0, {"boxes": boxes[[0, 2]], "labels": labels[[0, 2]], "scores": scores[[0, 2]]})
    assert score_detections([(record, ground_truth, missed)], None)["bbox"][0] == pytest.approx(1.0)
    # Of a class that has other objects too (all three dogs here): the difficult one ignored, its detection is no
    # false positive; left out of the ground truth, the same detection is one, and costs AP.
    dogs = torch.full_like(labels, 2)
    every = coco_detections(0, {"boxes": boxes, "labels": dogs, "scores": scores})
    record, ground_truth = coco_ground_truth(0, 96, 120, {**target, "labels": dogs})
    assert score_detections([(record, ground_truth, every)], None)["bbox"][0] == pytest.approx(1.0)
    plain = {key: target[key][[0, 2]] for key in ("boxes", "area", "iscrowd")}
    record, ground_truth = coco_ground_truth(0, 96, 120, {**target, **plain, "labels": dogs[[0, 2]]})
    assert score_detections([(record, ground_truth, every)], None)["bbox"][0] < 0.9


def test_cvat_and_roboflow_s_zero_based_boxes_are_read_as_touching_the_edge(tmp_path, capsys):
    # As CVAT's Datumaro writes VOC: xmin = x, xmax = x + w, floats, no <difficult> or <truncated>
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    objects = {"a": [(0.0, 0.0, 40.25, 30.5), (60.0, 20.0, 128.0, 96.0)], "b": [(10.5, 0.0, 50.0, 97.0)]}
    for name, boxes in objects.items():
        Image.new("RGB", (128, 96)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        parts = [f"<object><name>leaf</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                 f"<ymax>{y2}</ymax></bndbox></object>" for x1, y1, x2, y2 in boxes]  # fmt: skip
        size = "<size><width>128</width><height>96</height><depth>3</depth></size>"
        (tmp_path / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename>{size}{''.join(parts)}</annotation>"
        )
    dataset = VocDataset(tmp_path)
    assert dataset[0][1]["boxes"].tolist() == [[0.0, 0.0, 40.25, 30.5], [59.0, 19.0, 128.0, 96.0]]  # clipped at 0
    assert dataset[1][1]["boxes"].tolist() == [[9.5, 0.0, 50.0, 96.0]]  # and at the size; floats as they are
    assert dataset[1][1]["iscrowd"].tolist() == [0]  # no <difficult>: not difficult
    assert main(["check", "--data-path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 boxes start at 0 and 1 end up to a pixel past their image: read as touching the edge" in out
    assert out.count("read as touching the edge") == 1 and "usable: 0 errors, 1 warnings" in out


@pytest.mark.slow
def test_image_sets_name_the_parts_and_val_is_the_test_split(tmp_path):
    root = write_voc(tmp_path / "voc")
    train, val = VocDataset(root), VocDataset(root, "val")
    assert [p.name for p in val.image_paths] == ["img1.jpg", "img4.jpg", "img7.jpg"]
    assert len(train) == 7 and not {p.name for p in train.image_paths} & {p.name for p in val.image_paths}
    assert train.classes == val.classes  # from every annotation, whichever part
    (root / "ImageSets" / "Main" / "train.txt").unlink()  # without train.txt: every image val.txt does not list
    assert len(VocDataset(root)) == 7


def _set(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


# name: (how to break img0.xml (its first object is dog (11, 11, 40, 60), the image 128 x 96), the one line)
MALFORMED = {
    "not xml": (lambda x: x.write_text("<annotation><size>"), "img0.xml: not a readable VOC annotation"),
    "no size": (lambda x: _set(x, "<width>128</width>", ""), "img0.xml: no <size> with a <width> and <height>"),
    "xmax < xmin": (lambda x: _set(x, "<xmax>40</xmax>", "<xmax>5</xmax>"),
                    "img0.xml: object 0 (dog) has xmax 5 < xmin 11"),
    "ymax < ymin": (lambda x: _set(x, "<ymax>60</ymax>", "<ymax>3</ymax>"),
                    "img0.xml: object 0 (dog) has xmax 40 < xmin 11 or ymax 3 < ymin 11"),
    "xmin below 0": (lambda x: _set(x, "<xmin>11</xmin>", "<xmin>-1</xmin>"),
                     "img0.xml: object 0 (dog) has box (-1, 11, 40, 60) outside its 128x96 image"),
    "xmax 2 past the width": (lambda x: _set(x, "<xmax>40</xmax>", "<xmax>130</xmax>"),
                              "img0.xml: object 0 (dog) has box (11, 11, 130, 60) outside its 128x96 image"),
    "no name": (lambda x: _set(x, "<name>dog</name>", "<name></name>"), "img0.xml: object 0 has no <name>"),
    "no box": (lambda x: _set(x, "<xmin>11</xmin>", ""), "img0.xml: object 0 (dog) has no <bndbox> of numbers"),
    "image not on disk": (lambda x: (x.parent.parent / "JPEGImages" / "img0.jpg").unlink(),
                          "img0.xml: its image img0.jpg is not in"),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_annotation_stops_or_is_collected_naming_file_and_object(case, tmp_path):
    root = write_voc(tmp_path / "voc", val=None)
    breaks, expected = MALFORMED[case]
    breaks(root / "Annotations" / "img0.xml")
    with pytest.raises(UserError, match=re.escape(expected)):
        VocDataset(root)
    collected = VocDataset(root, strict=False)
    assert len(collected) == len(LAYOUT) - 1 and len(collected.problems) == 1 and expected in collected.problems[0]


def test_an_image_of_another_size_than_the_annotation_says_is_a_bad_sample(tmp_path):
    root = write_voc(tmp_path / "voc", val=None)
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / "img2.jpg")
    with pytest.raises(UserError, match=r"img2.xml: <size> is 112x96 but the image img2.jpg is 50x40"):
        VocDataset(root)[2]


def test_labelimg_s_flat_folder_of_images_and_xml(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(voc_xml("elsewhere/a.png", 20, 30, [("cat", (1, 1, 30, 20), 0)]))
    dataset = VocDataset(tmp_path)  # the filename names no file here: the annotation's own stem finds it
    assert dataset.image_paths == [tmp_path / "a.png"] and dataset[0][1]["boxes"].tolist() == [[0, 0, 30, 20]]


@pytest.mark.slow
def test_a_box_model_trains_on_voc_and_writes_results_in_its_ids(tmp_path, capsys):
    root, out = write_voc(tmp_path / "voc"), tmp_path / "out"
    check = check_here(capsys, "--data-path", root)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "dataset: VocDataset" in check.stdout and "dataset (validation): VocDataset" in check.stdout
    assert "annotations: boxes only, no outlines; trains the box models (fasterrcnn_resnet50_fpn" in check.stdout
    assert "of which crowd (COCO) or difficult (VOC): 1" in check.stdout
    result = run_cli("--data-path", root, *BOX_FAST, "--epochs", 1, "--output-dir", out)  # --dataset voc inferred
    assert result.returncode == 0, result.stderr
    assert "Training fasterrcnn_tiny_fpn on 7 images, testing on 3" in result.stdout
    assert json.loads((out / "split.json").read_text())["test"] == ["img1.jpg", "img4.jpg", "img7.jpg"]
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(record["bbox"]) == 12 and "segm" not in record and set(record["per_class"]["bbox"]) == {"cat", "dog"}
    evaluated = run_cli_here(
        capsys, "--resume", out / "checkpoint.pth", "--test-only", "--output-dir", tmp_path / "eval"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    found = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert {r["category_id"] for r in found} <= {1, 2} and {r["file_name"] for r in found} <= {"img1.jpg", "img4.jpg",
                                                                                             "img7.jpg"}  # fmt: skip


@pytest.mark.slow
def test_a_mask_model_on_boxes_only_stops_naming_the_box_models(tmp_path, capsys):
    root, out = write_voc(tmp_path / "voc"), tmp_path / "out"
    mask_model = [*BOX_FAST[2:], "--model", "maskrcnn_mobilenet_v3_large_fpn"]
    result = run_cli_here(capsys, "--data-path", root, *mask_model, "--epochs", 1, "--output-dir", out)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"error: {root}: boxes only, no outlines, and --model maskrcnn_mobilenet_v3_large_fpn learns masks" in (
        result.stderr
    )
    assert "train a box model: --model fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2," in result.stderr
    copy_paste = run_cli_here(
        capsys, "--data-path", root, *BOX_FAST, "--augmentation", "lsj", "--use-copypaste", "--output-dir", out
    )
    assert copy_paste.returncode == 2 and "--use-copypaste pastes objects by their outlines" in copy_paste.stderr
    assert not any((out / name).exists() for name in ("checkpoint.pth", "args.json"))
