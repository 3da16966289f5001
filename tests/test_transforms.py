import numpy as np
import pytest
import torch
from conftest import instance_mask
from torchvision import tv_tensors

from dataset import masks_to_target
from masks import instance_masks
from transforms import AUGMENTATIONS, RandomRot90, copy_paste, copy_paste_collate, get_transform, train_sizes


def _sample(seed=0):
    mask = instance_mask(80, 100, [(1, 5, 40, 5, 30), (2, 30, 75, 50, 95), (3, 60, 70, 2, 3)])
    image = tv_tensors.Image(torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8))
    return image, masks_to_target(mask, image_id=seed)


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    return masks_to_target((masks.numpy() * np.arange(1, len(masks) + 1)[:, None, None]).max(0), 0)["boxes"]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_boxes_and_masks_move_with_the_image(augmentation):
    torch.manual_seed(0)
    counts = set()
    for _ in range(30):
        image, target = get_transform(train=True, augmentation=augmentation, size=64)(*_sample())
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        n = len(target["boxes"])
        counts.add(n)
        assert target["masks"].shape == (n, *image.shape[-2:])
        assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
        if augmentation == "lsj":
            assert image.shape[-2:] == (64, 64)  # scaled, then cropped or padded to the square
        # Nothing degenerate survives, and each box is exactly the box of its mask (COCO's convention).
        assert target["masks"].flatten(1).any(1).all()
        boxes = target["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert torch.equal(boxes, _boxes_of(target["masks"]))
    if augmentation in ("ssd", "lsj"):
        assert len(counts) > 1  # crops do cut instances out, and those are dropped


def test_a_quarter_turn_moves_pixels_masks_and_boxes_exactly():
    image, target = _sample()
    turn = RandomRot90()
    seen = {}
    torch.manual_seed(0)
    while len(seen) < 4:
        turned, out = turn(image, target)
        turns = next(k for k in range(4) if torch.equal(turned, torch.rot90(image, k, dims=(-2, -1))))
        seen[turns] = out
        turned_masks = instance_masks(out)
        assert torch.equal(turned_masks, torch.rot90(instance_masks(target), turns, dims=(-2, -1)))
        assert out["boxes"].canvas_size == tuple(turned.shape[-2:])
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    width = image.shape[-1]
    expected = torch.stack([y1, width - x2, y2, width - x1], dim=1)  # a quarter turn counter-clockwise
    assert torch.equal(seen[1]["boxes"].as_subclass(torch.Tensor), expected)


def test_multiscale_draws_shorter_sides_up_to_the_evaluation_size():
    assert train_sizes("multiscale", 800) == (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    assert train_sizes("multiscale", 320) == (192, 224, 256, 288, 320)
    assert train_sizes("hflip", 320) == (320,)


def test_a_scale_range_draws_sides_around_the_evaluation_size_which_comes_last():
    sizes = train_sizes("topdown", 416, (0.8, 1.2))
    assert sizes == (332, 364, 396, 448, 480, 416)
    assert train_sizes("multiscale", 320, (1.0, 1.0)) == (320,)  # the range replaces multiscale's own
    torch.manual_seed(0)
    transform = get_transform(True, "topdown", 416, model_sizes=(sizes, 2000))
    drawn = {min(transform(*_sample())[0].shape[-2:]) for _ in range(40)}
    assert drawn == set(sizes)  # each side drawn, above --min-size too; the picture's shorter side is that side


def test_hflip_mirrors_boxes():
    torch.manual_seed(0)
    image, target = _sample()
    flipped = [get_transform(train=True)(image, target) for _ in range(10)]
    mirrored = [t for img, t in flipped if not torch.allclose(img, image.float() / 255)]
    assert mirrored, "ten coin flips never flipped"
    expected = target["boxes"].clone()
    expected[:, [0, 2]] = 100 - target["boxes"][:, [2, 0]]
    assert torch.equal(mirrored[0]["boxes"], expected)


def test_evaluation_transform_changes_nothing_but_the_dtype():
    image, target = _sample()
    out_image, out_target = get_transform(train=False)(image, target)
    torch.testing.assert_close(out_image, image.float() / 255)
    for key in ("boxes", "instance_map", "labels", "area", "iscrowd"):  # the instances stay in their map
        assert torch.equal(out_target[key], target[key])


def test_degenerate_boxes_are_dropped_with_their_masks_and_labels():
    image, target = _sample()
    target["boxes"][1] = torch.tensor([50.0, 30.0, 50.0, 75.0])  # zero width
    target["labels"] = torch.tensor([1, 2, 3])
    out_image, out = get_transform(train=False)(image, target)
    assert out["labels"].tolist() == [1, 3]
    assert instance_masks(out).shape[0] == len(out["area"]) == len(out["iscrowd"]) == 2
    assert torch.equal(instance_masks(out)[1], instance_masks(target)[2])  # the map is renumbered: 3 is now 2


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        get_transform(True, "mosaic")


def test_copy_paste_moves_instances_between_images_of_a_batch():
    torch.manual_seed(0)
    lsj = get_transform(train=True, augmentation="lsj", size=64)
    pasted_any = False
    for _ in range(10):
        batch = [lsj(*_sample(seed)) for seed in range(3)]
        for (image, target), (before_image, before) in zip(copy_paste(batch), batch, strict=True):
            masks = target["masks"]
            assert masks.shape[1:] == image.shape[1:] and masks.flatten(1).any(1).all()
            assert torch.equal(target["boxes"], _boxes_of(masks))
            assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == len(masks)
            assert (masks.sum(0) <= 1).all()  # a pasted instance covers what it lands on
            if len(masks) > len(before["masks"]) or not torch.equal(image, before_image):
                pasted_any = True
    assert pasted_any
    images, targets = copy_paste_collate([lsj(*_sample(seed)) for seed in range(2)])
    assert len(images) == len(targets) == 2


def test_copy_paste_leaves_images_of_other_sizes_alone():
    small = get_transform(train=True, augmentation="none")(*_sample())
    other = (torch.zeros(3, 50, 50), {**small[1]})
    out = copy_paste([small, other])
    assert out[0][0] is small[0] and out[1][0] is other[0]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_boxes_without_masks_move_as_the_masks_boxes_do(augmentation):
    # A box model's targets carry no masks: every preset moves the boxes alone, exactly where no pixel is resampled.
    exact = augmentation in ("hflip", "none", "topdown", "multiscale")  # flips and quarter turns
    transform = get_transform(train=True, augmentation=augmentation, size=64)
    for seed in range(20):
        image, target = _sample()
        boxes_only = {key: value for key, value in target.items() if key != "instance_map"}
        torch.manual_seed(seed)
        with_masks = transform(image, target)[1]
        torch.manual_seed(seed)
        moved_image, moved = transform(image, boxes_only)
        assert "masks" not in moved
        height, width = moved_image.shape[-2:]
        boxes = moved["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        if exact:
            assert torch.equal(boxes, with_masks["boxes"])
        elif len(boxes) == len(with_masks["boxes"]):  # resampled: the masks' boxes differ by their rounding
            assert torch.allclose(boxes, with_masks["boxes"], atol=3)
