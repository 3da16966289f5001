"""coco_utils.py: COCO json read, checked and served as targets."""

import json

import numpy as np
import pytest
import torch

from coco_utils import CocoDataset
from dataset_cli import get_dataset
from masks import instance_masks
from utils import UserError

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def test_coco_dataset_reads_polygons_and_both_rles(coco_folder):
    folder, ann_file, plants = coco_folder
    dataset = CocoDataset(folder, ann_file)
    assert dataset.classes == ["background", "leaf_even", "leaf_odd"]
    assert [p.name for p in dataset.image_paths] == ["a.png", "b.jpg", "c.png"]
    annotations = json.loads(ann_file.read_text())["annotations"]
    for idx, (_, _, mask) in enumerate(plants):
        image, target = dataset[idx]
        assert image.shape == (3, *mask.shape) and target["image_id"] == idx
        mine = [a for a in annotations if a["image_id"] == idx + 1]
        assert target["labels"].tolist() == [{3: 1, 7: 2}[a["category_id"]] for a in mine]
        assert target["iscrowd"].tolist() == [a["iscrowd"] for a in mine]
        assert target["area"].tolist() == [a["area"] for a in mine]
        for k, (annotation, value) in enumerate(zip(mine, [v for v in np.unique(mask) if v], strict=True)):
            x, y, w, h = annotation["bbox"]
            assert target["boxes"][k].tolist() == [x, y, x + w, y + h]
            if isinstance(annotation["segmentation"], dict):  # RLE: exactly the instance
                assert np.array_equal(instance_masks(target)[k].numpy(), (mask == value).astype(np.uint8))
            else:  # the bounding-rectangle polygon covers the instance's box
                assert instance_masks(target)[k].sum() >= (mask == value).sum()
    assert len(dataset[2][1]["boxes"]) == 0 and not dataset.trains_on(2)


def test_coco_crowd_regions_stay_out_of_training_targets(coco_folder):
    folder, ann_file, _ = coco_folder
    with_crowd, without = CocoDataset(folder, ann_file)[0][1], CocoDataset(folder, ann_file, include_crowd=False)[0][1]
    assert with_crowd["iscrowd"].tolist() == [1, 0] and without["iscrowd"].tolist() == [0]
    assert torch.equal(instance_masks(without)[0], instance_masks(with_crowd)[1])
    assert CocoDataset(folder, ann_file).trains_on(0)  # one annotation that is not a crowd


def test_coco_file_mistakes_name_the_file(coco_folder):
    folder, ann_file, _ = coco_folder
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    (folder / "unknown.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="unknown.json: annotation 1 of a.png has category_id 99"):
        CocoDataset(folder, folder / "unknown.json")[0]  # its image is a bad sample
    (folder / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="broken.json: not valid json"):
        CocoDataset(folder, folder / "broken.json")
    with pytest.raises(UserError, match="missing.json: annotation file not found"):
        get_dataset(None, folder, ann_file=folder / "missing.json")  # --ann-file alone means coco
    (folder / "b.jpg").unlink()
    with pytest.raises(UserError, match="b.jpg: listed in instances.json but not found"):
        CocoDataset(folder, ann_file)
    with pytest.raises(UserError, match="--dataset coco needs --ann-file"):
        get_dataset("coco", folder)


def _boxes_only(ann_file, keep=lambda annotation: False):
    data = json.loads(ann_file.read_text())
    for annotation in data["annotations"]:  # as CVAT's, Label Studio's and Roboflow's detection exports write them
        if not keep(annotation):
            annotation.pop("segmentation")
    ann_file.write_text(json.dumps(data))
    return data


def test_a_boxes_only_json_gives_box_models_their_boxes_and_mask_models_none(coco_folder):
    folder, ann_file, _ = coco_folder
    outlined = CocoDataset(folder, ann_file, masks=False)  # a box model never reads outlines, even where they are
    data = _boxes_only(ann_file)
    dataset = CocoDataset(folder, ann_file, masks=False)
    assert dataset.outlines() == "none" and CocoDataset(folder, ann_file, masks=None).masks is False
    for idx in range(3):
        target, expected = dataset[idx][1], outlined[idx][1]
        assert "masks" not in target and "masks" not in expected
        for key in ("boxes", "labels", "iscrowd", "area"):
            assert torch.equal(target[key], expected[key])
    mine = [a for a in data["annotations"] if a["image_id"] == 1]
    assert dataset[0][1]["area"].tolist() == [a["area"] for a in mine]  # the json's own areas
    with pytest.raises(UserError, match=r'annotation 1 of a.png has no "segmentation" .* train a box model'):
        CocoDataset(folder, ann_file, masks=True)[0]  # a mask model's read: each image a bad sample


def test_mixed_outlines_train_box_models_on_all_and_mask_models_per_sample(coco_folder):
    folder, ann_file, _ = coco_folder
    _boxes_only(ann_file, keep=lambda annotation: annotation["image_id"] != 2)  # b.jpg's annotations lose theirs
    box_data, mask_data = CocoDataset(folder, ann_file, masks=False), CocoDataset(folder, ann_file, masks=True)
    assert box_data.outlines() == "some" and len(box_data[1][1]["boxes"]) == 2
    assert instance_masks(mask_data[0][1]).shape[0] == 2  # a.png keeps its outlines
    with pytest.raises(UserError, match=r'annotation \d+ of b.jpg has no "segmentation"'):
        mask_data[1]
    (warning,) = [w for w in box_data.annotation_warnings() if "no segmentation" in w]
    assert "2 annotations (ids [" in warning and "mask models stop at their images" in warning


@pytest.mark.slow
def test_a_box_model_trains_on_a_boxes_only_json_and_check_says_so(coco_folder, tmp_path, capsys, monkeypatch):
    from conftest import check_here, saves_in_memory
    from test_train import FAST, fast_box_model, run_cli_here

    folder, ann_file, _ = coco_folder
    _boxes_only(ann_file)
    check = check_here(capsys, "--data-path", folder, "--ann-file", ann_file)
    assert check.returncode == 0, check.stdout
    assert "instances: 4 (leaf_even 2, leaf_odd 2)" in check.stdout and "usable: 0 errors" in check.stdout
    assert "annotations: boxes only, no outlines; trains the box models (fasterrcnn_resnet50_fpn" in check.stdout
    out = tmp_path / "out"
    box_model = [*fast_box_model(), "--test-size", 1]
    saves_in_memory(monkeypatch)  # no file of it is read
    result = run_cli_here(
        capsys, "--data-path", folder, "--ann-file", ann_file, *box_model, "--epochs", 1, "--output-dir", out
    )
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(record["bbox"]) == 12 and "segm" not in record
    refused = run_cli_here(
        capsys, "--data-path", folder, "--ann-file", ann_file, *FAST, "--output-dir", tmp_path / "mask"
    )
    assert refused.returncode == 2 and "boxes only, no outlines, and --model maskrcnn_tiny_fpn" in refused.stderr
