"""torchvision's box detectors end to end: each, once it has learned to detect the shapes of tests/learning.py
(the run tests/test_learning.py checks), evaluates with --test-only, writes results in the dataset's ids, predicts
and exports what it detects, and rebuilds from its checkpoint with no flag; SSDlite (BatchNorm that trains) resumes
bit-exactly."""

import functools
import json

import pytest
import torch
from conftest import saves_in_memory, slow, write_voc
from learning import PREDICTED, SHAPES
from test_train import run_cli, run_cli_here, run_main
from torchvision.ops import box_iou

import export
import predict
from checkpoint import model_from_checkpoint
from heads import num_classes_of
from model import MODELS, is_rcnn
from ssd import SSD_SIZES

SHAPE0 = {category: box for category, *box in SHAPES[0]}  # the test image predicted: category -> x1, y1, x2, y2
COMMON = ["--weights", "none", "--max-size", "128", "--print-freq", "5", "--lr", "0.001"]

# Resumed, and bit-exact against a straight run: SSDlite, whose BatchNorm trains (the resume's own state, the RNG, the
# sampler and the optimizer, is the same for every model and checked for the R-CNNs in tests/test_train.py, whose
# resume-equals-straight tests run each command in a process of its own, as a user runs it).
EXACT = ("ssdlite320_mobilenet_v3_large",)


def test_every_one_stage_model_is_predicted_after_it_learned():
    """Fast: the end-to-end test below covers each model that is not an R-CNN (the R-CNNs' predictions and exports:
    tests/test_predict.py, test_export.py), and the R-CNN whose builder sets its own sizes."""
    one_stage = [name for name in MODELS if not is_rcnn(name)]
    assert sorted(PREDICTED) == sorted([*one_stage, "fasterrcnn_mobilenet_v3_large_320_fpn"])


@pytest.mark.slow
@pytest.mark.parametrize("name", PREDICTED)
def test_a_box_model_that_learned_evaluates_predicts_and_exports_what_it_detects(name, learned_run, tmp_path, capsys):
    run = learned_run(name)  # trained until it detects the shapes (tests/test_learning.py), its last epoch kept
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # what best.pth holds here
    assert last["bbox"][0] >= 0.5 and "segm" not in last  # it detects: the comparisons below compare detections

    model, config = model_from_checkpoint(run / "best.pth")  # no flag, no download
    assert config["name"] == name and num_classes_of(model) == 3 and not config["masks"]
    if name in SSD_SIZES:  # its own square unless typed
        assert config["min_size"][0] == json.loads((run / "args.json").read_text())["min_size"]

    run_main("--resume", run / "best.pth", "--test-only", "--output-dir", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["bbox"] == last["bbox"]
    results = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert results and {r["file_name"] for r in results} == {f"shape{i}_0.png" for i in range(4)}
    assert {r["category_id"] for r in results} == {1, 2} and not (tmp_path / "eval" / "results_segm.json").exists()

    image = str(run.parent / "test" / "shape0_0.png")  # a red square and a blue disc
    # at 0.2, not predict.py's 0.5: a RetinaNet's focal-loss scores sit lower
    arguments = ["--checkpoint", str(run / "best.pth"), image, "--output-dir", str(tmp_path / "predictions"),
                 "--score-threshold", "0.2"]  # fmt: skip
    assert predict.predict(predict.get_args_parser().parse_args(arguments))["predicted"] == [image]
    found = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
    boxes = [(r["category_id"], (r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]))
             for r in found]  # fmt: skip
    for category, box in SHAPE0.items():  # the square and the disc, each found in its place as what it is
        assert any(c == category and box_iou(torch.tensor([b]), torch.tensor([box])) >= 0.5 for c, b in boxes), found
    assert (tmp_path / "predictions" / "shape0_0.png").is_file()

    arguments = ["--checkpoint", str(run / "best.pth"), "--format", "onnx", "--output", str(tmp_path / "model.onnx"),
                 "--image", image]  # fmt: skip
    capsys.readouterr()
    assert export.main(export.get_args_parser().parse_args(arguments)) is True
    printed = capsys.readouterr().out
    assert "matches PyTorch" in printed and int(printed.split(" detections)")[0].rsplit(", ", 1)[1]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT)
def test_a_box_model_resumes_bit_exactly(name, tmp_path, capsys, monkeypatch):
    """In this process, as Keypoint R-CNN's exact resume (tests/test_train.py): one run of 1 epoch, resumed to 2,
    against a straight run of 2. Of the saves, the file the resume reads is written (the 1-epoch run's
    checkpoint.pth); the others stay in memory (conftest.saves_in_memory)."""
    root = write_voc(tmp_path / "voc")
    saved = saves_in_memory(monkeypatch, written=lambda weights: weights["args"]["epochs"] == 1, best=False)
    common = ["--data-path", root, "--model", name, *COMMON, "--min-size", "64", "--use-deterministic-algorithms",
              "-j", 1]  # fmt: skip
    for args in (
        [*common, "--epochs", 1, "--output-dir", tmp_path / "run"],
        ["--resume", tmp_path / "run" / "checkpoint.pth", "--epochs", 2],
        [*common, "--epochs", 2, "--output-dir", tmp_path / "straight"],
    ):
        result = run_cli_here(capsys, *args)
        assert result.returncode == 0, result.stderr
    resumed, straight = saved[1], saved[-1]
    assert len(saved) == 4 and not (tmp_path / "straight" / "checkpoint.pth").exists()
    assert resumed["epoch"] == straight["epoch"] == 1
    assert resumed["changes"] == [{"epoch": 1, "flag": "--epochs", "from": 1, "to": 2}]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert not torch.are_deterministic_algorithms_enabled()  # the runs' --use-deterministic-algorithms ended with them
    assert resumed["args"]["min_size"] == resumed["model_config"]["min_size"][0] == 64


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # as a user runs it, where a stray warning would be a second line; the others in this process
        pytest.param(["--model", "ssd300_vgg16", "--augmentation", "multiscale"],
                     "--augmentation multiscale: --model ssd300", marks=slow),
        (["--model", "ssdlite320_mobilenet_v3_large", "-b", "1"], "--batch-size 1: --model ssdlite320"),
        (["--model", "retinanet_resnet50_fpn", "--min-size", "64", "--rpn-post-nms-top-n-train", "500"],
         "--rpn-post-nms-top-n-train: an R-CNN setting; --model retinanet_resnet50_fpn has no such head"),
    ],
)  # fmt: skip
def test_flags_a_one_stage_model_cannot_take_are_one_line(flags, expected, tmp_path, capsys):
    root = write_voc(tmp_path / "voc")
    run = run_cli if "ssd300_vgg16" in flags else functools.partial(run_cli_here, capsys)
    result = run("--data-path", root, *COMMON, *flags, "--epochs", 1, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr and not (tmp_path / "out" / "checkpoint.pth").exists()
