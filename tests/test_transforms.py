import numpy as np
import pytest
import torch
from conftest import instance_mask
from torchvision import tv_tensors

from dataset import masks_to_target
from transforms import AUGMENTATIONS, get_transform


def _sample(seed=0):
    mask = instance_mask(80, 100, [(1, 5, 40, 5, 30), (2, 30, 75, 50, 95), (3, 60, 70, 2, 3)])
    image = tv_tensors.Image(torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8))
    return image, masks_to_target(mask, image_id=seed)


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    return masks_to_target((masks.numpy() * np.arange(1, len(masks) + 1)[:, None, None]).max(0), 0)["boxes"]


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
def test_boxes_and_masks_move_with_the_image(augmentation):
    torch.manual_seed(0)
    for _ in range(20):
        image, target = get_transform(train=True, augmentation=augmentation)(*_sample())
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        n = len(target["boxes"])
        assert target["masks"].shape == (n, *image.shape[-2:])
        assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
        # Each box still encloses exactly its mask (ssd's crop may cut a box: then it is clamped to the mask's).
        visible = target["masks"].flatten(1).any(1).bool()
        torch.testing.assert_close(target["boxes"][visible], _boxes_of(target["masks"][visible]))


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
    for key in ("boxes", "masks", "labels", "area", "iscrowd"):
        assert torch.equal(out_target[key], target[key])


def test_degenerate_boxes_are_dropped_with_their_masks_and_labels():
    image, target = _sample()
    target["boxes"][1] = torch.tensor([50.0, 30.0, 50.0, 75.0])  # zero width
    target["labels"] = torch.tensor([1, 2, 3])
    out_image, out = get_transform(train=False)(image, target)
    assert out["labels"].tolist() == [1, 3]
    assert out["masks"].shape[0] == len(out["area"]) == len(out["iscrowd"]) == 2
    assert torch.equal(out["masks"][1], target["masks"][2])


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        get_transform(True, "mosaic")
