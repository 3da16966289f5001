"""coco_eval.py: per-class AP and results in the dataset's own ids, against pycocotools on the user's json."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import LAYOUT, instance_mask, write_coco
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_engine import StandIn

from coco_eval import coco_stats, in_dataset_ids
from coco_utils import CocoDataset
from engine import evaluate
from masks import instance_masks
from transforms import get_transform
from utils import collate_fn


def test_per_class_ap_equals_pycocotools_restricted_to_each_category(tmp_path):
    plants = []
    for index in (0, 1, 4, 6, 8):
        height, width, instances = LAYOUT[index]
        mask = instance_mask(height, width, instances)
        plants.append((f"{index}.png", np.where(mask[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, 2), mask))
    ann_file = write_coco(tmp_path, plants)
    data = CocoDataset(tmp_path, ann_file, get_transform(train=False))
    rng = np.random.default_rng(0)
    outputs, results = [], []
    for idx in range(len(data)):
        _, target = data[idx]
        n = len(target["labels"])
        masks = torch.roll(instance_masks(target), shifts=tuple(rng.integers(-4, 5, 2).tolist()), dims=(1, 2))
        output = {
            "boxes": target["boxes"] + torch.from_numpy(rng.normal(0, 2, (n, 4)).astype(np.float32)),
            "labels": target["labels"].flip(0) if idx == 3 else target["labels"],  # some wrong classes
            "scores": torch.from_numpy(rng.uniform(0.1, 1, n).astype(np.float32)),
            "masks": masks[:, None].float() * 0.9,
        }
        outputs.append(output)
        for k in range(n):
            rle = mask_utils.encode(np.asfortranarray(masks[k].numpy()))
            category = {1: 3, 2: 7}[int(output["labels"][k])]
            results.append(
                {"image_id": idx + 1, "category_id": category, "segmentation": rle, "score": float(output["scores"][k])}
            )
    loader = torch.utils.data.DataLoader(data, batch_size=1, collate_fn=collate_fn)
    stats = evaluate(StandIn(outputs), loader, torch.device("cpu"), data.classes)
    ground_truth = COCO(str(ann_file))
    detections = ground_truth.loadRes(results)
    for category, name in ((3, "leaf_even"), (7, "leaf_odd")):
        evaluator = COCOeval(ground_truth, detections, "segm")
        evaluator.params.catIds = [category]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert stats["per_class"]["segm"][name] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert stats["per_class"]["segm"]["leaf_even"] != stats["per_class"]["segm"]["leaf_odd"]
    assert set(stats["per_class"]) == {"bbox", "segm"}


def coco_with_ids_of_its_own(folder):
    """A COCO json whose image ids are neither positions nor contiguous, and whose category ids are 3 and 7."""
    plants = []
    for index in (0, 1, 3, 4, 6, 8, 9):
        height, width, instances = LAYOUT[index]
        mask = instance_mask(height, width, instances)
        plants.append((f"{index}.png", np.where(mask[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, 2), mask))
    ann_file = write_coco(folder, plants)
    data = json.loads(ann_file.read_text())
    own = {image["id"]: 1000 + 37 * image["id"] for image in data["images"]}
    data["images"] = [{**image, "id": own[image["id"]]} for image in reversed(data["images"])]  # not in id order
    data["annotations"] = [{**a, "image_id": own[a["image_id"]]} for a in data["annotations"]]
    ann_file.write_text(json.dumps(data))
    return ann_file


def test_results_in_the_datasets_ids_score_the_same_against_the_users_json(tmp_path):
    ann_file = coco_with_ids_of_its_own(tmp_path)
    data = CocoDataset(tmp_path, ann_file, get_transform(train=False))
    test_ids = [1, 2, 4, 6]  # a held-out part, as a split gives it
    rng = np.random.default_rng(3)
    outputs = []
    for k, idx in enumerate(test_ids):
        _, target = data[idx]
        n = len(target["labels"])
        masks = torch.roll(instance_masks(target), shifts=tuple(rng.integers(-4, 5, 2).tolist()), dims=(1, 2))
        outputs.append({
            "boxes": target["boxes"] + torch.from_numpy(rng.normal(0, 3, (n, 4)).astype(np.float32)),
            "labels": target["labels"].flip(0) if k == 1 else target["labels"],  # some classes wrong
            "scores": torch.from_numpy(rng.uniform(0.1, 1, n).astype(np.float32)),
            "masks": masks[:, None].float() * 0.9,
        })  # fmt: skip
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, test_ids), batch_size=1, collate_fn=collate_fn)
    results = {}
    stats = evaluate(StandIn(outputs), loader, torch.device("cpu"), data.classes, results=results)
    assert set(results) == {"bbox", "segm"}

    ground_truth = COCO(str(ann_file))  # the user's own file, as they would score our results
    for iou_type, found in results.items():
        mapped = in_dataset_ids(found, data.image_ids, data.category_ids)
        assert {r["category_id"] for r in mapped} == {3, 7}
        assert {r["image_id"] for r in mapped} == {data.image_ids[i] for i in test_ids}
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(mapped), iou_type)
        evaluator.params.imgIds = [data.image_ids[i] for i in test_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert stats[iou_type] == pytest.approx(evaluator.stats.tolist(), abs=1e-9)
        assert 0.05 < stats[iou_type][0] < 0.95


def test_a_photo_with_more_than_a_hundred_objects_counts_the_detections_the_model_keeps(capsys):
    boxes = [[(k % 15) * 20.0, (k // 15) * 20.0, 10.0, 10.0] for k in range(150)]  # 150 objects, each found exactly
    images = [{"id": 1, "height": 200, "width": 300}]
    annotations = [{"image_id": 1, "bbox": b, "category_id": 1, "area": 100.0, "iscrowd": 0} for b in boxes]
    results = [{"image_id": 1, "bbox": b, "category_id": 1, "score": 1 - k / 1000} for k, b in enumerate(boxes)]
    capped, _ = coco_stats(images, annotations, results, "bbox")  # COCO's 100: two thirds of them
    assert capped[0] == pytest.approx(67 / 101, abs=0.01) and capped[8] == pytest.approx(100 / 150)
    assert "maxDets=100 ] = 0.66" in capsys.readouterr().out
    kept, _ = coco_stats(images, annotations, results, "bbox", max_detections=200)
    assert kept[0] == pytest.approx(1.0) and kept[1] == pytest.approx(1.0) and kept[8] == pytest.approx(1.0)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=200 ] = 1.000"
