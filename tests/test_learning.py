"""Each model here learns: from --weights none, trained by train.py on four synthetic images of large, distinct objects
(tests/learning.py) until it can overfit them, it scores COCO AP@[.5:.95] >= 0.5 on those same images: box AP for
every model, mask AP for the mask models, keypoint AP for the keypoint model. This proves heads, input sizes and box
conventions (a head initialised wrongly, a size off the model's, a box off by one would fail), not generalisation.

Each model's settings (learning.LEARNING) are the smallest input and the fewest epochs that still prove it (16 steps
an epoch), measured on the 2-core CPU; the runs are shared, through the session's `learned_run` fixture, with the box
models' end-to-end test (tests/test_box_models.py), which then evaluates, predicts and exports a model that detects.
They leave out what no test reads (evaluations before the last epoch, checkpoints, pictures), and the last test here
shows that this changes nothing of the training.
"""

import json

import pytest
from conftest import needs_keypoint_transforms
from learning import LEARNING, learning_command

from model import MODELS
from utils import read_jsonl

BOX_AP, MASK_AP, KEYPOINT_AP = 0.5, 0.5, 0.5


def _last_epoch(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# The tutorial's MobileNetV2 models (one 1280-channel map at stride 32, whose RoI features feed the box head's first
# layer: 64 M parameters 1024 wide, 16 M at the 256 their runs take) are the costliest here: 256-320 px and 7 epochs,
# where the ResNets learn at 96 px in 3-5.
FASTER = [
    "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v2",
]
MASK = [
    "maskrcnn_resnet18_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "maskrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_mobilenet_v2",
]
RETINANET = ["retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"]
KEYPOINT = ["keypointrcnn_resnet50_fpn"]
FCOS = ["fcos_resnet50_fpn"]
SSD = ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]


def test_every_model_has_a_learning_test():
    """Fast: these lists name every --model once, and each has its settings in learning.LEARNING."""
    listed = FASTER + MASK + KEYPOINT + RETINANET + FCOS + SSD
    assert sorted(listed) == sorted(MODELS) and sorted(LEARNING) == sorted(MODELS)


def _learns_boxes(name, learned_run):
    """A box model's learning test: box AP@[.5:.95] on the images it trained on."""
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP, record["bbox"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FASTER)
def test_faster_rcnn_learns(name, learned_run):
    _learns_boxes(name, learned_run)


@pytest.mark.slow
@pytest.mark.parametrize("name", MASK)
def test_mask_rcnn_learns(name, learned_run):
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP and record["segm"][0] >= MASK_AP, (record["bbox"], record["segm"])


@needs_keypoint_transforms
@pytest.mark.slow
@pytest.mark.parametrize("name", KEYPOINT)
def test_keypoint_rcnn_learns(name, learned_run):
    record = _last_epoch(learned_run(name))
    assert record["bbox"][0] >= BOX_AP and record["keypoints"][0] >= KEYPOINT_AP, (record["bbox"], record["keypoints"])


@pytest.mark.slow
@pytest.mark.parametrize("name", RETINANET)
def test_retinanet_learns(name, learned_run):
    _learns_boxes(name, learned_run)


@pytest.mark.slow
@pytest.mark.parametrize("name", FCOS)
def test_fcos_learns(name, learned_run):
    _learns_boxes(name, learned_run)


@pytest.mark.slow
@pytest.mark.parametrize("name", SSD)
def test_ssd_learns(name, learned_run):
    _learns_boxes(name, learned_run)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_models")
@pytest.mark.parametrize("name", ["fasterrcnn_tiny_fpn"])
def test_a_learning_run_trains_as_the_user_s_command_does(name, learned_run, tmp_path, monkeypatch):
    """The same command in full, every epoch evaluated and its pictures drawn, trains to the same weights as the
    learning run (conftest.learned_run): the same losses every epoch, to the last bit, and the same AP at the end.
    What the learning run leaves out is the same for every model: the tests' own (tests/tiny_model.py) shows it in
    3 s, where the cheapest of the user's, a ResNet-18 Faster R-CNN, took 25 s more."""
    import train

    monkeypatch.setitem(LEARNING, name, [*LEARNING["fasterrcnn_resnet18_fpn"], "--epochs", "3"])  # an epoch fewer
    lean = read_jsonl(learned_run(name) / "metrics.jsonl")
    monkeypatch.setattr(train, "save_epoch", lambda *saved: None)  # a test of saves elsewhere: no draw
    train.main(*train.parse_args(learning_command(name, tmp_path, LEARNING[name])))
    full = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert (tmp_path / "run" / "best_predictions.png").is_file() and (tmp_path / "run" / "pr_curves.png").is_file()
    assert [record["bbox"][0] for record in lean[:-1]] == [-1.0] * (len(lean) - 1)  # not evaluated: not scored
    assert all(record["bbox"][0] >= 0 for record in full)
    losses = [key for key in full[0] if key.startswith("loss")]
    assert len(losses) == 5 and len(full) == len(lean)
    assert [[record[key] for key in losses] for record in full] == [[record[key] for key in losses] for record in lean]
    assert full[-1]["bbox"] == lean[-1]["bbox"]
