"""Each model here learns: from --weights none, trained by train.py on four synthetic images of large, distinct objects
(tests/learning.py) until it can overfit them, it scores COCO AP@[.5:.95] >= 0.5 on those same images: box AP for
every model, mask AP for the mask models, keypoint AP for the keypoint model. This proves heads, input sizes and box
conventions (a head initialised wrongly, a size off the model's, a box off by one would fail), not generalisation.
One model's run is another's (LEARNS_AS: two builders of one model), shown equal by a fast test instead of run twice.

Each model's settings (learning.LEARNING) are the smallest input and the fewest epochs that still prove it (16 steps
an epoch), measured on the 2-core CPU; the runs are shared, through the session's `learned_run` fixture, with the box
models' end-to-end test (tests/test_box_models.py), which then evaluates, predicts and exports a model that detects.
They leave out what no test reads (evaluations before the last epoch, checkpoints, pictures), and the last test here
shows that this changes nothing of the training.
"""

import json

import pytest
from conftest import needs_keypoint_transforms
from learning import LEARNING, learning_command, one_thread

from model import MODELS
from utils import read_jsonl

BOX_AP, MASK_AP, KEYPOINT_AP = 0.5, 0.5, 0.5


def _last_epoch(run):
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


# The tutorial's MobileNetV2 models (one 1280-channel map at stride 32, which the RPN's convolution reads and whose RoI
# features feed the box head's first layer: 64 M parameters 1024 wide, 16 M at the 256 their runs take) are the
# costliest here: 256-320 px and 7-8 epochs, where the ResNets learn at 96 px in 3-5.
FASTER = [
    "fasterrcnn_resnet18_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
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
# A model whose learning run would be another's to the last bit: torchvision builds both from one function, and at the
# learning run's 320 pixels they are one model (test_the_two_mobilenet_v3_faster_rcnns_are_one_model_at_320_pixels),
# so one run proves both (it cost 35 s of the suite a second time, Xeon AMX).
LEARNS_AS = {"fasterrcnn_mobilenet_v3_large_fpn": "fasterrcnn_mobilenet_v3_large_320_fpn"}


def test_every_model_has_a_learning_test():
    """Fast: these lists name every --model once (or LEARNS_AS names the run that proves it), and each has its
    settings in learning.LEARNING."""
    listed = FASTER + MASK + KEYPOINT + RETINANET + FCOS + SSD
    assert sorted(listed + list(LEARNS_AS)) == sorted(MODELS) and sorted(LEARNING) == sorted(MODELS)
    assert set(LEARNS_AS.values()) <= set(listed)


class FirstBatch(Exception):
    """Raised by the stand-in for the first epoch, once it has seen what the run would train."""


def _settings(part: object) -> dict[str, object]:
    """The plain settings of a model's part and of the helpers it holds (box coder, matcher, sampler), by name; not
    what every torch module holds (its submodules, parameters, hooks)."""
    import torch

    found, every_module = {}, set(vars(torch.nn.Module()))
    for key, value in vars(part).items():
        if key in every_module:
            continue
        if isinstance(value, (bool, int, float, str, tuple, list, dict)):
            found[key] = value
        elif type(value).__module__.startswith("torchvision.models.detection._utils"):
            found.update({f"{key}.{inner}": setting for inner, setting in _settings(value).items()})
    return found


def test_the_two_mobilenet_v3_faster_rcnns_are_one_model_at_320_pixels(tmp_path, monkeypatch):
    """Fast: LEARNS_AS's claim. Each model's learning command, run by train.main up to its first step, builds the
    same weights from the same seed, loads the same first batch, and computes the same losses on it; of every
    setting of its RPN, RoI heads and transform, only the two its builder sets for prediction differ: the largest
    side (640 against the 320 typed, which no 96-pixel image reaches) and the proposals kept before NMS when
    predicting (150 against 1000). So the 320 builder's learning run trains this one too."""
    import torch

    import train

    seen = []  # (model, images, targets, losses) of each command, in order

    def first_step(model, optimizer, loader, *rest, **more):
        images, targets = next(iter(loader))
        torch.manual_seed(0)  # the RoI sampler draws from it
        seen.append((model, images, targets, model(list(images), list(targets))))
        raise FirstBatch

    monkeypatch.setattr(train, "train_one_epoch", first_step)
    for name in [*LEARNS_AS, *LEARNS_AS.values()]:
        with pytest.raises(FirstBatch):
            train.main(*train.parse_args(learning_command(name, tmp_path / name, LEARNING[name])))
    (mine, images, targets, losses), (other, other_images, other_targets, other_losses) = seen
    assert all(torch.equal(a, b) for a, b in zip(images, other_images, strict=True))
    for target, other_target in zip(targets, other_targets, strict=True):
        assert list(target) == list(other_target)
        assert all(torch.equal(v, other_target[k]) if torch.is_tensor(v) else v == other_target[k]
                   for k, v in target.items())  # fmt: skip
    state, other_state = mine.state_dict(), other.state_dict()
    assert list(state) == list(other_state) and all(torch.equal(state[k], other_state[k]) for k in state)
    assert losses == other_losses and all(loss > 0 for loss in losses.values())
    differ = {}
    for part in ("rpn", "roi_heads", "transform"):
        ours, theirs = _settings(getattr(mine, part)), _settings(getattr(other, part))
        assert list(ours) == list(theirs)
        differ.update({f"{part}.{key}": (ours[key], theirs[key]) for key in ours if ours[key] != theirs[key]})
    testing = ({"training": 200, "testing": 1000}, {"training": 200, "testing": 150})
    assert differ == {"rpn._pre_nms_top_n": testing, "transform.max_size": (320, 640)}


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
    with one_thread():  # as the learning run trains
        train.main(*train.parse_args(learning_command(name, tmp_path, LEARNING[name])))
    full = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert (tmp_path / "run" / "best_predictions.png").is_file() and (tmp_path / "run" / "pr_curves.png").is_file()
    assert [record["bbox"][0] for record in lean[:-1]] == [-1.0] * (len(lean) - 1)  # not evaluated: not scored
    assert all(record["bbox"][0] >= 0 for record in full)
    losses = [key for key in full[0] if key.startswith("loss")]
    assert len(losses) == 5 and len(full) == len(lean)
    assert [[record[key] for key in losses] for record in full] == [[record[key] for key in losses] for record in lean]
    assert full[-1]["bbox"] == lean[-1]["bbox"]
