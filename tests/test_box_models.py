"""torchvision's box detectors end to end on a box-only dataset: train (SSDlite also resumed, bit-exactly), box AP,
results in the dataset's ids, predict.py, export.py's numeric check, and the model rebuilt from its checkpoint with no
flag."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, write_voc
from test_train import run_cli, run_main

import export
import predict
from checkpoint import model_from_checkpoint
from model import MODELS, SSD_SIZES, is_rcnn, num_classes_of

BOX_MODELS = [name for name in MODELS if not is_rcnn(name)] + ["fasterrcnn_mobilenet_v3_large_320_fpn"]
COMMON = ["--weights", "none", "--max-size", "128", "--print-freq", "5", "--lr", "0.001"]


def _size(name):  # small, but SSD300's VGG needs its 300 pixels (and, from scratch without BatchNorm, a lower lr)
    return ["--lr", "0.0001"] if name == "ssd300_vgg16" else ["--min-size", "64"]


# Resumed, and bit-exact against a straight run: SSDlite, whose BatchNorm trains (the resume's own state, the RNG, the
# sampler and the optimizer, is the same for every model and checked for the R-CNNs in tests/test_train.py). SSDlite
# runs as a user runs it, each command a process of its own (MKL_CBWR must take effect before MKL's first call); the
# others train once, in this process (a process's start-up, torch's imports, is 5 s of a 2-core CPU).
EXACT = ("ssdlite320_mobilenet_v3_large",)


def _run(name, *args):
    if name not in EXACT:
        return run_main(*args)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", BOX_MODELS)
def test_a_box_model_trains_resumes_evaluates_predicts_and_exports(name, tmp_path):
    root = write_voc(tmp_path / "voc")
    exact = ["--use-deterministic-algorithms", "-j", 1] if name in EXACT else ["-j", 0]  # (one model has a worker)
    common = ["--data-path", root, "--model", name, *COMMON, *_size(name), *exact]
    if name in EXACT:  # trained, resumed, and against a straight run
        _run(name, *common, "--epochs", 1, "--output-dir", tmp_path / "run")
        _run(name, "--resume", tmp_path / "run" / "checkpoint.pth", "--epochs", 2)
        _run(name, *common, "--epochs", 2, "--output-dir", tmp_path / "straight")
        straight = torch.load(tmp_path / "straight" / "checkpoint.pth", weights_only=True)
        resumed = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
        assert resumed["epoch"] == 1 and resumed["changes"] == [{"epoch": 1, "flag": "--epochs", "from": 1, "to": 2}]
        for key, value in straight["model"].items():
            assert torch.equal(value, resumed["model"][key]), key
    else:  # a resume is the same for every model: these train once
        _run(name, *common, "--epochs", 1, "--output-dir", tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(2 if name in EXACT else 1))
    assert all(len(r["bbox"]) == 12 and "segm" not in r for r in records)
    assert (
        trained["args"]["min_size"]
        == trained["model_config"]["min_size"][0]
        == (SSD_SIZES.get(name, 64) if name == "ssd300_vgg16" else 64)
    )

    model, config = model_from_checkpoint(tmp_path / "run" / "best.pth")  # no flag, no download
    assert config["name"] == name and num_classes_of(model) == 3 and not config["masks"]

    _run(name, "--resume", tmp_path / "run" / "checkpoint.pth", "--test-only", "--output-dir", tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["bbox"] == records[-1]["bbox"]
    results = json.loads((tmp_path / "eval" / "results_bbox.json").read_text())
    assert {r["file_name"] for r in results} <= {"img1.jpg", "img4.jpg", "img7.jpg"}
    assert {r["category_id"] for r in results} <= {1, 2} and not (tmp_path / "eval" / "results_segm.json").exists()

    arguments = ["--checkpoint", str(tmp_path / "run" / "best.pth"), str(root / "JPEGImages" / "img1.jpg"),
                 "--output-dir", str(tmp_path / "predictions"), "--score-threshold", "0"]  # fmt: skip
    if name in EXACT:  # as a user runs it
        predicted = subprocess.run([sys.executable, "predict.py", *arguments], cwd=ROOT, capture_output=True, text=True)
        assert predicted.returncode == 0, predicted.stderr
    else:
        assert predict.predict(predict.get_args_parser().parse_args(arguments))["predicted"] == [arguments[2]]
    assert (tmp_path / "predictions" / "img1.png").is_file()

    arguments = ["--checkpoint", str(tmp_path / "run" / "best.pth"), "--format", "onnx",
                 "--output", str(tmp_path / "model.onnx")]  # fmt: skip
    assert export.main(export.get_args_parser().parse_args(arguments)) is True


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--model", "ssd300_vgg16", "--augmentation", "multiscale"], "--augmentation multiscale: --model ssd300"),
        (["--model", "ssdlite320_mobilenet_v3_large", "-b", "1"], "--batch-size 1: --model ssdlite320"),
        (["--model", "retinanet_resnet50_fpn", "--min-size", "64", "--rpn-post-nms-top-n-train", "500"],
         "--rpn-post-nms-top-n-train: an R-CNN setting; --model retinanet_resnet50_fpn has no such head"),
    ],
)  # fmt: skip
def test_flags_a_one_stage_model_cannot_take_are_one_line(flags, expected, tmp_path):
    root = write_voc(tmp_path / "voc")
    result = run_cli("--data-path", root, *COMMON, *flags, "--epochs", 1, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr and not (tmp_path / "out" / "checkpoint.pth").exists()
