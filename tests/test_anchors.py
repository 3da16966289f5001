"""anchors.py: --anchor-sizes on the R-CNNs, typed or fitted to the training boxes, kept in checkpoints."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import LAYOUT
from test_train import FAST, run_cli_here

from anchors import DEFAULT_SIZES, anchor_sizes_of, box_sides, fitted_sizes
from checkpoint import model_config, model_from_checkpoint, model_from_config
from dataset import PennFudanDataset
from model import get_model
from utils import UserError

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)

SMALL = {"min_size": 64, "max_size": 96}


@pytest.mark.parametrize(
    ("name", "levels"),
    [("fasterrcnn_resnet18_fpn", [[8], [16], [24], [48], [96]]),  # one size per pyramid level
     ("fasterrcnn_mobilenet_v3_large_fpn", [[8, 16, 24, 48, 96]] * 3)],  # the five sizes on each of its maps
)  # fmt: skip
def test_five_sizes_take_torchvision_s_places_and_a_checkpoint_rebuilds_them(name, levels):
    sizes = [8, 16, 24, 48, 96]
    model = get_model(name, 3, weights="none", anchor_sizes=sizes, **SMALL)
    generator = model.rpn.anchor_generator
    assert [list(level) for level in generator.sizes] == levels
    assert generator.num_anchors_per_location() == [len(levels[0]) * 3] * len(levels)  # the RPN head still fits
    config = model_config(model, name)
    assert config["anchor_sizes"] == sizes
    rebuilt = model_from_config(json.loads(json.dumps(config)))  # plain types, as a checkpoint holds them
    rebuilt.load_state_dict(model.state_dict())
    assert anchor_sizes_of(rebuilt) == sizes
    model.eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 64, 80)])
        anchors = model.rpn.anchor_generator(images, list(model.backbone(images.tensors).values()))
    area = (anchors[0][:, 2] - anchors[0][:, 0]) * (anchors[0][:, 3] - anchors[0][:, 1])
    assert math.isclose(area.sqrt().min().item(), 8, rel_tol=0.02)  # the smallest anchors now 8 x 8, not 32 x 32
    default = get_model(name, 3, weights="none", **SMALL)
    assert anchor_sizes_of(default) is None and model_config(default, name)["anchor_sizes"] is None


def test_anchor_sizes_are_refused_where_they_cannot_apply():
    with pytest.raises(UserError, match="--anchor-sizes: an R-CNN setting .* retinanet_resnet50_fpn has no RPN"):
        get_model("retinanet_resnet50_fpn", 3, weights="none", anchor_sizes=[8, 16, 32, 64, 128], **SMALL)
    for wrong in ([8, 16, 32, 64], [8, 8, 16, 32, 64], [64, 32, 16, 8, 4], [0, 16, 32, 64, 128]):
        with pytest.raises(UserError, match="give five rising sizes in pixels"):
            get_model("fasterrcnn_resnet18_fpn", 3, weights="none", anchor_sizes=wrong, **SMALL)


def test_auto_centres_five_sizes_a_factor_two_apart_on_the_boxes():
    sides = np.geomspace(10, 160, 1000)  # boxes from 10 to 160 pixels, evenly in scale
    low, high = np.percentile(sides, [5, 95])
    middle = math.sqrt(low * high)  # 40
    assert fitted_sizes(sides) == [round(middle / 4), round(middle / 2), round(middle), round(2 * middle),
                                   round(4 * middle)]  # fmt: skip
    assert fitted_sizes(np.full(50, 400.0)) == [100, 200, 400, 800, 1600]  # large objects: large anchors
    assert fitted_sizes(np.full(50, 2.0)) == [4, 8, 16, 32, 64]  # at least 4 pixels, still rising
    assert fitted_sizes(np.zeros(0)) == list(DEFAULT_SIZES)  # no boxes: torchvision's


def test_box_sides_are_measured_at_the_size_the_model_sees(pennfudan):
    data = PennFudanDataset(pennfudan)
    sides = box_sides(data, [0, 2, 5], min_size=48, max_size=1000)
    expected = []
    for index in (0, 2, 5):  # image 2 has no instance
        height, width, instances = LAYOUT[index]
        scale = 48 / min(height, width)
        expected += [math.sqrt((y2 - y1) * (x2 - x1)) * scale for _, y1, y2, x1, x2 in instances]
    np.testing.assert_allclose(sides, expected, rtol=1e-5)
    capped = box_sides(data, [0], min_size=96, max_size=100)  # 96 x 128 at 96 would pass 100: the longer side caps
    np.testing.assert_allclose(capped, np.asarray(expected[:2]) / 48 * 96 * (100 / 128), rtol=1e-5)


@pytest.mark.slow
def test_auto_is_chosen_once_kept_by_the_run_and_its_checkpoint(pennfudan, tmp_path, capsys):
    out = tmp_path / "run"
    refused = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--anchor-sizes", "auto", "16", "--output-dir",
                           out)  # fmt: skip
    assert refused.returncode == 2 and "--anchor-sizes: give auto alone" in refused.stderr
    result = run_cli_here(
        capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--anchor-sizes", "auto", "--output-dir", out
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("--anchor-sizes auto: "))
    chosen = [int(size) for size in line.split(": ")[1].split(" (")[0].split()]
    assert chosen != list(DEFAULT_SIZES) and chosen == sorted(chosen)
    assert json.loads((out / "args.json").read_text())["anchor_sizes"] == chosen
    model, _ = model_from_checkpoint(out / "best.pth")
    assert anchor_sizes_of(model) == chosen
    again = run_cli_here(capsys, "--resume", out / "best.pth", "--test-only", "--output-dir", tmp_path / "eval")
    assert again.returncode == 0, again.stderr
    assert "--anchor-sizes auto" not in again.stdout  # chosen once, by the run
