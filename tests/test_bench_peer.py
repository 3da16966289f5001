"""bench_peer.py without Ultralytics: the YOLO layout it writes (read back by our own YOLO reader), the way its
detections become ours and are scored, and the one line where Ultralytics is not installed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from learning import write_shapes
from torchvision.ops import box_iou

import bench
import bench_peer
from coco_eval import coco_detections, coco_ground_truth, score_detections
from dataset_cli import get_dataset
from masks import instance_masks, rasterise
from utils import UserError


@pytest.fixture
def shapes(tmp_path):
    """The learning tests' four images of squares and discs, read through the COCO route with their masks."""
    ann_file = write_shapes(tmp_path / "shapes", 1)
    return get_dataset("coco", ann_file.parent, ann_file=ann_file, masks=True)


def test_outline_of_a_disc_rasterises_back_to_it():
    yy, xx = np.mgrid[:64, :80]
    disc = (xx - 30) ** 2 + (yy - 40) ** 2 <= 18**2
    ring = bench_peer.outline(disc)
    cut, top, left = rasterise([ring.flatten().tolist()], 64, 80)
    drawn = np.zeros_like(disc)
    drawn[top : top + cut.shape[0], left : left + cut.shape[1]] = cut > 0
    iou = (drawn & disc).sum() / (drawn | disc).sum()
    assert iou > 0.9, iou
    assert bench_peer.outline(np.zeros((8, 8), bool)) is None
    edge = np.zeros((10, 10), bool)
    edge[:4, :5] = True  # touching the image's corner: the ring closes at the edge, inside the image
    ring = bench_peer.outline(edge)  # its box is the mask's box in COCO's convention (x2 = last column + 1)
    assert [*ring.min(0), *ring.max(0)] == [0, 0, 5, 4]


@pytest.mark.parametrize("segments", [False, True])
def test_the_yolo_layout_reads_back_as_the_same_instances(shapes, tmp_path, segments):
    data_yaml = bench_peer.write_yolo_layout(shapes, [0, 1, 2, 3], shapes.classes, tmp_path / "yolo", segments)
    again = get_dataset("yolo", data_yaml, masks=segments)
    assert again.classes == shapes.classes and len(again) == 4
    assert (tmp_path / "yolo" / "validation.txt").read_text().count("\n") == bench_peer.VALIDATION_IMAGES
    for idx in range(4):
        image, target = shapes.load(idx)
        image_again, target_again = again.load(idx)
        assert torch.equal(image, image_again)  # the pixels our reader decodes, losslessly
        assert target_again["labels"].tolist() == target["labels"].tolist()
        ious = box_iou(target["boxes"], target_again["boxes"]).diagonal()
        assert ious.min() > (0.9 if segments else 0.99), ious
        if segments:
            masks, masks_again = instance_masks(target).bool(), instance_masks(target_again).bool()
            overlap = (masks & masks_again).sum((1, 2)) / (masks | masks_again).sum((1, 2))
            assert overlap.min() > 0.85, overlap


def test_perfect_yolo_detections_score_ap_1_and_classes_shifted_by_one_score_0(shapes):
    def scores(shift):
        per_image = []
        for idx in range(len(shapes)):
            image, target = shapes.load(idx)
            masks = instance_masks(target).numpy()
            classes = target["labels"].numpy() - 1 + shift  # YOLO's class c is our label c + 1
            output = bench_peer.yolo_output(target["boxes"].numpy(), np.ones(len(masks)), classes, masks)
            size = tuple(image.shape[-2:])
            record, gt = coco_ground_truth(idx, *size, target)
            per_image.append((record, gt, coco_detections(idx, output, size)))
        stats = score_detections(per_image, shapes.classes)
        return stats["bbox"][0], stats["segm"][0]

    assert scores(0) == pytest.approx((1.0, 1.0))
    assert scores(1) == pytest.approx((0.0, 0.0), abs=0.01)  # a square called a disc, a disc an unknown class


def test_without_ultralytics_asking_for_the_peer_is_one_line_before_any_work(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "ultralytics" else find_spec(name))
    flags = ["--data-path", str(tmp_path / "nothing-here"), "--parts", "recipe", "--recipes", "cpu-12min", "yolov8n"]
    with pytest.raises(
        UserError, match=r"--recipes yolov8n: Ultralytics is not installed; pip install -r requirements"
    ):
        bench.main(bench.get_args_parser().parse_args([*flags, "--output", str(tmp_path / "bench.json")]))
    assert not (tmp_path / "bench.json").exists()
    bench_peer.check_peers(["cpu-12min", "tutorial"])  # our own recipes need no peer


def test_the_table_counts_a_peer_s_epochs_not_its_one_scored_point():
    from bench_recipe import recipe_table_rows

    ours = {"recipe": "cpu-box-20min", "points": [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]}
    peer = {"recipe": "yolov8n", "points": [{"epoch": 97}]}  # its last.pt, scored once after 98 epochs
    stopped = {"recipe": "cpu-12min", "points": []}
    assert [row["epochs"] for row in recipe_table_rows([ours, peer, stopped])] == [3, 98, 0]


def test_the_peer_s_run_folder_is_absolute_where_ultralytics_would_move_a_relative_one(tmp_path, monkeypatch):
    # Ultralytics puts a relative project under its own runs_dir: with --keep-runs ../runs, a 43-minute run's last.pt
    # went to ~/.pyenv/runs/runs/... and its scoring failed
    monkeypatch.chdir(tmp_path)
    folder = bench_peer.ultralytics_folder(Path("runs") / "yolov8n-seg")
    assert folder["project"] == str(tmp_path.resolve() / "runs" / "yolov8n-seg") and folder["name"] == "yolo"
    assert folder["plots"] is False
