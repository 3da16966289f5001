import math

import pytest
import torch
from conftest import LAYOUT, needs_keypoint_transforms, saves_in_memory, stand_in_training, write_keypoint_coco
from torchvision import tv_tensors

import engine
import train
from dataset import MaskFolderDataset, boxes_of_masks
from masks import InstanceMap, split
from tiles import tile_windows
from train_tiles import TrainingTiles, crop

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def sample(outlines="instance_map"):
    """A 100 x 120 photo with five instances against the tile (top 20, left 30, bottom 80, right 90):
    1 wholly inside; 2 half inside; 3 with a twentieth inside (goes); 4 a one-pixel line inside; 5 outside."""
    height, width = 100, 120
    layer = torch.zeros(height, width, dtype=torch.int32)
    layer[30:50, 40:60] = 1
    layer[60:70, 70:110] = 2  # columns 70-89 inside, 90-109 outside
    layer[0:40, 0:32] = 3  # rows 20-39 and columns 30-31 inside: 40 of 1280 pixels
    layer[55:75, 50] = 4
    layer[85:95, 100:115] = 5
    instance_map = InstanceMap(layer[None])
    masks = split(instance_map, 5)
    boxes = boxes_of_masks(masks)
    points = torch.zeros(5, 2, 3)
    points[0] = torch.tensor([[45.0, 35.0, 2.0], [5.0, 5.0, 2.0]])  # the second point outside the tile
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([1, 2, 1, 2, 1]),
        "image_id": 7,
        "area": masks.flatten(1).sum(1).float(),
        "iscrowd": torch.zeros(5, dtype=torch.int64),
        "keypoints": points,
    }
    if outlines == "instance_map":
        target["instance_map"] = instance_map
    elif outlines == "masks":
        target["masks"] = masks
    image = tv_tensors.Image(
        torch.arange(3 * height * width, dtype=torch.int32).reshape(3, height, width).to(torch.uint8)
    )
    return image, target, masks


WINDOW = (20, 30, 80, 90)


@pytest.mark.parametrize("outlines", ["instance_map", "masks", None])
def test_a_tile_keeps_the_target_contract_and_every_object_wholly_inside_it(outlines):
    image, target, masks = sample(outlines)
    tile, cut = crop(image, target, WINDOW)
    assert isinstance(tile, tv_tensors.Image) and tile.shape == (3, 60, 60)
    assert torch.equal(tile, image[:, 20:80, 30:90])
    kept = [0, 1, 3]
    assert cut["labels"].tolist() == target["labels"][kept].tolist()
    assert cut["image_id"] == 7 and cut["iscrowd"].tolist() == [0] * len(kept)
    assert isinstance(cut["boxes"], tv_tensors.BoundingBoxes) and tuple(cut["boxes"].canvas_size) == (60, 60)
    if outlines:
        in_tile = masks[kept][:, 20:80, 30:90]
        assert cut["boxes"].tolist() == boxes_of_masks(in_tile).tolist()  # the box of what remains
        assert cut["area"].tolist() == in_tile.flatten(1).sum(1).float().tolist()
        stack = split(cut["instance_map"], len(kept)) if outlines == "instance_map" else cut["masks"]
        assert torch.equal(stack, in_tile)  # renumbered 1..3 in their order
        assert cut.keys() == target.keys()
    else:
        assert cut["boxes"][0].tolist() == [10.0, 10.0, 30.0, 30.0]  # instance 1 at (40, 30)-(60, 50), moved
        assert cut["boxes"][1].tolist() == [40.0, 40.0, 60.0, 50.0]  # instance 2 cut at the tile's right edge
    points = cut["keypoints"][0].tolist()
    assert points == [[15.0, 15.0, 2.0], [0.0, 0.0, 0.0]]  # moved; the one outside the tile unlabelled


def test_the_tiles_of_every_photo_cover_it_and_keep_what_lies_inside(pennfudan):
    dataset = MaskFolderDataset(pennfudan / "PNGImages", pennfudan / "PedMasks", "", "_mask")
    indices = [0, 4, 7]
    tiles = TrainingTiles(dataset, indices, 48)
    expected = [(i, w) for i in indices for w in tile_windows(*LAYOUT[i][:2], 48, 0.2)]
    assert tiles.windows == expected and len(tiles) == len(expected)
    for k, (index, (top, left, bottom, right)) in enumerate(tiles.windows):
        image, target = tiles[k]
        assert tuple(image.shape[-2:]) == tiles.get_height_and_width(k) == (bottom - top, right - left)
        photo_boxes = dataset.load(index)[1]["boxes"]
        inside = (photo_boxes[:, 0] >= left) & (photo_boxes[:, 1] >= top)
        inside &= (photo_boxes[:, 2] <= right) & (photo_boxes[:, 3] <= bottom)
        shifted = (photo_boxes[inside] - torch.tensor([left, top, left, top])).tolist()
        assert all(box in target["boxes"].tolist() for box in shifted)  # nothing wholly inside is lost
        assert len(target["labels"]) == len(target["boxes"]) == len(target["area"])


@pytest.mark.slow
def test_train_tile_trains_resumes_and_refuses_auto_anchors(pennfudan, tmp_path, capsys, monkeypatch):
    from test_train import FAST, run_main

    stand_in_training(monkeypatch)  # what it learns is not looked at; what it is fed is
    shapes, stand_in = [], engine.forward_losses

    def fed(model, images, *rest, **options):
        shapes.extend(tuple(image.shape[-2:]) for image in images)
        return stand_in(model, images, *rest, **options)

    monkeypatch.setattr(engine, "forward_losses", fed)
    out = tmp_path / "run"
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--train-tile", 48)
    printed = capsys.readouterr().out
    assert "--train-tile 48: " in printed and "tiles of 7 images an epoch" in printed
    assert shapes and all(max(shape[-2:]) <= 64 for shape in shapes)  # 48-pixel tiles, at most --min-size 64
    run_main("--resume", out / "checkpoint.pth", "--epochs", 2)
    assert '"train_tile": 48' in (out / "args.json").read_text()
    with pytest.raises(train.utils.UserError, match="--anchor-sizes auto fits whole photos"):
        run_main("--data-path", pennfudan, *FAST, "--output-dir", tmp_path / "b", "--train-tile", 48,
                 "--anchor-sizes", "auto")  # fmt: skip


KEYPOINT_MODEL = pytest.param("keypointrcnn_resnet50_fpn", marks=needs_keypoint_transforms)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", KEYPOINT_MODEL])
def test_train_tile_takes_real_steps_of_an_ssd_and_a_keypoint_model(name, tmp_path, monkeypatch):
    """Not stand-ins: an SSD trains on tiles (its transform makes each tile its square input), a Keypoint R-CNN on
    tiles whose points outside became unlabelled; each then evaluates tiled, as --tile asks."""
    from test_train import KEYPOINT_RUN, run_main

    ann_file = write_keypoint_coco(tmp_path)  # figures; the SSD learns their boxes
    fed, losses, step = [], [], engine.forward_losses

    def watched(model, images, targets, *rest, **options):
        fed.extend(tuple(image.shape[-2:]) for image in images)
        loss, loss_dict = step(model, images, targets, *rest, **options)
        losses.append(loss.detach().item())
        return loss, loss_dict

    monkeypatch.setattr(engine, "forward_losses", watched)
    saves_in_memory(monkeypatch)  # no file of it is read: a Keypoint R-CNN's checkpoint.pth and best.pth are 700 MB
    sizes = ["--min-size", "192"]  # the SSD's; the keypoint model's RoIs as few as tests/learning.py samples
    if name.startswith("keypoint"):
        rois = KEYPOINT_RUN[KEYPOINT_RUN.index("--box-batch-size-per-image") :]
        sizes = ["--min-size", "64", "--max-size", "128", *rois]
    stats = run_main("--data-path", tmp_path, "--ann-file", ann_file, "--model", name, "--weights", "none", *sizes,
                     "--lr", "0.001", "--epochs", 1, "--test-size", 3, "-j", 0, "--train-tile", 64, "--tile", 64,
                     "--output-dir", tmp_path / "run")  # fmt: skip
    assert fed and all(max(shape) <= 64 for shape in fed) and len(fed) > 7  # tiles of the 7 training images
    assert all(math.isfinite(loss) for loss in losses)
    assert ("keypoints" if name.startswith("keypoint") else "bbox") in stats


@pytest.mark.slow
def test_train_tile_under_torchrun_with_a_validation_split_and_a_time_budget(pennfudan, tmp_path):
    from test_train import FAST, run_torchrun

    out = tmp_path / "ddp"
    result = run_torchrun(2, "--data-path", pennfudan, *FAST, "--output-dir", out, "--val-size", 2, "--time-budget",
                          0.05, "--train-tile", 48, "--tile", 48)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--train-tile 48: ") == 1 and "tiles of 5 images an epoch" in result.stdout
    assert "so 1 epoch in all" in result.stdout and "chosen on the validation images" in result.stdout
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["args"]["train_tile"] == 48 and len(checkpoint["rng"]) == 2
    assert checkpoint["stats"]["segm"][0] >= 0  # scored on the 3 test images, tiled
