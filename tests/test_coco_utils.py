"""coco_utils.py: COCO json read, checked and served as targets."""

import json

import numpy as np
import pytest
import torch

from coco_utils import CocoDataset
from dataset_cli import get_dataset
from utils import UserError


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
                assert np.array_equal(target["masks"][k].numpy(), (mask == value).astype(np.uint8))
            else:  # the bounding-rectangle polygon covers the instance's box
                assert target["masks"][k].sum() >= (mask == value).sum()
    assert len(dataset[2][1]["boxes"]) == 0 and not dataset.trains_on(2)


def test_coco_crowd_regions_stay_out_of_training_targets(coco_folder):
    folder, ann_file, _ = coco_folder
    with_crowd, without = CocoDataset(folder, ann_file)[0][1], CocoDataset(folder, ann_file, include_crowd=False)[0][1]
    assert with_crowd["iscrowd"].tolist() == [1, 0] and without["iscrowd"].tolist() == [0]
    assert torch.equal(without["masks"][0], with_crowd["masks"][1])
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
