import json
import random
import re

import numpy as np
import pytest
import torch
from conftest import compact_state
from test_model import _summary

import train
import utils
from checkpoint import (
    MODEL_SETTINGS,
    OPTIMIZER_SETTINGS,
    OVERRIDABLE,
    SPLIT_SETTINGS,
    get_rng_state,
    model_config,
    model_from_checkpoint,
    resume_settings,
    set_rng_state,
    stored_split,
)
from model import get_model
from utils import UserError

STORED = {
    **vars(train.get_args_parser().parse_args([])),
    "data_path": "CVPPP",
    "dataset": "folder",
    "image_suffix": "_rgb",
    "mask_suffix": "_label",
    "weights": "none",
    "lr": 0.001,
    "test_size": 16,
    "min_size": 320,
    "max_size": 640,
}
# A value other than the run's for each setting that a resume refuses without --allow-changes.
OTHER_VALUES = {
    "data_path": "elsewhere", "dataset": "pennfudan", "mask_path": "masks", "image_suffix": "", "mask_suffix": "_mask",
    "ann_file": "instances.json", "min_size": 800, "max_size": 1333, "augmentation": "none", "batch_size": 8,
    "momentum": 0.8, "weight_decay": 1e-4, "lr_step_size": 5, "lr_gamma": 0.5, "aspect_ratio_group_factor": -1,
    "sync_bn": True, "lr_steps": [8, 11], "use_copypaste": True, "keypoint_flip_map": "left:right",
    "keypoint_sigmas": [0.05], "mosaic": 0.5, "close_mosaic": 3, "train_tile": 512, "scale_range": [0.8, 1.2],
}  # fmt: skip
NEVER = {
    "seed": 1, "test_size": 50, "val_size": 2, "val_data_path": "val", "val_ann_file": "val.json",
    "model": "fasterrcnn_resnet50_fpn", "weights": "DEFAULT", "weights_backbone": "DEFAULT",
    "trainable_backbone_layers": 5, "mask_head": [2, 128], "fpn_channels": 128, "anchor_sizes": [16, 32, 64, 128, 256],
    "box_batch_size_per_image": 128, "box_head": 256, "rpn_head": 256, "keypoint_head": [2, 128],
    "rpn_pre_nms_top_n_train": 500, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 500, "box_detections_per_img": 50,
    "opt": "adamw", "lr_scheduler": "cosineannealinglr", "norm_weight_decay": 0.0, "model_ema": True,
    "model_ema_decay": 0.9,
}  # fmt: skip


def resume(given, test_only=False, allow_changes=False):
    return resume_settings(STORED, given, "out/checkpoint.pth", test_only, allow_changes)


def test_every_setting_is_in_one_group():
    settings = set(STORED) - {"resume", "test_only", "allow_changes", "download", "overwrite"}
    settings -= {"recipe_settings"}  # what --recipe set: no flag of its own
    assert settings == set(OVERRIDABLE) | set(OTHER_VALUES) | set(NEVER) | {"recipe"}
    assert set(NEVER) == set(SPLIT_SETTINGS) | set(MODEL_SETTINGS) | set(OPTIMIZER_SETTINGS)


def test_a_resume_keeps_its_recipe_even_with_allow_changes():
    stored = {**STORED, "recipe": "cpu-12min"}
    assert resume_settings(stored, {"recipe": "cpu-12min"}, "out/checkpoint.pth", False, False)[0] == stored
    with pytest.raises(UserError, match="--recipe cpu-43min: the run has cpu-12min .* a resume keeps the settings"):
        resume_settings(stored, {"recipe": "cpu-43min"}, "out/checkpoint.pth", False, True)


def test_no_flag_gives_the_run_as_it_was():
    assert resume({}) == (STORED, [])
    same = {"data_path": "./CVPPP", "lr": 0.001, "min_size": 320, "resume": "out/checkpoint.pth"}
    assert resume(same) == (STORED, [])  # the same values, a path spelled otherwise, and the command flags


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_a_flag_that_changes_the_data_sizes_or_recipe_is_refused_by_name(name):
    value = OTHER_VALUES[name]
    option = "--" + name.replace("_", "-")
    with pytest.raises(UserError) as error:
        resume({name: value})
    message = str(error.value)
    assert message.startswith(f"{option} {value}: the run has {STORED[name]} (out/checkpoint.pth)")
    assert "--allow-changes" in message and "\n" not in message
    settings, changes = resume({name: value}, allow_changes=True)
    assert settings[name] == value and changes == [{"flag": option, "from": STORED[name], "to": value}]


@pytest.mark.parametrize("name", sorted(NEVER))
def test_the_split_and_the_model_never_change(name):
    option = "--" + name.replace("_", "-")
    for allow_changes in (False, True):
        expected = re.escape(f"{option} {NEVER[name]}: the run has {STORED[name]} ")
        with pytest.raises(UserError, match=f"^{expected}") as error:
            resume({name: NEVER[name]}, allow_changes=allow_changes)
        assert "without --resume" in str(error.value)  # and how to start a new run instead


def test_safe_flags_override_and_say_so_once(capsys):
    given = {"epochs": 30, "lr": 0.0005, "workers": 0, "device": "cpu", "print_freq": 1, "output_dir": "other"}
    settings, changes = resume(given)
    assert {name: settings[name] for name in given} == given
    assert [change["flag"] for change in changes] == ["--epochs", "--lr", "--workers", "--print-freq", "--output-dir"]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "--epochs 30 replaces the run's 10",
        "--lr 0.0005 replaces the run's 0.001",
        f"--workers 0 replaces the run's {STORED['workers']}",
        "--print-freq 1 replaces the run's 10",
        "--output-dir other replaces the run's output",
    ]  # --device cpu is the run's already (no GPU here)


def test_test_only_ignores_what_only_training_uses(capsys):
    settings, changes = resume({"epochs": 30, "lr": 0.1}, test_only=True)
    assert settings == STORED and changes == []
    assert "--epochs 30: ignored with --test-only" in capsys.readouterr().out


def test_the_split_comes_from_the_checkpoint_else_from_split_json(tmp_path):
    split = {"train": ["a.png"], "test": ["b.png"], "skipped": []}
    assert stored_split({"split": split}, tmp_path / "checkpoint.pth") == split
    assert stored_split({}, tmp_path / "checkpoint.pth") is None
    (tmp_path / "split.json").write_text(json.dumps(split))
    assert stored_split({}, tmp_path / "checkpoint.pth") == split
    (tmp_path / "split.json").write_text("{")
    with pytest.raises(UserError, match="split.json: not valid json"):
        stored_split({}, tmp_path / "checkpoint.pth")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("maskrcnn_resnet50_fpn", "coco"),
        ("maskrcnn_mobilenet_v3_large_fpn", "none"),
        ("fasterrcnn_resnet50_fpn_v2", "coco"),
    ],
)
def test_a_checkpoint_rebuilds_its_model_without_any_flag(name, weights, tmp_path, weights_file):
    if weights == "coco":  # fine-tuned: FrozenBatchNorm (eps 0 for the v1 weights), new heads
        weights = str(weights_file("coco", name))
    torch.manual_seed(1)
    layers = 2 if name.endswith("_v2") else None  # v2 keeps BatchNorm: only the stored list says what was frozen
    trained = get_model(name, 3, weights, trainable_backbone_layers=layers, min_size=96, max_size=112).eval()
    config = {**model_config(trained, name), "class_names": ["background", "a", "b"]}
    torch.save({"model": compact_state(trained), "model_config": config}, tmp_path / "best.pth")  # 5 MB, not 170

    rebuilt, loaded_config = model_from_checkpoint(tmp_path / "best.pth")
    rebuilt.eval()
    assert loaded_config == config
    assert _summary(rebuilt) == _summary(trained)  # the same modules, FrozenBatchNorm, and trainable parameters
    image = torch.rand(3, 100, 120)
    with torch.inference_mode():
        expected, got = trained([image])[0], rebuilt([image])[0]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert len(expected["boxes"]) > 0  # real detections compared, not two empty lists


def test_a_file_without_model_config_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(UserError, match="plain.pth: not a checkpoint of train.py"):
        model_from_checkpoint(tmp_path / "plain.pth")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    utils.seed_everything(3)
    torch.rand(5), np.random.rand(5), random.random()
    utils.save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = (torch.rand(5), np.random.rand(5), random.random(), np.random.randn())
    utils.seed_everything(99)
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    again = (torch.rand(5), np.random.rand(5), random.random(), np.random.randn())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]
