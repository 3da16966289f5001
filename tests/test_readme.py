"""The README's Route 4 example must keep working: it is run here on LabelMe files made by the test."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, run_here
from PIL import Image
from torchvision import tv_tensors

import train
from masks import instance_masks
from transforms import get_transform


def _route_4_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Route 4") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_labelme_example_meets_the_target_contract(tmp_path):
    namespace: dict = {}
    exec(compile(_route_4_example(), "README.md", "exec"), namespace)
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    shapes = [
        {"label": "dog", "points": [[15, 15], [20, 15], [20, 20]]},  # hidden under the cat drawn next
        {"label": "cat", "points": [[10, 10], [40, 10], [40, 30], [10, 30]]},
        {"label": "dog", "points": [[50, 20], [70, 20], [60, 50]]},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"shapes": shapes}))
    dataset = namespace["LabelMeDataset"](tmp_path, ["cat", "dog"])
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 60, 80)
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[10, 10, 41, 31], [50, 20, 71, 51]]
    assert target["instance_map"].shape == (1, 60, 80) and target["instance_map"].dtype == torch.int32
    assert instance_masks(target).shape == (2, 60, 80)
    _, transformed = namespace["LabelMeDataset"](tmp_path, ["cat", "dog"], get_transform(train=True))[0]
    assert transformed["masks"].shape == (2, 60, 80)


@pytest.mark.slow
def test_the_resume_and_test_only_commands_work_as_written(pennfudan, tmp_path, capsys, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    commands = [
        line.split("#")[0].split() for line in readme.splitlines() if line.startswith("python train.py --resume")
    ]
    assert [command[2:4] for command in commands] == [
        ["--resume", "output/checkpoint.pth"],
        ["--resume", "output/best.pth"],
    ]
    # the run the commands resume: a narrowed model (the README's commands are what is tested; 3 M parameters, not 19)
    first = ["--data-path", pennfudan, "--model", "maskrcnn_mobilenet_v3_large_fpn", "--weights", "none", "--lr", 0.001,
             "--min-size", 64, "--max-size", 128, "--test-size", 3, "-j", 0, "--epochs", 1, "--fpn-channels", 32,
             "--mask-head", 1, 32, "--box-head", 128]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # output/ is in the working folder
    for command in [["python", "train.py", *map(str, first)], *commands]:
        arguments = command[2:]
        if "--epochs" in arguments:  # the README continues to epoch 20; 2 shows the same here
            arguments[arguments.index("--epochs") + 1] = "2"
        result = run_here(train.cli, capsys, *arguments)  # train.py's own entry, in this process
        assert result.returncode == 0, result.stderr
    assert "wrote output/eval.json" in result.stdout
    # the first screen's predict command, on a photos/ folder of the test's, as a user runs it: a process of its own
    (predict_line,) = [line for line in readme.splitlines() if line.startswith("python predict.py --checkpoint output")]
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(tmp_path / "photos" / "grey.jpg")
    predicted = subprocess.run([sys.executable, str(ROOT / "predict.py"), *predict_line.split("#")[0].split()[2:]],
                               cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    assert {"predictions.json", "grey.png"} <= {path.name for path in (tmp_path / "predictions").iterdir()}
    assert [json.loads(line)["epoch"] for line in (tmp_path / "output/metrics.jsonl").read_text().splitlines()] == [
        0,
        1,
    ]
