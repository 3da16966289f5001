import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import LAYOUT, instance_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import dataset as dataset_module
import utils
from dataset import PennFudanDataset
from engine import TrainingDiverged, amp_pays, evaluate, train_one_epoch
from model import get_model
from transforms import get_transform
from utils import collate_fn


class StandIn(torch.nn.Module):
    """Returns prepared outputs, one per image, in the order the loader yields images."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = iter(outputs)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images, targets=None):
        return [next(self.outputs) for _ in images]


def _perturbed_predictions(seed=0, with_masks=True):
    """Ground truth from the layout, jittered, with made-up scores and a false positive per image."""
    rng = np.random.default_rng(seed)
    outputs = []
    for height, width, instances in LAYOUT:
        mask = instance_mask(height, width, instances)
        values = [v for v, *_ in instances]
        masks = [(mask == v) for v in values]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes.append([0, 0, width / 3, height / 3])  # a false positive
        masks.append(np.zeros((height, width), bool))
        masks[-1][: height // 3, : width // 3] = True
        boxes = np.array(boxes, np.float32) + rng.normal(0, 3, (len(boxes), 4)).astype(np.float32)
        shifted = [np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) for m in masks]
        output = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "scores": torch.from_numpy(rng.uniform(0.3, 1.0, len(boxes)).astype(np.float32)),
        }
        if with_masks:
            probabilities = np.stack(shifted)[:, None] * rng.uniform(0.51, 1.0, (len(boxes), 1, 1, 1))
            output["masks"] = torch.from_numpy(probabilities.astype(np.float32))
        outputs.append(output)
    return outputs


def _plain_pycocotools(outputs, tmp_path):
    """The same evaluation, written the way pycocotools' own examples do it, from the layout."""
    images, annotations, boxes, segms = [], [], [], []
    for image_id, (height, width, instances) in enumerate(LAYOUT):
        images.append({"id": image_id, "height": height, "width": width})
        mask = instance_mask(height, width, instances)
        for value, *_ in instances:
            rle = mask_utils.encode(np.asfortranarray((mask == value).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        output = outputs[image_id]
        for k in range(len(output["scores"])):
            x1, y1, x2, y2 = output["boxes"][k].tolist()
            score = output["scores"][k].item()
            boxes.append({"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            if "masks" in output:
                binary = (output["masks"][k, 0] > 0.5).numpy().astype(np.uint8)
                rle = mask_utils.encode(np.asfortranarray(binary))
                segms.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": score})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    ground_truth = COCO(str(path))
    stats = {}
    for iou_type, results in (("bbox", boxes), ("segm", segms)):
        if results:
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = evaluator.stats.tolist()
    return stats


def _loader(root):
    data = PennFudanDataset(root, get_transform(train=False))
    return torch.utils.data.DataLoader(data, batch_size=1, collate_fn=collate_fn)


@pytest.mark.parametrize("with_masks", [True, False])
def test_evaluate_equals_plain_pycocotools(pennfudan, tmp_path, with_masks):
    outputs = _perturbed_predictions(with_masks=with_masks)
    ours = evaluate(StandIn(outputs), _loader(pennfudan), torch.device("cpu"))
    plain = _plain_pycocotools(outputs, tmp_path)
    assert set(ours) == set(plain) == ({"bbox", "segm"} if with_masks else {"bbox"})
    for iou_type in plain:
        assert len(ours[iou_type]) == 12
        assert ours[iou_type] == pytest.approx(plain[iou_type], abs=1e-12)
        assert 0.2 < ours[iou_type][0] < 0.95  # far from 0, and the perturbation shows


def test_evaluate_decodes_each_test_image_once(pennfudan, monkeypatch):
    calls = []
    real = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda path: calls.append(path) or real(path))
    evaluate(StandIn(_perturbed_predictions()), _loader(pennfudan), torch.device("cpu"))
    assert len(calls) == len(LAYOUT) == len(set(calls))


def test_evaluate_without_detections(pennfudan):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    empty["masks"] = torch.zeros(0, 1, 96, 128)
    stats = evaluate(StandIn([dict(empty) for _ in LAYOUT]), _loader(pennfudan), torch.device("cpu"))
    assert stats["bbox"][0] == 0 and stats["segm"][0] == 0


def _train_loader(root, indices, batch_size=2):
    data = PennFudanDataset(root, get_transform(train=True))
    subset = torch.utils.data.Subset(data, indices)
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate_fn)


def test_train_one_epoch_learns_and_accepts_images_without_instances(pennfudan):
    torch.manual_seed(0)
    model = get_model("maskrcnn_mobilenet_v3_large_fpn", 2, weights="none", min_size=64, max_size=128)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    loader = _train_loader(pennfudan, [2, 0, 1, 3])  # image 2 has no instance
    losses = train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=0, print_freq=1)
    names = {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == names and all(math.isfinite(v) for v in losses.values())
    parts = sum(v for k, v in losses.items() if k != "loss")
    assert losses["loss"] == pytest.approx(parts)


def test_amp_on_cpu_uses_bfloat16(pennfudan):
    torch.manual_seed(0)
    model = get_model("fasterrcnn_mobilenet_v3_large_fpn", 2, weights="none", min_size=64, max_size=128)
    seen = []
    model.roi_heads.box_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = train_one_epoch(model, optimizer, _train_loader(pennfudan, [0, 1]), torch.device("cpu"), 1, 10, scaler)
    assert seen == [torch.bfloat16] and math.isfinite(losses["loss"])


class LossStandIn(torch.nn.Module):
    """Training-mode stand-in: returns the given losses at each step and records the learning rate."""

    def __init__(self, losses_per_step):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.losses = iter(losses_per_step)
        self.lrs = []
        self.optimizer = None

    def forward(self, images, targets=None):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        return {name: self.weight * value for name, value in next(self.losses).items()}


def test_warmup_rises_to_the_learning_rate_in_epoch_zero_only(pennfudan):
    steps = [{"loss_classifier": 1.0}] * 10
    model = LossStandIn(steps)
    model.optimizer = optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = _train_loader(pennfudan, list(range(10)), batch_size=2)  # 5 iterations
    train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=0)
    assert model.lrs[0] == pytest.approx(0.01 / 1000)
    assert model.lrs == sorted(model.lrs) and model.lrs[-1] == pytest.approx(0.01)
    train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=1)
    assert model.lrs[5:] == [pytest.approx(0.01)] * 5


def test_non_finite_loss_names_the_iteration_and_suggests_lower_lr(pennfudan):
    steps = [{"loss_classifier": 0.5, "loss_box_reg": 0.1}, {"loss_classifier": float("nan"), "loss_box_reg": 0.2}]
    model = LossStandIn(steps)
    model.optimizer = optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(
        TrainingDiverged, match=r"epoch 3 iteration 1: the loss is nan .*loss_classifier nan.*lower --lr"
    ):
        train_one_epoch(model, optimizer, _train_loader(pennfudan, [0, 1, 3, 4]), torch.device("cpu"), epoch=3)
    assert model.weight.item() != 1.0  # the good first step was taken
    assert math.isfinite(model.weight.item())  # the bad one was not


def test_amp_pays_on_a_gpu_and_on_a_cpu_with_bfloat16_instructions(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")  # an AMD EPYC
    assert utils.cpu_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")  # an Intel Xeon without
    assert not utils.cpu_bfloat16(cpuinfo)
    assert not utils.cpu_bfloat16(tmp_path / "no-such-file")  # not Linux: nothing says so
    monkeypatch.setattr(utils, "cpu_bfloat16", lambda: False)
    assert not amp_pays(torch.device("cpu")) and amp_pays(torch.device("cuda"))
    monkeypatch.setattr(utils, "cpu_bfloat16", lambda: True)
    assert amp_pays(torch.device("cpu"))
