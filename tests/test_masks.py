"""Instance maps instead of N x H x W stacks: the same pixels, boxes and areas as the stacks, through every route
and preset, and evaluation that pastes and encodes a few masks at a time scores as pasting them all does."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import rle_of
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from coco_eval import coco_detections, coco_ground_truth, score_detections
from coco_utils import CocoDataset
from dataset import MaskFolderDataset, boxes_of_masks
from masks import InstanceMap, encode_detections, encode_ground_truth, instance_masks, rasterise, unpasted_masks
from transforms import AUGMENTATIONS, get_transform, train_sizes
from yolo_utils import yolo_dataset

HEIGHT, WIDTH, MIN_SIZE, MAX_SIZE = 90, 120, 64, 100  # the model shrinks these images: masks are resampled


def _polygons(rng: np.random.Generator, count: int) -> list[list[float]]:
    """Random polygons (3-7 points) in pixels, some overlapping, some across the image's edge."""
    polygons = []
    for _ in range(count):
        points = rng.integers(3, 8)
        centre = rng.uniform([-5, -5], [WIDTH + 5, HEIGHT + 5])
        polygons.append((centre + rng.normal(0, 9, (points, 2))).reshape(-1).round(1).tolist())
    return polygons


def _full_size(polygon: list[float]) -> np.ndarray:
    """The polygon as today's path drew it: pycocotools at the whole image's size."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], HEIGHT, WIDTH)))


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    """The same kind of data through the folder, COCO (polygons, an RLE, a crowd) and YOLO routes, with the
    N x H x W masks today's path made of each image (label image == value; pycocotools' annToMask; polygons at
    the image's size)."""
    root, rng = tmp_path_factory.mktemp("routes"), np.random.default_rng(0)
    for name in ("folder", "coco", "yolo/images", "yolo/labels"):
        (root / name).mkdir(parents=True)
    annotations, images, stacks = [], [], {"folder": [], "coco": [], "yolo": []}
    for index in range(4):
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        polygons = _polygons(rng, 6)
        drawn = [_full_size(p) for p in polygons]
        label = np.zeros((HEIGHT, WIDTH), np.uint16)
        for value, mask in enumerate(drawn, start=1):
            label[mask > 0] = value * 300  # 16-bit values; later polygons cover earlier ones
        for folder in ("folder", "coco", "yolo/images"):
            Image.fromarray(pixels).save(root / folder / f"{index}.png")
        Image.fromarray(label).save(root / "folder" / f"{index}_mask.png")
        values = [v for v in np.unique(label) if v]
        stacks["folder"].append(np.stack([label == v for v in values]).astype(np.uint8))
        normalised = [np.clip(np.asarray(p).reshape(-1, 2) / [WIDTH, HEIGHT], 0, 1).ravel() for p in polygons]
        lines = [f"0 {' '.join(f'{v:.6f}' for v in n)}" for n in normalised]  # YOLO's: inside 0..1
        (root / "yolo/labels" / f"{index}.txt").write_text("\n".join(lines) + "\n")
        in_pixels = [(np.asarray([float(f"{v:.6f}") for v in n]).reshape(-1, 2) * [WIDTH, HEIGHT]) for n in normalised]
        stacks["yolo"].append(np.stack([_full_size(points.ravel().tolist()) for points in in_pixels]))
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": HEIGHT, "width": WIDTH})
        for k, polygon in enumerate(polygons):
            segmentation = [polygon] if k != 1 else mask_utils.encode(np.asfortranarray(drawn[k]))
            if isinstance(segmentation, dict):
                segmentation["counts"] = segmentation["counts"].decode()
            mask = drawn[k]
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotation = {"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1, "bbox": box}
            annotations.append({**annotation, "segmentation": segmentation, "iscrowd": int(k == 5),
                                "area": float(mask.sum())})  # fmt: skip
    ann_file = root / "coco.json"
    categories = [{"id": 1, "name": "thing"}]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    coco = COCO(str(ann_file))
    for image in images:
        stacks["coco"].append(np.stack([coco.annToMask(a) for a in coco.imgToAnns[image["id"]]]))
    datasets = {
        "folder": MaskFolderDataset(root / "folder", root / "folder"),
        "coco": CocoDataset(root / "coco", ann_file),
        "yolo": yolo_dataset(root / "yolo"),
    }
    return datasets, stacks


@pytest.mark.parametrize("route", ["folder", "coco", "yolo"])
def test_each_route_keeps_todays_masks_boxes_and_areas_in_one_map(routes, route):
    datasets, stacks = routes
    layers = set()
    for idx in range(len(datasets[route])):
        _, target = datasets[route].load(idx)
        assert isinstance(target["instance_map"], InstanceMap) and "masks" not in target
        today = torch.from_numpy(stacks[route][idx])
        assert torch.equal(instance_masks(target), today)  # every pixel of every instance, overlaps included
        if route != "coco":  # COCO's boxes and areas are the json's, as before
            assert torch.equal(target["boxes"].as_subclass(torch.Tensor), boxes_of_masks(today))
            assert torch.equal(target["area"], today.sum(dim=(1, 2), dtype=torch.float32))
        layers.add(len(target["instance_map"]))
    assert layers == ({1} if route == "folder" else layers) and (route == "folder" or max(layers) > 1)


@pytest.mark.parametrize("augmentation", AUGMENTATIONS)
@pytest.mark.parametrize("route", ["folder", "coco", "yolo"])
def test_the_model_is_fed_todays_masks_boxes_and_images(routes, route, augmentation):
    # Today's path: the N x H x W stack through the preset, then the model's own resize. Ours: the map through
    # the preset, resized here (ResizeForModel), split, and the model skips its resize. Same draws, same pixels.
    datasets, stacks = routes
    sizes = train_sizes(augmentation, MIN_SIZE)
    today = get_transform(True, augmentation, MIN_SIZE)
    ours = get_transform(True, augmentation, MIN_SIZE, model_sizes=(sizes, MAX_SIZE))
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    model_resize = GeneralizedRCNNTransform(sizes, MAX_SIZE, **imagenet).train()
    no_resize = GeneralizedRCNNTransform(sizes, MAX_SIZE, **imagenet, _skip_resize=True).train()
    for idx in range(len(datasets[route])):
        image, target = datasets[route].load(idx)
        crowd = target["iscrowd"].bool()  # training leaves crowds out
        stacked = {key: value for key, value in target.items() if key != "instance_map"}
        stacked["masks"] = tv_tensors.Mask(torch.from_numpy(stacks[route][idx]))
        for seed in range(3):
            torch.manual_seed(seed)
            expected_images, expected = model_resize(*_as_batch(*today(image, _without(stacked, crowd))))
            torch.manual_seed(seed)
            images, got = no_resize(*_as_batch(*ours(image, _without(target, crowd))))
            assert images.image_sizes == expected_images.image_sizes
            torch.testing.assert_close(images.tensors, expected_images.tensors, atol=2e-5, rtol=0)
            for key in ("masks", "boxes", "labels"):
                assert torch.equal(got[0][key], expected[0][key]), (key, seed)


def _without(target, crowd):
    """The target without its crowd regions, as a training dataset reads it (include_crowd=False)."""
    if not crowd.any():
        return target
    kept = ~crowd
    out = {key: value[kept] if key in ("boxes", "labels", "area", "iscrowd", "masks") else value
           for key, value in target.items()}  # fmt: skip
    out["boxes"] = type(target["boxes"])(out["boxes"], format="XYXY", canvas_size=target["boxes"].canvas_size)
    if "masks" in target:  # indexing a tv_tensor gives a plain tensor, which transforms would leave alone
        out["masks"] = tv_tensors.Mask(out["masks"])
    if "instance_map" in target:
        from masks import keep

        out["instance_map"] = keep(target["instance_map"], kept)
    return out


def _as_batch(image, target):
    return [image], [target]


def test_ground_truth_is_encoded_as_the_stack_was(routes):
    datasets, stacks = routes
    for idx in range(len(datasets["coco"])):
        _, target = datasets["coco"].load(idx)
        from_stack = encode_ground_truth({"masks": torch.from_numpy(stacks["coco"][idx])})
        assert encode_ground_truth(target) == from_stack
        assert [a["segmentation"] for a in coco_ground_truth(idx, HEIGHT, WIDTH, target)[1]] == from_stack


def test_drawing_only_the_box_gives_pycocotools_own_pixels():
    # Polygons with 0-2 decimals, across the image's edge; RLEs compressed and not, with several parts.
    rng = np.random.default_rng(1)
    for k in range(300):
        polygons = [np.round(p, k % 3).tolist() for p in _polygons(rng, int(rng.integers(1, 3)))]
        speckled = (rng.random((HEIGHT, WIDTH)) < 0.02 * (k % 5)).astype(np.uint8)
        for segmentation, expected in [
            (polygons, mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, HEIGHT, WIDTH)))),
            (rle_of(speckled, compressed=k % 2 == 0), speckled),
        ]:
            window, top, left = rasterise(segmentation, HEIGHT, WIDTH)
            drawn = np.zeros((HEIGHT, WIDTH), np.uint8)
            drawn[top : top + window.shape[0], left : left + window.shape[1]] = window
            assert np.array_equal(drawn, expected)


def test_masks_pasted_a_few_at_a_time_score_as_pasted_all_at_once():
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=100).eval()
    images = [torch.rand(3, HEIGHT, WIDTH), torch.rand(3, 70, 50)]
    with torch.inference_mode():
        pasted = model(images)  # torchvision's own: N x 1 x H x W at each image's size
        with unpasted_masks(model) as mask_probs:
            unpasted = model(images)
    assert len(mask_probs) == 2 and mask_probs[0].shape[-2:] == (28, 28) and "masks" not in unpasted[0]
    per_image = {"pasted": [], "unpasted": []}
    rng = np.random.default_rng(0)
    for k, (image, whole, apart) in enumerate(zip(images, pasted, unpasted, strict=True)):
        assert len(whole["boxes"]) > 10 and torch.equal(whole["boxes"], apart["boxes"])
        size = tuple(image.shape[-2:])
        apart = {**apart, "mask_probs": mask_probs[k]}
        assert encode_detections(apart, *size) == encode_detections(whole, *size)
        binary = whole["masks"][:, 0] > 0.5
        picked = [int(i) for i in rng.permutation(len(binary)) if binary[i].any()][:5]  # ground truth: some of them
        chosen = binary[picked]
        target = {"boxes": boxes_of_masks(chosen), "labels": whole["labels"][picked],
                  "area": chosen.sum(dim=(1, 2)).float(), "iscrowd": torch.zeros(len(picked), dtype=torch.int64),
                  "masks": chosen.to(torch.uint8)}  # fmt: skip
        record, gt = coco_ground_truth(k, *size, target)
        per_image["pasted"].append((record, gt, coco_detections(k, whole)))
        per_image["unpasted"].append((record, gt, coco_detections(k, apart, size)))
    stats = {how: score_detections(found, None) for how, found in per_image.items()}
    assert stats["pasted"]["segm"][0] > 0.01  # something to compare: the ground truth is among the detections
    np.testing.assert_allclose(stats["unpasted"]["segm"], stats["pasted"]["segm"], atol=1e-6)
