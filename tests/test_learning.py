"""Each model here learns: from --weights none, trained by train.py on four synthetic images of large, distinct objects
(tests/learning.py) until it can overfit them, it scores COCO AP@[.5:.95] >= 0.5 on those same images: box AP for
every model, mask AP for the mask models. This proves heads, input sizes and box
conventions (a head initialised wrongly, a size off the model's, a box off by one would fail), not generalisation.

Each model's settings are the smallest input and the fewest epochs that still prove it (16 steps an epoch), measured
on the 2-core CPU; the runs are shared, through the session's `learned_run` fixture, with the box models' end-to-end
test (tests/test_box_models.py), which then evaluates, predicts and exports a model that detects.
"""

import json

import pytest

pytestmark = pytest.mark.slow

BOX_AP, MASK_AP = 0.5, 0.5


def _last_epoch(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# The models shown to learn so far. Not yet, with their best so far on the same data (issue 30 stays open until
# each is here): fasterrcnn_resnet50_fpn 0.37 after 4 epochs, retinanet_resnet50_fpn 0.26 after 7,
# fasterrcnn_mobilenet_v3_large_fpn and its 320 variant 0.43 after 8 at 160 px, ssdlite320_mobilenet_v3_large 0.17
# after 12 at 128 px; the other R50s, Keypoint R-CNN and the MobileNetV2 models not yet tried.


@pytest.mark.parametrize("name", ["fasterrcnn_resnet18_fpn"])
def test_faster_rcnn_learns(name, learned_run):
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP, record["bbox"]


@pytest.mark.parametrize("name", ["maskrcnn_resnet18_fpn"])
def test_mask_rcnn_learns(name, learned_run):
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP and record["segm"][0] >= MASK_AP, (record["bbox"], record["segm"])


def test_fcos_learns(learned_run):
    record = _last_epoch(learned_run("fcos_resnet50_fpn"))
    assert record["bbox"][0] >= BOX_AP, record["bbox"]


@pytest.mark.parametrize("name", ["ssd300_vgg16"])
def test_ssd_learns(name, learned_run):
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP, record["bbox"]
