"""Pictures: what is drawn lands where the masks and boxes are; dataset.py show draws before and after."""

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.utils import draw_segmentation_masks

import visualize
from dataset import PennFudanDataset
from masks import instance_masks
from visualize import draw, grid, to_uint8


def test_a_target_is_drawn_inside_its_masks_and_boxes_only(pennfudan):
    image, target = PennFudanDataset(pennfudan).load(0)
    drawn = draw(image, target, ["background", "person"])
    changed = (drawn != image).any(dim=0)
    inside = instance_masks(target).bool().any(dim=0)
    for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
        inside[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = True  # the box's outline
        inside[max(y1 - 14, 0) : y1 + 14, x1 : x1 + 6 * len("person")] = True  # its caption, which may stick out
    assert changed[instance_masks(target)[0].bool()].float().mean() > 0.9  # the mask is tinted
    assert not changed[~inside].any()  # nothing outside


def test_detections_are_cut_at_half_and_float_images_scaled():
    image = torch.full((3, 40, 50), 0.5)
    masks = torch.zeros(2, 1, 40, 50)
    masks[0, 0, 5:15, 5:15] = 0.9
    masks[1, 0, 20:30, 20:30] = 0.4  # below 0.5: not drawn as a mask
    output = {"boxes": torch.tensor([[5.0, 5, 15, 15], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1]),
              "scores": torch.tensor([0.9, 0.8]), "masks": masks}  # fmt: skip
    drawn = draw(image, output, ["background", "cat"])
    assert to_uint8(image)[0, 0, 0] == 128 and drawn.dtype == torch.uint8
    assert (drawn[:, 8:12, 8:12] != 128).any() and (drawn[:, 23:27, 23:27] == 128).all()


def test_grid_scales_rows_to_one_height():
    pictures = [torch.zeros(3, 10, 20, dtype=torch.uint8), torch.zeros(3, 20, 20, dtype=torch.uint8)]
    canvas = grid([pictures, pictures[:1]], height=40, gap=2)
    assert canvas.shape == (3, 82, 80 + 2 + 40)
    assert (canvas[:, 40:42] == 255).all()  # the gap between rows is white


def test_a_big_photo_is_drawn_at_a_screen_s_size_from_its_map_or_unpasted_masks():
    image = torch.zeros(3, 1800, 2400, dtype=torch.uint8)
    instance_map = torch.zeros(1, 1800, 2400, dtype=torch.int32)
    instance_map[0, 300:900, 600:1200] = 1
    found = {"boxes": torch.tensor([[600.0, 300.0, 1200.0, 900.0]]), "labels": torch.tensor([1])}
    target = {**found, "instance_map": instance_map}
    output = {**found, "scores": torch.tensor([0.9]), "mask_probs": torch.ones(1, 1, 28, 28)}
    for shown in (target, output):
        drawn = draw(image, shown, ["background", "leaf"])
        assert drawn.shape == (3, 1200, 1600)  # SCREEN_SIDE long, not the photo's 2400
        changed = (drawn != 0).any(dim=0)
        assert changed[210:590, 410:790].float().mean() > 0.99  # the object, tinted, at 2/3 of its size
        assert not changed[610:].any() and not changed[:, 810:].any()  # and nothing beyond it and its box


def test_unpasted_masks_pasted_a_few_at_a_time_draw_what_all_at_once_would():
    torch.manual_seed(0)
    count = 3 * visualize.PASTED_AT_ONCE + 1
    corners = torch.rand(count, 2) * 60
    boxes = torch.cat([corners, corners + torch.tensor([30.0, 25.0])], dim=1)
    probs = torch.rand(count, 1, 28, 28)
    image = torch.zeros(3, 100, 120, dtype=torch.uint8)
    output = {"boxes": boxes, "labels": torch.ones(count, dtype=torch.int64), "scores": torch.full((count,), 0.9)}
    drawn = draw(image, {**output, "mask_probs": probs}, ["background", "leaf"])
    all_at_once = paste_masks_in_image(probs, boxes, [100, 120])  # N x 1 x H x W probabilities, as a model gives
    assert torch.equal(drawn, draw(image, {**output, "masks": all_at_once}, ["background", "leaf"]))
    assert (drawn != 0).any()


def test_masks_are_drawn_as_torchvision_draws_them():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    masks = torch.rand(5, 40, 50) > 0.6  # overlapping: drawn black
    colors = [visualize.COLORS[k] for k in range(5)]
    expected = draw_segmentation_masks(image, masks, alpha=0.5, colors=colors)
    assert torch.equal(visualize.draw_masks(image, masks, colors), expected)
