import numpy as np
import pytest
from PIL import Image

from coco_eval import coco_stats
from engine import errors_of
from errors import confusion_matrix, errors_record, save_error_pictures

CAT, DOG = 1, 2


def truth(image_id, box, label, crowd=0):
    return {"image_id": image_id, "bbox": box, "category_id": label, "area": box[2] * box[3], "iscrowd": crowd}


def found(image_id, box, label, score):
    return {"image_id": image_id, "bbox": box, "category_id": label, "score": score}


def evaluation_with_known_errors():
    """engine.evaluate's per-image triples: what each detection is, said beside it."""
    image = {"id": 1, "height": 100, "width": 200}
    objects = [
        truth(1, [0, 0, 20, 20], CAT),  # A
        truth(1, [50, 0, 20, 20], DOG),  # B
        truth(1, [100, 0, 20, 20], CAT),  # C
        truth(1, [150, 50, 40, 40], CAT, crowd=1),  # a crowd region
    ]
    detections = [
        found(1, [1, 1, 20, 20], CAT, 0.9),  # A, right
        found(1, [0, 0, 21, 19], CAT, 0.85),  # A again: A is taken, so a detection of nothing
        found(1, [50, 1, 20, 20], CAT, 0.8),  # B, found as a cat
        found(1, [0, 60, 30, 30], DOG, 0.7),  # nothing there
        found(1, [100, 0, 20, 20], CAT, 0.3),  # C, below the score threshold: C is missed
        found(1, [152, 52, 36, 36], DOG, 0.9),  # on the crowd region: counts nothing
    ]
    second = {"id": 2, "height": 50, "width": 50}
    return [(image, objects, {"bbox": detections}), (second, [truth(2, [5, 5, 30, 30], DOG)], {"bbox": []})]


def test_the_confusion_matrix_holds_the_errors_it_must():
    counts = confusion_matrix(evaluation_with_known_errors(), num_classes=3)
    # rows: the truth (cat, dog, background); columns: found as (cat, dog, not found)
    assert counts == [
        [1, 0, 1],  # A found as a cat; C missed
        [1, 0, 1],  # B found as a cat; image 2's dog missed
        [1, 1, 0],  # A's second detection, and the dog where there is nothing
    ]


def test_one_class_is_a_two_by_two_matrix():
    per_image = [({"id": 1}, [truth(1, [0, 0, 10, 10], 1), truth(1, [40, 40, 10, 10], 1)],
                  {"bbox": [found(1, [0, 0, 10, 10], 1, 0.99), found(1, [80, 80, 5, 5], 1, 0.6)]})]  # fmt: skip
    assert confusion_matrix(per_image, num_classes=2) == [[1, 1], [1, 0]]


def test_the_curves_are_pycocotools_own_and_average_to_its_ap():
    per_image = evaluation_with_known_errors()
    images = [record for record, *_ in per_image]
    annotations = [a for _, gt, _ in per_image for a in gt]
    results = [d for *_, detections in per_image for d in detections["bbox"]]
    curves = {}
    stats, per_category = coco_stats(images, annotations, results, "bbox", curves=curves)
    assert set(curves) == {CAT, DOG}  # every category with ground truth
    for category, curve in curves.items():
        assert len(curve["recall"]) == len(curve["iou50"]) == len(curve["iou50_95"]) == 101
        assert np.mean(curve["iou50_95"]) == pytest.approx(per_category[category])  # COCO's AP is the curve's mean
    assert curves[DOG]["iou50"] == [0.0] * 101  # the one dog was never found as a dog
    # A found first (precision 1 to recall 0.5), then A again and B as a cat, then C: recall 1 at precision 2 / 4
    cat = curves[CAT]["iou50"]
    assert cat[0] == cat[50] == pytest.approx(1.0) and cat[51] == cat[-1] == pytest.approx(0.5)
    assert np.mean([np.mean(c["iou50"]) for c in curves.values()]) == pytest.approx(stats[1])  # AP50


def test_error_pictures_and_their_numbers(tmp_path):
    per_image = evaluation_with_known_errors()
    images = [record for record, *_ in per_image]
    annotations = [a for _, gt, _ in per_image for a in gt]
    curves = {"bbox": {}}
    coco_stats(images, annotations, [d for *_, f in per_image for d in f["bbox"]], "bbox", curves=curves["bbox"])
    record = errors_of(per_image, ["background", "cat", "dog"], curves)
    assert record == errors_record(confusion_matrix(per_image, 3), curves, ["background", "cat", "dog"])
    assert record["confusion_matrix"]["classes"] == ["cat", "dog", "background"]
    assert set(record["pr_curves"]["bbox"]) == {"cat", "dog"}
    assert errors_of(per_image, None, curves)["confusion_matrix"]["classes"] == ["class 1", "class 2", "background"]
    written = save_error_pictures(record, tmp_path)
    assert written == ["confusion_matrix.png", "pr_curves.png"]
    for name in written:
        with Image.open(tmp_path / name) as picture:
            assert picture.width > 300 and picture.height > 300
