"""split.py: a seeded split, and --val-size through train.py (the other run-keeping helpers: tests/test_train.py)."""

import json

import pytest
import torch
from conftest import saves_in_memory, stand_in_training, write_voc
from test_train import FAST, fast_box_model, run_cli_here, run_main

import train
from split import split_indices, split_off_validation
from utils import UserError

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)


def test_split_is_seeded_and_disjoint():
    train_ids, test = split_indices(20, 5, seed=0)
    assert (train_ids, test) == split_indices(20, 5, seed=0)
    assert split_indices(20, 5, seed=1) != (train_ids, test)
    assert len(test) == 5 and sorted(train_ids + test) == list(range(20))
    with pytest.raises(UserError, match="--test-size 20"):
        split_indices(20, 20, seed=0)
    kept, val = split_off_validation([3, 5, 8, 9, 12], 2, seed=0)
    assert len(val) == 2 and sorted(kept + val) == [3, 5, 8, 9, 12]
    with pytest.raises(UserError, match="--val-size 5: must be at least 1 and below the 5 training images"):
        split_off_validation([3, 5, 8, 9, 12], 5, seed=0)


def _split(out):
    return json.loads((out / "split.json").read_text())


@pytest.mark.slow
def test_validation_images_are_apart_from_train_and_test_and_survive_a_resume(pennfudan, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--val-size", 2, "--epochs", 1, "--output-dir", out)
    assert result.returncode == 0, result.stderr
    split = _split(out)
    assert list(split) == ["train", "val", "test", "skipped"] and len(split["val"]) == 2 and len(split["test"]) == 3
    assert not set(split["val"]) & set(split["train"]) and not set(split["val"]) & set(split["test"])
    assert len(split["train"]) + 2 + 3 == 10
    record = json.loads((out / "metrics.jsonl").read_text())
    assert set(record["val"]) == {"bbox", "segm"} and len(record["val"]["segm"]) == 12
    assert "Best epoch 0, chosen on the validation images" in result.stdout

    resumed = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 2)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        _split(out) == split and torch.load(out / "checkpoint.pth", weights_only=True)["split"]["val"] == split["val"]
    )
    changed = run_cli_here(capsys, "--resume", out / "checkpoint.pth", "--epochs", 3, "--val-size", 3)
    assert changed.returncode == 2 and "--val-size 3: the run has 2" in changed.stderr


def _stand_in_evaluation(monkeypatch, scores):
    """evaluate() replaced: call k gives mask AP scores[k] (each epoch scores validation first, then test); the
    training steps are stand-ins too (what is learned is not looked at)."""
    stand_in_training(monkeypatch)
    calls = []

    def evaluate(model, loader, *args, **kwargs):
        ap = scores[len(calls)]
        calls.append(len(loader.dataset))
        return {"bbox": [ap] + [0.0] * 11, "segm": [ap] + [0.0] * 11}

    monkeypatch.setattr(train, "evaluate", evaluate)
    return calls


@pytest.mark.slow
def test_best_pth_follows_validation_ap_not_test_ap(pennfudan, tmp_path, monkeypatch, capsys):
    # validation ranks epoch 0 first (0.5 > 0.2); the test images would rank epoch 1 first (0.3 > 0.1)
    calls = _stand_in_evaluation(monkeypatch, [0.5, 0.1, 0.2, 0.3])
    out = tmp_path / "out"
    run_main("--data-path", pennfudan, *FAST, "--val-size", 2, "--epochs", 2, "--output-dir", out)
    assert calls == [2, 3, 2, 3]  # validation (2 images), then test (3), every epoch
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 0
    printed = capsys.readouterr().out
    assert "Best epoch 0, chosen on the validation images (mask AP 0.500 there): mask AP 0.100 on the test split" in (
        printed
    )
    assert "Last epoch 1: mask AP 0.300 on the test split" in printed

    # without --val-size the test images choose, and the summary says that its figure is not held out
    _stand_in_evaluation(monkeypatch, [0.1, 0.3])
    run_main("--data-path", pennfudan, *FAST, "--epochs", 2, "--output-dir", tmp_path / "plain")
    assert torch.load(tmp_path / "plain" / "best.pth", weights_only=True)["epoch"] == 1
    assert "chosen on the test images themselves, so its test AP is not held out" in capsys.readouterr().out


def test_a_fixed_validation_set_stays_the_test_role_and_val_size_splits_the_training_images(tmp_path, monkeypatch):
    root = write_voc(tmp_path / "voc")  # ImageSets/Main/val.txt: images 1, 4 and 7
    _stand_in_evaluation(monkeypatch, [0.5, 0.1])
    saves_in_memory(monkeypatch)  # no file of it is read
    out = tmp_path / "out"
    run_main("--data-path", root, *fast_box_model(), "--val-size", 2, "--epochs", 1, "--output-dir", out)
    split = _split(out)
    assert sorted(split["test"]) == ["img1.jpg", "img4.jpg", "img7.jpg"] and len(split["val"]) == 2
    assert not set(split["val"]) & set(split["test"]) and not set(split["val"]) & set(split["train"])
