"""mosaic.py: four images of a batch in one picture, every instance moved with its pixels; closed for the last
epochs."""

import pytest
import torch
from conftest import saves_in_memory
from test_train import FAST, run_cli_here

from dataset import boxes_of_masks
from mosaic import MIN_VISIBLE, Mosaic, close_mosaic, mosaic
from utils import collate_fn

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def _sample(height, width, value, squares, keypoints=False):
    """An image filled with `value`, and a square mask per (y, x, side) of `squares`."""
    image = torch.full((3, height, width), value)
    masks = torch.zeros((len(squares), height, width), dtype=torch.uint8)
    for k, (y, x, side) in enumerate(squares):
        masks[k, y : y + side, x : x + side] = 1
    target = {"boxes": boxes_of_masks(masks), "labels": torch.arange(1, len(squares) + 1), "masks": masks,
              "area": masks.flatten(1).sum(1).float(), "iscrowd": torch.zeros(len(squares), dtype=torch.int64),
              "image_id": int(value * 10)}  # fmt: skip
    if keypoints:  # one point at each square's centre
        centres = torch.tensor([[x + side / 2, y + side / 2, 2.0] for y, x, side in squares])
        target["keypoints"] = centres[:, None, :]
    return image, target


def _batch(keypoints=False):
    return [
        _sample(60, 80, 0.1, [(40, 60, 15), (0, 0, 10)], keypoints),  # one square at its bottom right, one at top left
        _sample(60, 80, 0.2, [(45, 0, 15), (0, 70, 10)], keypoints),  # bottom left; top right
        _sample(50, 70, 0.3, [(0, 60, 10), (40, 0, 10)], keypoints),  # top right; bottom left (a smaller image)
        _sample(60, 80, 0.4, [(0, 0, 20)], keypoints),  # top left
    ]


def _centre_in_the_middle(monkeypatch):
    """mosaic's two draws at 0.5: the centre at row 30, column 40 of a 60 x 80 picture."""
    monkeypatch.setattr(torch, "rand", lambda *size: torch.tensor([0.5]))


def test_each_quadrant_shows_the_corner_of_an_image_that_meets_the_centre_and_its_instances(monkeypatch):
    _centre_in_the_middle(monkeypatch)
    picture, target = mosaic(_batch(), 0)
    assert picture.shape == (3, 60, 80) and target["image_id"] == 1
    # top left: image 0's bottom-right corner; top right: image 1's bottom left; bottom left: image 2's top right;
    # bottom right: image 3's top left
    for rows, columns, value in [(slice(0, 30), slice(0, 40), 0.1), (slice(0, 30), slice(40, 80), 0.2),
                                 (slice(30, 60), slice(0, 40), 0.3), (slice(30, 60), slice(40, 80), 0.4)]:  # fmt: skip
        assert torch.allclose(picture[:, rows, columns], torch.tensor(value))
    # the squares at those corners came along, moved, one from each image; the others were cut away
    boxes = [[20, 10, 35, 25], [40, 15, 55, 30], [30, 30, 40, 40], [40, 30, 60, 50]]
    assert target["boxes"].tolist() == boxes and target["labels"].tolist() == [1, 1, 1, 1]
    for (x1, y1, x2, y2), mask in zip(boxes, target["masks"], strict=True):
        assert mask.sum() == (x2 - x1) * (y2 - y1) and mask[y1:y2, x1:x2].all()
    assert target["area"].tolist() == [225.0, 225.0, 100.0, 400.0]


def test_a_cut_instance_stays_with_a_tenth_left_and_its_points_outside_become_unlabelled(monkeypatch):
    _centre_in_the_middle(monkeypatch)
    batch = [
        _sample(60, 80, 0.1, [(25, 45, 20)], keypoints=True),  # 15 of its 20 rows in the top-left part
        _sample(60, 80, 0.2, [(15, 0, 20)], keypoints=True),  # 5 of 20 rows, its centre point cut away
        _sample(50, 70, 0.3, [(0, 60, 10)], keypoints=True),  # whole
        _sample(60, 80, 0.4, [(28, 0, 30)], keypoints=True),  # 2 of 30 rows: less than a tenth, dropped
    ]
    _, target = mosaic(batch, 0)
    assert target["boxes"].tolist() == [[5, 0, 25, 15], [40, 0, 60, 5], [30, 30, 40, 40]]
    assert target["area"].tolist() == [300.0, 100.0, 100.0] and MIN_VISIBLE * 900 > 2 * 30
    assert target["keypoints"][:, 0].tolist() == [[15, 5, 2], [0, 0, 0], [35, 35, 2]]


def test_boxes_without_masks_are_moved_and_clipped(monkeypatch):
    _centre_in_the_middle(monkeypatch)
    batch = [(image, {k: v for k, v in target.items() if k != "masks"}) for image, target in _batch()]
    _, target = mosaic(batch, 0)
    assert "masks" not in target
    assert target["boxes"].tolist() == [[20, 10, 35, 25], [40, 15, 55, 30], [30, 30, 40, 40], [40, 30, 60, 50]]


def test_the_collate_function_mosaics_by_its_probability_and_stops_when_closed(capsys):
    batch = _batch()
    assert Mosaic(0.0)(batch)[1] == collate_fn(batch)[1]  # probability 0: the batch as it came
    collate = Mosaic(1.0)
    images, targets = collate(batch)
    assert all(len({round(v, 3) for v in image[0].unique().tolist()}) > 1 for image in images)  # four images in each
    close_mosaic(collate, epoch=8, epochs=10, close=None)  # a tenth of 10: only the last epoch without
    assert collate.on and capsys.readouterr().out == ""
    close_mosaic(collate, epoch=9, epochs=10, close=None)
    assert not collate.on and "epoch 9: mosaic off for the last 1 of 10 epochs" in capsys.readouterr().out
    close_mosaic(collate, epoch=10, epochs=14, close=None)  # a budget that plans more epochs: it stays off
    assert not collate.on
    assert collate(batch)[1] == collate_fn(batch)[1]


@pytest.mark.slow
def test_a_run_with_mosaic_trains_and_closes_it_and_impossible_flags_are_refused(
    pennfudan, tmp_path, capsys, monkeypatch
):
    refusals = [
        (["--mosaic", "1.5"], "--mosaic 1.5: a probability from 0 to 1"),
        (["--mosaic", "1", "-b", "1"], "--mosaic draws on the other images of a batch"),
        (["--mosaic", "1", "--close-mosaic", "-1"], "--close-mosaic -1: the epochs at the end"),
    ]
    for flags, message in refusals:
        refused = run_cli_here(capsys, "--data-path", pennfudan, *FAST, *flags, "--output-dir", tmp_path / "no")
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    saves_in_memory(monkeypatch)  # no file of it is read
    result = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 2, "--mosaic", "1.0",
                          "--close-mosaic", 1, "--output-dir", tmp_path / "run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "epoch 1: mosaic off for the last 1 of 2 epochs" in result.stdout
