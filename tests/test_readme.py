"""The README's Route 3 example must keep working: it is run here on LabelMe files made by the test."""

import json
import re

import numpy as np
import torch
from conftest import ROOT
from PIL import Image
from torchvision import tv_tensors

from transforms import get_transform


def _route_3_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Route 3") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_labelme_example_meets_the_target_contract(tmp_path):
    namespace: dict = {}
    exec(compile(_route_3_example(), "README.md", "exec"), namespace)
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
    assert target["masks"].shape == (2, 60, 80) and target["masks"].dtype == torch.uint8
    _, transformed = namespace["LabelMeDataset"](tmp_path, ["cat", "dog"], get_transform(train=True))[0]
    assert transformed["masks"].shape == (2, 60, 80)
