import pytest
import torch
import torch.nn.functional as nnf
from torchvision.models.detection.roi_heads import paste_masks_in_image

import tiles
from model import get_model
from tiles import Tiling, detect, tile_windows, views_of


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"), [(200, 200, 100, 0.2), (250, 130, 64, 0.25), (100, 333, 100, 0.0)]
)
def test_tiles_cover_the_photo_and_overlap_as_asked(height, width, tile, overlap):
    windows = tile_windows(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int)
    for top, left, bottom, right in windows:
        assert (bottom - top, right - left) == (min(tile, height), min(tile, width))  # every tile a whole tile
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1  # nothing left out
    rows = sorted({(top, bottom) for top, _, bottom, _ in windows})
    assert rows[0][0] == 0 and rows[-1][1] == height  # flush with both edges
    for (_, bottom), (next_top, _) in zip(rows, rows[1:], strict=False):
        assert bottom - next_top >= overlap * tile  # neighbours overlap by at least the fraction asked
    columns = sorted({(left, right) for _, left, _, right in windows})
    assert columns[0][0] == 0 and columns[-1][1] == width
    for (_, right), (next_left, _) in zip(columns, columns[1:], strict=False):
        assert right - next_left >= overlap * tile


def test_a_photo_smaller_than_a_tile_is_one_view():
    assert tile_windows(50, 80, 100, 0.2) == [(0, 0, 50, 80)]
    assert views_of(50, 80, Tiling(tile=100)) == [((0, 0, 50, 80), False)]
    assert views_of(50, 80, Tiling(tile=100, tta=True)) == [((0, 0, 50, 80), False), ((0, 0, 50, 80), True)]
    assert views_of(200, 80, Tiling(tile=100, overlap=0.5))[-1] == ((0, 0, 200, 80), False)  # the whole photo last
    assert len(views_of(200, 80, Tiling(tile=100, overlap=0.5))) == 3 + 1


class _Heads(torch.nn.Module):
    """Where masks.unpasted_masks takes a Mask R-CNN's masks from."""

    def has_mask(self) -> bool:
        return True

    def forward(self, detections):
        return detections, {}


class StandIn(torch.nn.Module):
    """A model that finds exactly what is in each view: every object painted with its own value in the first
    channel, its box (pixel edges) and its mask in that box at 28 x 28; views longer than `blind_above` pixels
    find nothing (as a small object in a shrunk photo)."""

    def __init__(self, blind_above: int = 10_000) -> None:
        super().__init__()
        self.roi_heads, self.blind_above, self.seen = _Heads(), blind_above, []
        self.eval()  # as a model predicts

    def forward(self, images):
        detections = []
        for image in images:
            self.seen.append(tuple(image.shape[-2:]))
            ids = image[0].unique()
            ids = ids[ids > 0] if max(image.shape[-2:]) <= self.blind_above else ids[:0]
            boxes, masks = [], []
            for value in ids.tolist():
                ys, xs = (image[0] == value).nonzero(as_tuple=True)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                boxes.append(torch.stack([x1, y1, x2, y2]).float())
                inside = (image[0, y1:y2, x1:x2] == value).float()[None, None]
                masks.append(nnf.interpolate(inside, size=(28, 28), mode="bilinear")[0])
            n = len(boxes)
            detections.append({
                "boxes": torch.stack(boxes) if n else torch.zeros(0, 4),
                "labels": torch.ones(n, dtype=torch.int64),
                "scores": torch.linspace(0.9, 0.8, n) if n else torch.zeros(0),
                "masks": torch.stack(masks) if n else torch.zeros(0, 1, 28, 28),
            })  # fmt: skip
        return self.roi_heads(detections)[0]


def painted(height, width, objects):
    """A photo with each object (x1, y1, x2, y2) a rectangle of its own value k / 10 in the first channel; an
    L-shaped notch cut from each, so that masks and their mirror images differ."""
    image = torch.zeros(3, height, width)
    for k, (x1, y1, x2, y2) in enumerate(objects, start=1):
        image[0, y1:y2, x1:x2] = k / 10
        image[0, y1 : y1 + (y2 - y1) // 3, x1 : x1 + (x2 - x1) // 3] = 0
    return image


def masks_of(found, height, width):
    return paste_masks_in_image(found["mask_probs"], found["boxes"], (height, width))[:, 0] > 0.5


OBJECTS = [(60, 10, 140, 50), (20, 150, 50, 180), (70, 70, 130, 130)]  # across three tiles; inside one; four


def test_an_object_cut_by_tile_edges_comes_back_whole_in_the_photos_coordinates():
    image = painted(200, 200, OBJECTS)
    model = StandIn(blind_above=100)  # the whole photo finds nothing: only the tiles see the objects
    found = detect(model, [image], Tiling(tile=100, overlap=0.2, merge="nmm"))[0]
    assert (100, 100) in model.seen and (200, 200) in model.seen  # tiles, and the whole photo
    assert len(found["boxes"]) == len(OBJECTS)
    order = sorted(range(len(OBJECTS)), key=lambda k: found["boxes"][k].tolist())
    assert found["boxes"][order].tolist() == sorted(map(list, map(lambda b: list(map(float, b)), OBJECTS)))
    plain = detect(StandIn(), [image])[0]  # the objects seen whole: how well the stand-in's masks paste at best
    assert iou_by_object(found, image) == pytest.approx(iou_by_object(plain, image), abs=0.02)
    assert min(iou_by_object(found, image).values()) > 0.85


def iou_by_object(found, image):
    """The mask IoU of each detection with the object its box is, by object."""
    pasted = masks_of(found, *image.shape[-2:])
    ious = {}
    for mask, box in zip(pasted, found["boxes"].tolist(), strict=True):
        k = OBJECTS.index(tuple(map(int, box)))
        wanted = image[0] == (k + 1) / 10
        ious[k] = ((mask & wanted).sum() / (mask | wanted).sum()).item()
    return ious


def test_a_small_object_inside_a_cut_ones_box_stays_its_own():
    image = painted(200, 200, [(60, 10, 140, 50), (85, 20, 95, 30)])  # the second on top of the first, in its box
    found = detect(StandIn(blind_above=100), [image], Tiling(tile=100, merge="nmm"))[0]
    # the large one in pieces across three tiles, joined; the small one whole in two tiles: one detection
    assert sorted(found["boxes"].tolist()) == [[60.0, 10.0, 140.0, 50.0], [85.0, 20.0, 95.0, 30.0]]
    large = masks_of(found, 200, 200)[found["boxes"][:, 2].argmax()]
    assert not large[21:29, 86:94].any() and large[38:47, 63:137].all()


def test_nms_leaves_the_pieces_of_a_cut_object_apart():
    image = painted(200, 200, OBJECTS[:1])
    found = detect(StandIn(blind_above=100), [image], Tiling(tile=100, merge="nms"))[0]
    assert len(found["boxes"]) > 1  # what the edge-aware merge is for
    assert all(box[2] - box[0] < 80 for box in found["boxes"].tolist())


def test_tiles_and_the_whole_photo_agree_on_one_detection_per_object():
    image = painted(200, 200, OBJECTS)
    found = detect(StandIn(), [image], Tiling(tile=100, overlap=0.2, merge="nmm"))[0]
    boxes = sorted(found["boxes"].tolist())
    assert boxes == sorted(map(list, map(lambda b: list(map(float, b)), OBJECTS)))


def test_mirror_images_merge_back_to_the_right_place():
    image = painted(120, 160, [(10, 20, 50, 90), (100, 40, 150, 60)])  # off-centre: a wrong mirror lands elsewhere
    model = StandIn()
    plain = detect(model, [image])[0]
    found = detect(model, [image], Tiling(tta=True))[0]
    assert len(model.seen) == 3  # the photo, then the photo and its mirror image
    assert len(plain["boxes"]) == 2
    assert sorted(found["boxes"].tolist()) == sorted(plain["boxes"].tolist())
    for found_masks, boxes in (
        (masks_of(plain, 120, 160), plain["boxes"]),
        (masks_of(found, 120, 160), found["boxes"]),
    ):
        for mask, box in zip(found_masks, boxes.tolist(), strict=True):
            wanted = image[0] == (1 + [(10, 20, 50, 90), (100, 40, 150, 60)].index(tuple(map(int, box)))) / 10
            # 0.95 and 1.0 for the photo alone; its mirror's mask unmirrored wrongly would give 0.85 and 0.89
            assert (mask & wanted).sum() / (mask | wanted).sum() > 0.94


def test_a_mirrored_views_keypoints_swap_their_labels_back():
    output = {
        "boxes": torch.tensor([[5.0, 0.0, 35.0, 10.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
        "keypoints": torch.tensor([[[10.0, 5.0, 1.0], [30.0, 6.0, 1.0]]]),  # "left eye", "right eye" as seen mirrored
        "keypoints_scores": torch.tensor([[2.0, 3.0]]),
    }
    back = tiles._in_photo(output, (100, 50, 200, 150), mirrored=True, keypoint_flip=[1, 0])
    assert back["boxes"].tolist() == [[115.0, 100.0, 145.0, 110.0]]
    # the mirrored right eye at column 30 is the photo's left eye at column 99 - 30, moved by the window's left 50
    assert back["keypoints"].tolist() == [[[119.0, 106.0, 1.0], [139.0, 105.0, 1.0]]]
    assert back["keypoints_scores"].tolist() == [[3.0, 2.0]]
    with pytest.raises(ValueError, match="flip permutation"):
        tiles._in_photo(output, (0, 0, 100, 100), mirrored=True, keypoint_flip=None)


def test_tiled_prediction_of_a_photo_within_one_tile_is_plain_prediction():
    torch.manual_seed(0)
    model = get_model("maskrcnn_mobilenet_v3_large_fpn", num_classes=3, weights="none", min_size=64, max_size=128)
    model.eval()
    image = torch.rand(3, 90, 120)
    with torch.inference_mode():
        plain = detect(model, [image])[0]
        tiled = detect(model, [image], Tiling(tile=128))[0]
    assert len(plain["boxes"]) > 0  # an untrained model still detects: two empty outputs would prove nothing
    assert plain.keys() == tiled.keys() and "mask_probs" in tiled
    for key in plain:
        torch.testing.assert_close(tiled[key], plain[key])
