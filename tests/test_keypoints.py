import json

import pytest
import torch
from conftest import KEYPOINT_COLOURS, KEYPOINT_NAMES, needs_keypoint_transforms, write_keypoint_coco
from torchvision import tv_tensors

import train
from coco_eval import coco_detections, coco_ground_truth, score_detections
from coco_utils import CocoDataset
from dataset_cli import main as dataset_main
from keypoints import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, DEFAULT_SIGMA, flip_permutation, keypoint_sigmas
from transforms import get_transform
from utils import UserError


def test_the_flip_map_comes_from_left_and_right_in_the_names():
    assert flip_permutation(list(COCO_PERSON_KEYPOINTS))[:5] == [0, 2, 1, 4, 3]  # nose stays, eyes and ears swap
    names = ["leftWrist", "wristR", "tail", "L_ear", "rightWrist", "wristL", "R_ear"]
    assert flip_permutation(names) == [4, 5, 2, 6, 0, 1, 3]
    assert flip_permutation(["head", "tip"]) == [0, 1]  # nothing names a side: every point is its own mirror


@pytest.mark.parametrize(
    "names, message",
    [
        (["left_paw", "right_foot"], "'left_paw' names a side but there is no 'right_paw'"),
        (["paw", "paw"], "named twice or not at all"),
        (["", "tail"], "named twice or not at all"),
    ],
)
def test_names_that_cannot_be_mirrored_safely_stop_the_run(names, message):
    with pytest.raises(UserError, match=message) as error:
        flip_permutation(names)
    assert "--keypoint-flip-map" in str(error.value) and "--augmentation none" in str(error.value)


def test_a_flip_map_given_by_name_or_index_replaces_the_names():
    names = ["paw_a", "paw_b", "tail", "ear_1", "ear_2"]
    assert flip_permutation(names, "paw_a:paw_b, 3:4") == [1, 0, 2, 4, 3]
    with pytest.raises(UserError, match="'nose' is not one of the keypoints"):
        flip_permutation(names, "paw_a:nose")
    with pytest.raises(UserError, match="is not a pair"):
        flip_permutation(names, "paw_a")


def test_sigmas_are_cocos_for_cocos_points_and_the_default_or_the_flag_otherwise():
    assert keypoint_sigmas(list(COCO_PERSON_KEYPOINTS)) == list(COCO_PERSON_SIGMAS)
    assert keypoint_sigmas(KEYPOINT_NAMES) == [DEFAULT_SIGMA] * 3
    assert keypoint_sigmas(KEYPOINT_NAMES, [0.1]) == [0.1] * 3
    assert keypoint_sigmas(KEYPOINT_NAMES, [0.1, 0.2, 0.3]) == [0.1, 0.2, 0.3]
    with pytest.raises(UserError, match="--keypoint-sigmas: 2 values for 3 keypoints"):
        keypoint_sigmas(KEYPOINT_NAMES, [0.1, 0.2])


def test_coco_keypoints_are_read_into_the_target(keypoint_coco):
    folder, ann_file = keypoint_coco
    data = CocoDataset(folder, ann_file)
    assert data.keypoint_names == KEYPOINT_NAMES and data.skeleton == [(0, 1), (0, 2)]
    _, target = data[0]
    keypoints = target["keypoints"]
    assert keypoints.dtype == torch.float32 and keypoints.shape == (2, 3, 3)
    assert keypoints[0, 2].tolist() == [0, 0, 0] and keypoints[1, 0, 2] == 1 and keypoints[0, 1, 2] == 2
    _, empty = data[2]  # the image without instances
    assert empty["keypoints"].shape == (0, 3, 3)
    assert "keypoints" not in CocoDataset(folder, ann_file, keypoints=False)[0][1]


def _handedness(target):
    """For each figure, the sign of (left hand - head) x (right hand - head): rotations keep it, a mirror flips it."""
    head, left, right = target["keypoints"][:, :, :2].unbind(1)
    a, b = left - head, right - head
    return torch.sign(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).tolist()


def _colours_under_points(image, target):
    """The colour under each keypoint, by name, for all figures (the points must move with the pixels)."""
    pixels = (image * 255).round().to(torch.uint8)
    return [
        {
            name: tuple(pixels[:, int(y), int(x)].tolist())
            for name, (x, y, _) in zip(KEYPOINT_NAMES, points.tolist(), strict=True)
        }
        for points in target["keypoints"]
    ]


@needs_keypoint_transforms
@pytest.mark.parametrize("augmentation", ["hflip", "topdown"])
def test_a_left_hand_stays_a_left_hand_when_the_image_is_mirrored(augmentation, keypoint_coco):
    folder, ann_file = keypoint_coco
    data = CocoDataset(folder, ann_file)
    image, target = data.load(1)  # two figures, every point labelled
    white, red, blue = KEYPOINT_COLOURS
    upright = _handedness(target)
    assert len(upright) == 2 and 0 not in upright
    transform = get_transform(True, augmentation, keypoint_flip=flip_permutation(data.keypoint_names))
    mirrored = 0
    for seed in range(8):  # mirrored and not, turned every way
        torch.manual_seed(seed)
        moved_image, moved = transform(image, target)
        assert _handedness(moved) == upright, seed  # a figure's left hand is its left hand, mirrored or not
        for colours in _colours_under_points(moved_image, moved):
            assert colours["head"] == white  # the points moved with the pixels
            # In a mirror image the painted right hand (blue) is where the figure's left hand now is.
            assert (colours["left_hand"], colours["right_hand"]) in ((red, blue), (blue, red))
            mirrored += colours["left_hand"] == blue
    assert 0 < mirrored < 16  # both cases happened
    # The same flip without swapping the labels (an identity map): mirrored figures get the wrong hands.
    no_swap = get_transform(True, "hflip", keypoint_flip=[0, 1, 2])
    wrong = 0
    for seed in range(8):
        torch.manual_seed(seed)
        moved = no_swap(image, target)[1]
        was_mirrored = moved["keypoints"][0, 0, 0] != target["keypoints"][0, 0, 0]
        assert _handedness(moved) == ([-h for h in upright] if was_mirrored else upright)
        wrong += bool(was_mirrored)
    assert wrong > 0


@needs_keypoint_transforms
def test_keypoints_without_a_flip_map_are_never_flipped_silently(keypoint_coco):
    folder, ann_file = keypoint_coco
    image, target = CocoDataset(folder, ann_file).load(0)
    transform = get_transform(True, "hflip")
    with pytest.raises(ValueError, match="flip permutation"):
        for seed in range(8):
            torch.manual_seed(seed)
            transform(image, target)


@needs_keypoint_transforms
def test_a_crop_leaves_points_outside_the_image_unlabelled(keypoint_coco):
    folder, ann_file = keypoint_coco
    data = CocoDataset(folder, ann_file)
    transform = get_transform(True, "lsj", size=48, keypoint_flip=flip_permutation(data.keypoint_names))
    outside = 0
    for seed in range(20):
        torch.manual_seed(seed)
        image, target = transform(*data.load(4))
        points = target["keypoints"]
        assert len(points) == len(target["boxes"]) == len(target["labels"])
        x, y, visibility = points.unbind(-1)
        labelled = visibility > 0
        assert ((x[labelled] >= 0) & (x[labelled] < 48) & (y[labelled] >= 0) & (y[labelled] < 48)).all()
        assert (points[~labelled] == 0).all()
        outside += int((~labelled).sum())
    assert outside > 0  # some crops cut points off


def test_keypoint_ap_is_cocos_and_depends_on_the_sigmas(keypoint_coco):
    folder, ann_file = keypoint_coco
    data = CocoDataset(folder, ann_file, transforms=get_transform(False))
    per_image, shifted = [], []
    for idx in range(len(data)):
        image, target = data[idx]
        record, gt = coco_ground_truth(idx, image.shape[-2], image.shape[-1], target)
        points = target["keypoints"].clone()
        points[..., 2] = 1
        output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(points))}
        per_image.append((record, gt, coco_detections(idx, {**output, "keypoints": points})))
        points[..., 0] += 3.0  # every point 3 pixels off
        shifted.append((record, gt, coco_detections(idx, {**output, "keypoints": points})))
    exact = score_detections(per_image, None, keypoint_sigmas(KEYPOINT_NAMES))
    assert set(exact) == {"bbox", "keypoints"} and len(exact["keypoints"]) == 10
    assert exact["keypoints"][0] == pytest.approx(1.0)
    tight = score_detections(shifted, None, [0.02] * 3)["keypoints"][0]
    loose = score_detections(shifted, None, [0.2] * 3)["keypoints"][0]
    assert tight < loose <= 1.0 and tight < 0.9


def test_check_counts_keypoints_and_names_what_is_wrong(keypoint_coco, capsys):
    folder, ann_file = keypoint_coco
    data = json.loads(ann_file.read_text())
    data["annotations"][2]["keypoints"][0] = 500  # a head far right of its 112-wide image
    data["annotations"][3]["num_keypoints"] = 1  # it has 3 labelled points
    data["annotations"][4]["keypoints"] = [1, 2, 2]  # too short: an error
    ann_file.write_text(json.dumps(data))
    assert dataset_main(["check", "--data-path", str(folder), "--ann-file", str(ann_file)]) == 2
    out = capsys.readouterr().out
    assert "keypoints: 3 per instance; labelled: head " in out
    assert "keypoints.json: annotation 3 of fig2.png has keypoints ['head'] outside its 96x112 image" in out
    assert "annotation 4 of fig2.png has num_keypoints 1 but 3 labelled points" in out
    assert "error: " in out and "annotation 5 of fig4.png has keypoints [1, 2, 2]; give 9 numbers" in out


def test_categories_with_different_keypoints_are_refused(tmp_path):
    ann_file = write_keypoint_coco(tmp_path)
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": 2, "name": "other", "keypoints": ["a", "b"]})
    ann_file.write_text(json.dumps(data))
    with pytest.raises(UserError, match="categories 1 and 2 name different keypoints"):
        CocoDataset(tmp_path, ann_file)


@needs_keypoint_transforms
def test_show_draws_keypoints_as_trained_on(keypoint_coco, tmp_path):
    folder, ann_file = keypoint_coco
    out = tmp_path / "show"
    args = ["show", "--data-path", str(folder), "--ann-file", str(ann_file), "--num-images", "2", "--min-size", "64"]
    assert dataset_main([*args, "--output-dir", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 2
    data = json.loads(ann_file.read_text())
    data["categories"][0]["keypoints"] = ["left_a", "b", "c"]
    ann_file.write_text(json.dumps(data))
    assert dataset_main([*args, "--output-dir", str(out)]) == 2  # no right_a: a flip would mirror the labels
    assert dataset_main([*args, "--output-dir", str(out), "--augmentation", "none"]) == 0


def test_pictures_show_the_keypoints():
    from visualize import draw

    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[5.0, 5.0, 35.0, 35.0]]), "labels": torch.tensor([1])}
    target["keypoints"] = torch.tensor([[[10.0, 25.0, 2.0], [30.0, 25.0, 1.0], [20.0, 32.0, 0.0]]])
    picture = draw(image, target, ["background", "figure"], skeleton=[(0, 1)])
    white = [255, 255, 255]
    assert picture[:, 25, 10].tolist() == picture[:, 25, 30].tolist() == picture[:, 25, 20].tolist() == white
    assert picture[:, 32, 20].tolist() == [0, 0, 0]  # an unlabelled point is not drawn
    no_skeleton = draw(image, target, ["background", "figure"])
    assert no_skeleton[:, 25, 20].tolist() == [0, 0, 0]  # the bone is drawn only with a skeleton


def test_keypoint_annotations_without_an_outline_train_on_their_boxes(keypoint_coco, capsys):
    folder, ann_file = keypoint_coco
    data = json.loads(ann_file.read_text())
    for annotation in data["annotations"]:  # as CVAT and Label Studio export keypoints: a box, points, no outline
        annotation["segmentation"] = [] if annotation["id"] % 2 else None
        if annotation["segmentation"] is None:
            del annotation["segmentation"]
    ann_file.write_text(json.dumps(data))
    dataset = CocoDataset(folder, ann_file, transforms=get_transform(False), masks=None)  # as the data has them
    _, target = dataset[1]
    assert "masks" not in target and dataset.outlines() == "none"  # nothing rasterised: no box drawn as a mask
    assert target["boxes"].tolist() == [[5, 5, 45, 50], [40, 55, 90, 110]] and target["keypoints"].shape == (2, 3, 3)
    assert target["area"].tolist() == [40 * 45, 50 * 55]  # the boxes'
    assert dataset_main(["check", "--data-path", str(folder), "--ann-file", str(ann_file)]) == 0
    out = capsys.readouterr().out
    assert "annotations: boxes only, no outlines; trains the box models (" in out and "and Keypoint R-CNN" in out
    with pytest.raises(UserError, match="annotation 1 of fig1.png has an empty segmentation"):
        CocoDataset(folder, ann_file, keypoints=False, masks=True)[0]  # a mask model's read


def test_keypoint_training_on_a_torchvision_without_keypoints_is_one_line(monkeypatch):
    args = train.get_args_parser().parse_args(["--data-path", "x", "--model", "keypointrcnn_resnet50_fpn"])
    if hasattr(tv_tensors, "KeyPoints"):  # torchvision 0.23 or later: accepted, until it has none
        train.check_args(args)
        monkeypatch.delattr(tv_tensors, "KeyPoints")
    with pytest.raises(UserError, match="keypoint training needs torchvision 0.23 or later"):
        train.check_args(args)
