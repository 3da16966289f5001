import sys

import pytest
from conftest import untrained_checkpoint

import export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A best.pth of an untrained model, written once: the tests only read it. Two classes: an untrained model scores
    many boxes exactly alike, and with more classes eager PyTorch and the traced graph run different (equivalent) NMS
    algorithms, which break such ties differently. Its box head narrowed (--box-head 128; what is exported is not the
    head's width): the graphs are 35 MB, not 87."""
    path = tmp_path_factory.mktemp("checkpoint") / "best.pth"
    return untrained_checkpoint(
        path, "maskrcnn_mobilenet_v3_large_fpn", ["background", "a"], min_size=64, max_size=96, box_head=128
    )


def _export(checkpoint, path, fmt, *extra):
    return export.main(export.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--format", fmt, "--output", str(path), *extra]
    ))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_model_gives_pytorch_s_detections(fmt, checkpoint, tmp_path, capsys):
    assert _export(checkpoint, tmp_path / f"model.{fmt}", fmt) is True
    out = capsys.readouterr().out
    assert "synthetic image (64x85" in out and "matches PyTorch" in out
    detections = int(out.split(" detections)")[0].rsplit(", ", 1)[1])
    assert detections > 0  # the check compared real detections, not two empty lists
    assert (tmp_path / f"model.{fmt}").stat().st_size > 1_000_000


@pytest.mark.slow
def test_a_difference_beyond_the_tolerance_fails_the_check(checkpoint, tmp_path, monkeypatch, capsys):
    loaded = export.torchscript_runner

    def shifted_runner(path):
        run = loaded(path)
        return lambda image: {**run(image), "boxes": run(image)["boxes"] + 2.0}  # 2 pixels off

    monkeypatch.setattr(export, "torchscript_runner", shifted_runner)
    assert _export(checkpoint, tmp_path / "model.pt", "torchscript") is False
    out = capsys.readouterr().out
    assert "boxes 2, " in out and "DIFFERS from PyTorch" in out


def test_onnx_without_onnxruntime_is_one_line(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    with pytest.raises(export.utils.UserError, match="pip install -r requirements-export.txt"):
        _export(checkpoint, tmp_path / "model.onnx", "onnx")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
def test_the_tutorials_backbone_exports_and_checks(tmp_path, capsys):
    # its box head narrowed (--box-head 128): 8 M parameters, not 64 M (a file and a graph of 260 MB each)
    best = untrained_checkpoint(tmp_path / "best.pth", "maskrcnn_mobilenet_v2", ["background", "a"], min_size=64,
                                box_head=128)  # fmt: skip
    assert _export(best, tmp_path / "model.onnx", "onnx") is True
    assert "matches PyTorch" in capsys.readouterr().out


@pytest.mark.slow
def test_keypoint_rcnn_exports_its_keypoints_and_checks(tmp_path, capsys):
    names = ["background", "a"]
    best = untrained_checkpoint(
        tmp_path / "best.pth",
        "keypointrcnn_resnet50_fpn",
        names,
        num_keypoints=3,
        min_size=64,
        box_head=128,
        keypoint_head=(2, 128),
    )  # what is tested is that keypoints are exported; narrow heads: 30 M parameters, not 59
    assert _export(best, tmp_path / "model.onnx", "onnx") is True
    out = capsys.readouterr().out
    assert "keypoints " in out and "keypoints_scores " in out and "matches PyTorch" in out
    assert int(out.split(" detections)")[0].rsplit(", ", 1)[1]) > 0
