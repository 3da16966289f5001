import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tiny_model
import torch
from conftest import (
    LAYOUT,
    ROOT,
    needs_keypoint_transforms,
    pennfudan_zip,
    run_here,
    saves_in_memory,
    slow_where,
    stand_in_training,
    watch_views,
    write_coco,
    write_keypoint_coco,
)
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import dataset
import tiles
import train
from checkpoint import model_from_checkpoint

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)

# Small and fast, where the model is not what a test is about: the tests' own Mask R-CNN (tests/tiny_model.py, 71 k
# parameters: checkpoint.pth and best.pth 0.9 MB an epoch, where the MobileNetV3 one narrowed as far was 39 MB), from
# scratch on ~100-pixel images. The modules that train it take the `tiny_models` fixture (conftest.py).
_FAST_RUN = [
    "--weights", "none", "--lr", "0.001", "--min-size", "64", "--max-size", "128", "--test-size", "3", "-j", "0",
    "--print-freq", "5",
]  # fmt: skip
FAST = ["--model", "maskrcnn_tiny_fpn", "--mask-head", "1", "32", "--box-head", "32", *_FAST_RUN]


def fast_box_model(name: str = "fasterrcnn_tiny_fpn") -> list[str]:
    """FAST's run for a box model: no mask head."""
    return ["--model", name, "--box-head", "32", *_FAST_RUN]


def train_py(args) -> list[str]:
    """`python train.py ARGS`'s script: through tests/tiny_model.py where the run (or the checkpoint it resumes) may
    be of the tests' own model, which train.py does not know."""
    if tiny_model.names_in(args) or "--resume" in map(str, args):
        return [str(ROOT / "tests" / "tiny_model.py"), "train.py"]
    return ["train.py"]


def run_cli(*args, cwd=ROOT):
    command = [sys.executable, *train_py(args), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def run_lean(*args):
    """run_cli's run, saving only its last epoch's checkpoint.pth (tests/lean_train.py)."""
    command = [sys.executable, str(ROOT / "tests" / "lean_train.py"), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def run_cli_here(capsys, *args):
    """train.cli in this process, with run_cli's result (conftest.run_here)."""
    return run_here(train.cli, capsys, *args)


def run_torchrun(num_processes, *args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as torchrun sets it for 2: results then match 1 process bit for bit
    return subprocess.run(
        [*command, *train_py(args), *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env
    )


def run_main(*args):
    return train.main(*train.parse_args([*map(str, args)]))


@pytest.mark.slow
def test_two_epochs_end_to_end(pennfudan, tmp_path):
    out = tmp_path / "output"
    no_grouping = ["--aspect-ratio-group-factor", -1]
    result = run_cli("--data-path", pennfudan, "--epochs", 2, "--output-dir", out, *FAST, *no_grouping, "--tensorboard")
    assert result.returncode == 0, result.stderr
    assert "Epoch: [1]" in result.stdout and "IoU metric: segm" in result.stdout
    written = {p.name for p in out.iterdir()}
    assert written == {
        ".lock",  # the run held the folder (run_folder.py); the lock file stays, the lock ended with the run
        "checkpoint.pth",
        "best.pth",
        "metrics.jsonl",
        "split.json",
        "args.json",
        "curves.png",
        "tensorboard",
        "first_batch.png",
        "best_predictions.png",
        "confusion_matrix.png",
        "pr_curves.png",
        "errors.json",
    }
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    errors = json.loads((out / "errors.json").read_text())  # of best.pth's epoch: one class and the background
    assert errors["epoch"] == torch.load(out / "best.pth", weights_only=True)["epoch"]
    assert np.array(errors["confusion_matrix"]["counts"]).shape == (2, 2)
    assert set(errors["pr_curves"]) == {"bbox", "segm"}
    first_batch = np.asarray(Image.open(out / "first_batch.png"))
    assert first_batch.shape[0] == 320 and first_batch.shape[1] > 2 * 320  # a batch of 2, side by side
    predictions = np.asarray(Image.open(out / "best_predictions.png"))
    assert predictions.shape[0] == 3 * 320 + 2 * 4  # one row per test image (3): ground truth | detections

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    losses = {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    for record in records:
        assert losses | {"epoch", "lr", "bbox", "segm", "train_seconds", "eval_seconds"} == set(record)
        assert len(record["bbox"]) == len(record["segm"]) == 12
        assert record["train_seconds"] > 0 and record["eval_seconds"] > 0

    split = json.loads((out / "split.json").read_text())
    assert len(split["test"]) == 3 and len(split["train"]) == len(LAYOUT) - 3
    assert sorted(split["train"] + split["test"]) == sorted(p.name for p in (pennfudan / "PNGImages").iterdir())
    assert json.loads((out / "args.json").read_text())["epochs"] == 2

    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["args"]["model"] == "maskrcnn_tiny_fpn"
    assert checkpoint["model_config"]["class_names"] == ["background", "person"]
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["stats"]["segm"][0] == max(r["segm"][0] for r in records)
    assert "optimizer" not in best


# (each model's own resume: tests/test_box_models.py; the tutorial's backbone trains in the test below)
RECIPES = {
    "tutorial": ["--lr-step-size", 2],
    # (a cosine schedule ends at --epochs, so a run stopped at 2 of 3 cannot be run as "--epochs 2": see test_recipe)
    # with --model-ema: "model" is the average, and the raw weights it resumes from are "model_raw"
    "adamw-multistep-lsj-copypaste-ema": ["--opt", "adamw", "--lr-scheduler", "multisteplr", "--lr-steps", 1, 2,
                                          "--norm-weight-decay", 0, "--augmentation", "lsj", "--use-copypaste",
                                          "--model-ema", "--model-ema-decay", 0.9],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_gives_the_same_weights_as_a_straight_run(recipe, pennfudan, tmp_path):
    # Separate processes, as a user runs them: MKL_CBWR must take effect before MKL's first call. Each run writes
    # its last checkpoint.pth only, which is all that is compared (lean_train.py; an epoch's save is 1-2 MB here).
    common = ["--data-path", pennfudan, *FAST, *RECIPES[recipe], "--use-deterministic-algorithms", "-j", 1]
    for args in (
        [*common, "--epochs", 3, "--output-dir", tmp_path / "straight"],
        [*common, "--epochs", 2, "--output-dir", tmp_path / "resumed"],
        ["--resume", tmp_path / "resumed/checkpoint.pth", "--epochs", 3],  # nothing else: the run's flags are stored
    ):
        result = run_lean(*args)
        assert result.returncode == 0, result.stderr
    assert "--epochs 3 replaces the run's 2" in result.stdout and result.stdout.count("replaces the run's") == 1
    assert "Training maskrcnn_tiny_fpn on 7 images, testing on 3" in result.stdout
    straight = torch.load(tmp_path / "straight/checkpoint.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoint.pth", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2  # the lr's step (2, or the milestone 2) after the resume
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    if "--model-ema" in RECIPES[recipe]:
        assert straight["ema_updates"] == resumed["ema_updates"] == 3 * 4  # 7 images at batch 2: 4 steps an epoch
        for key, value in straight["model_raw"].items():
            assert torch.equal(value, resumed["model_raw"][key]), key
        averaged = [k for k, v in straight["model"].items() if v.is_floating_point()]
        assert any(not torch.equal(straight["model"][k], straight["model_raw"][k]) for k in averaged)
    for name in ("straight", "resumed"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    untimed = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in straight["metrics"]]
    assert untimed == [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in resumed["metrics"]]
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    assert straight["split"] == resumed["split"] and straight["model_config"] == resumed["model_config"]
    assert resumed["changes"] == [{"epoch": 2, "flag": "--epochs", "from": 2, "to": 3}]


@pytest.mark.slow
def test_the_tutorials_box_model_trains_and_scores_boxes_only(pennfudan, tmp_path, monkeypatch):
    out = tmp_path / "output"
    saved = saves_in_memory(monkeypatch)  # its box head has 64 M parameters: best.pth and checkpoint.pth 520 MB
    tutorial_model = ["--model", "fasterrcnn_mobilenet_v2", *_FAST_RUN]  # its own box head
    run_main("--data-path", pennfudan, *tutorial_model, "--epochs", 1, "--output-dir", out)
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(record["bbox"]) == 12 and "segm" not in record and "loss_mask" not in record
    assert saved[-1]["is_best"] and saved[-1]["model_config"]["name"] == "fasterrcnn_mobilenet_v2"


@pytest.mark.slow
def test_multiscale_trains_at_several_sizes_and_evaluates_at_the_largest(pennfudan, tmp_path, monkeypatch):
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", tmp_path, "--augmentation", "multiscale")
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["model_config"]["min_size"] == [38, 64]  # 0.6 x to 1 x --min-size 64
    rebuilt, _ = model_from_checkpoint(tmp_path / "checkpoint.pth")
    assert rebuilt.transform.min_size == (38, 64)  # eval uses the last
    stand_in_training(monkeypatch)  # the model's sizes are looked at, not what it learns
    out = tmp_path / "range"
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--scale-range", 0.6, 1.5)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["model_config"]["min_size"] == [38, 96, 64]


@pytest.mark.slow
def test_test_only_evaluates_the_checkpoint(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "output"
    trained = run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out)
    capsys.readouterr()
    stats = run_main(
        "--data-path", pennfudan, *FAST, "--test-only", "--resume", out / "checkpoint.pth", "--output-dir", out
    )
    assert stats == trained
    assert "IoU metric: bbox" in capsys.readouterr().out


@pytest.mark.slow
def test_tiles_and_mirror_images_in_every_evaluation_and_in_test_only(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    seen = watch_views(monkeypatch)
    out = tmp_path / "output"
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--tile", 48)
    assert json.loads((out / "args.json").read_text())["tile"] == 48
    assert (48, 48) in seen and seen.count((48, 48)) < len(seen)  # each test image as tiles of 48, and whole
    seen.clear()
    capsys.readouterr()
    merges = []
    monkeypatch.setattr(tiles, "merge", lambda found, method, threshold: merges.append(method) or found)
    stats = run_main("--resume", out / "checkpoint.pth", "--test-only", "--tile-overlap", 0.5, "--tta",
                     "--tile-merge", "nmm")  # fmt: skip
    assert "bbox" in stats  # and no --allow-changes was needed
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["views"] == {"tile": 48, "tile_overlap": 0.5, "tta": True, "tile_merge": "nmm"}
    assert "changes" not in evaluated  # how it looked, not what it evaluated
    assert merges and set(merges) == {"nmm"}
    said = set(capsys.readouterr().out.splitlines())
    assert {"--tile-overlap 0.5 replaces the run's 0.2", "--tta True replaces the run's False",
            "--tile-merge nmm replaces the run's nms"} <= said  # fmt: skip
    assert seen.count((48, 48)) % 2 == 0 and len(seen) > 2 * 3  # each tile and its mirror, of the 3 test images


FOLDER_ROUTE = ["--dataset", "folder", "--mask-path", "PedMasks", "--mask-suffix", "_mask", "--test-size", 3]


def train_folder_route(data, out, *more, epochs=2):
    """A run as the issue's user made it: the folder route, its own --test-size, --lr and sizes."""
    args = [*FAST, *FOLDER_ROUTE, "--data-path", data / "PNGImages", "--output-dir", out, "--epochs", epochs]
    args[args.index("PedMasks")] = data / "PedMasks"
    return run_main(*args, *more)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub: a test fails if anything tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError("a resume tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


@pytest.mark.slow
def test_test_only_from_best_pth_needs_no_flag_and_reproduces_its_ap(pennfudan, tmp_path, capsys, offline, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "run"
    train_folder_route(pennfudan, out)
    best = torch.load(out / "best.pth", weights_only=True)
    (out / "split.json").unlink()  # best.pth holds the split itself
    capsys.readouterr()
    stats = run_main("--resume", out / "best.pth", "--test-only")
    assert stats == best["stats"]
    evaluated = json.loads((out / "eval.json").read_text())
    assert set(evaluated.pop("errors")) == {"confusion_matrix", "pr_curves"}  # the numbers of its pictures
    assert evaluated == json.loads(json.dumps(best["stats"]))
    assert (out / "confusion_matrix.png").is_file() and (out / "pr_curves.png").is_file()
    printed = capsys.readouterr().out
    assert f"on the run's 3 test images of epoch {best['epoch']}; wrote {out / 'eval.json'}" in printed


@pytest.mark.slow
def test_a_resume_never_downloads_weights(pennfudan, tmp_path, offline, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "run"
    train_folder_route(pennfudan, out, epochs=1)
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    checkpoint["args"]["weights"] = "DEFAULT"  # as a run fine-tuned from COCO weights stores it
    torch.save(checkpoint, out / "checkpoint.pth")
    run_main("--resume", out / "checkpoint.pth", "--epochs", 2)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert run_main("--resume", out / "checkpoint.pth", "--test-only")["segm"][0] >= 0


@pytest.mark.slow
def test_a_resume_keeps_the_split_whatever_the_data_folder_holds_now(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "run"
    train_folder_route(pennfudan, out, epochs=1)
    split = json.loads((out / "split.json").read_text())
    for name in ("FudanPed00000", "FudanPed00007"):  # two more images, labelled, since the run began
        for folder, suffix in (("PNGImages", ""), ("PedMasks", "_mask")):
            shutil.copy(pennfudan / folder / f"{name}{suffix}.png", pennfudan / folder / f"New{name}{suffix}.png")
    (out / "split.json").unlink()
    capsys.readouterr()
    run_main("--resume", out / "checkpoint.pth", "--epochs", 2)
    printed = capsys.readouterr().out
    assert "note: 2 images are not in the run's split and stay out" in printed
    assert "on 7 images, testing on 3" in printed
    assert json.loads((out / "split.json").read_text()) == split

    run_main("--resume", out / "checkpoint.pth", "--epochs", 3, "--allow-changes")
    assert "on 9 images, testing on 3" in capsys.readouterr().out
    now = json.loads((out / "split.json").read_text())
    assert now["test"] == split["test"] and sorted(now["train"]) == sorted(
        split["train"] + ["NewFudanPed00000.png", "NewFudanPed00007.png"]
    )

    gone = split["test"][0]  # its image and its mask
    (pennfudan / "PNGImages" / gone).unlink()
    (pennfudan / "PedMasks" / gone.replace(".png", "_mask.png")).unlink()
    with pytest.raises(train.utils.UserError, match=f"^{gone}: a test image of the run, not in the data"):
        run_main("--resume", out / "checkpoint.pth", "--epochs", 4)
    capsys.readouterr()
    run_main("--resume", out / "checkpoint.pth", "--epochs", 4, "--allow-changes")
    assert "testing on 2" in capsys.readouterr().out


@pytest.mark.slow
def test_allow_changes_records_what_changed(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "run"
    train_folder_route(pennfudan, out, epochs=1)
    with pytest.raises(train.utils.UserError, match="^--min-size 96: the run has 64 .*--allow-changes"):
        run_main("--resume", out / "checkpoint.pth", "--epochs", 2, "--min-size", 96)
    capsys.readouterr()
    run_main("--resume", out / "checkpoint.pth", "--epochs", 2, "--min-size", 96, "--allow-changes", "--lr", 0.0005)
    printed = capsys.readouterr().out
    assert "--min-size 96 replaces the run's 64 (--allow-changes)" in printed
    assert printed.count("--lr 0.0005 replaces the run's 0.001") == 1
    recorded = json.loads((out / "args.json").read_text())
    assert recorded["min_size"] == 96 and recorded["lr"] == 0.0005
    assert {"epoch": 1, "flag": "--min-size", "from": 64, "to": 96} in recorded["changes"]
    assert {"epoch": 1, "flag": "--lr", "from": 0.001, "to": 0.0005} in recorded["changes"]
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["model_config"]["min_size"] == [96] and checkpoint["changes"] == recorded["changes"]
    run_main("--resume", out / "checkpoint.pth", "--test-only", "--min-size", 80, "--allow-changes", "-j", 1)
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["changes"] == [{"flag": "--min-size", "from": 96, "to": 80}]  # -j changes no result: not listed


@pytest.mark.slow
def test_a_refused_flag_is_one_line_naming_it_and_both_values(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "run"
    train_folder_route(pennfudan, out, epochs=1)
    before = (out / "checkpoint.pth").read_bytes()
    for k, (flag, value, stored) in enumerate((("--test-size", 5, 3), ("--augmentation", "none", "hflip"),
                                               ("--seed", 1, 0))):  # fmt: skip
        run = run_cli if k == 0 else functools.partial(run_cli_here, capsys)  # the first as a user runs it
        result = run("--resume", out / "checkpoint.pth", "--epochs", 2, flag, value)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {flag} {value}: the run has {stored} ({out / 'checkpoint.pth'})")
    assert (out / "checkpoint.pth").read_bytes() == before


def test_a_validation_set_that_is_the_training_set_is_refused(pennfudan, tmp_path):
    with pytest.raises(train.utils.UserError, match="a test image is also a training image \\(10 such\\)"):
        run_main("--data-path", pennfudan, "--val-data-path", pennfudan, *FAST, "--epochs", 1,
                 "--output-dir", tmp_path / "out")  # fmt: skip


@pytest.mark.slow
def test_two_cpu_processes_train_resume_and_score_like_one(pennfudan, tmp_path, capsys, request):
    out = tmp_path / "ddp"
    common = ["--data-path", pennfudan, *FAST, "--output-dir", out]
    # 5 training images (3 + 3, one repeated), 2 validation images (1 + 1); a budget that the first epoch spends
    # (rank 0's plan, broadcast: 1 epoch), which the resume's typed --epochs then replaces
    first = run_torchrun(2, *common, "--val-size", 2, "--time-budget", 0.05)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("Training maskrcnn") == first.stdout.count("Epoch: [0] Total time") == 1  # rank 0 only
    assert "Epoch: [0] [1/2]" in first.stdout  # each rank took ceil(3 / 2) steps
    assert "so 1 epoch in all" in first.stdout and "chosen on the validation images" in first.stdout
    resumed = run_torchrun(2, *common, "--epochs", 2, "--resume", out / "checkpoint.pth")
    assert resumed.returncode == 0, resumed.stderr
    assert "Epoch: [1]" in resumed.stdout and "Epoch: [0]" not in resumed.stdout
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and not any(key.startswith("module.") for key in checkpoint["model"])

    # 3 test images on 2 ranks (2 + 1): every image counted once, so the AP equals one process's: this one, with
    # the one thread torchrun gives each rank (then the two agree bit for bit)
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(1)
    scores = []
    for num_processes in (1, 2):
        folder = tmp_path / f"eval{num_processes}"
        evaluate = [*common, "--test-only", "--resume", out / "checkpoint.pth", "--output-dir", folder]
        evaluated = run_cli_here(capsys, *evaluate) if num_processes == 1 else run_torchrun(2, *evaluate)
        assert evaluated.returncode == 0, evaluated.stderr
        scores.append(json.loads((folder / "eval.json").read_text()))
    assert scores[0] == scores[1]  # the confusion matrix and curves too
    del scores[0]["errors"]
    assert scores[0] == json.loads(json.dumps(checkpoint["stats"]))  # rank 1 scored with rank 0's BN statistics
    assert scores[0]["segm"][0] >= 0  # a real score, not COCOeval's -1 for "no ground truth"


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_and_rank_0_says_how_to_resume(pennfudan, tmp_path):
    import signal

    import run_folder

    out = tmp_path / "ddp"
    args = ["--data-path", pennfudan, *FAST, "--output-dir", out, "--epochs", 50, "--print-freq", 1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train_py(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([*command, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    for line in launcher.stdout:
        if line.startswith("Epoch: [1]"):  # epoch 0 is saved
            break
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    output = line + launcher.communicate(timeout=120)[0]
    (stopped,) = [line for line in output.splitlines() if "stopped by SIGTERM" in line]  # rank 0's alone
    epoch = torch.load(out / "checkpoint.pth", weights_only=True)["epoch"]
    assert stopped == f"stopped by SIGTERM; the last good checkpoint (epoch {epoch}) is intact: continue with " \
        f"--resume {out / 'checkpoint.pth'}"  # fmt: skip
    run_folder.hold(out).close()  # no rank is left holding the folder


def test_sync_bn_on_cpu_processes_is_refused(pennfudan, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(train.utils.UserError, match="--sync-bn: SyncBatchNorm runs on CUDA only"):
        run_main("--data-path", pennfudan, *FAST, "--sync-bn")


@pytest.mark.slow
def test_resume_with_a_new_lr_uses_it(pennfudan, tmp_path, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    out = tmp_path / "output"
    run_main("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--lr-step-size", 2)
    run_main("--data-path", pennfudan, *FAST, "--epochs", 3, "--output-dir", out, "--lr-step-size", 2,
             "--lr", 0.0004, "--resume", out / "checkpoint.pth")  # fmt: skip
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.001, 0.0004, 0.00004])


def test_download_when_the_data_path_is_missing(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "PENNFUDAN_URL", serve(pennfudan_zip(170)))
    root = tmp_path / "PennFudanPed"
    run_main("--data-path", root, "--download", "--epochs", 0, *FAST, "--output-dir", tmp_path / "out")
    assert len(list((root / "PedMasks").iterdir())) == 170
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert len(split["train"]) == 167 and len(split["test"]) == 3


def _break_first_image(root):
    (root / "PNGImages" / "FudanPed00000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


USER_ERRORS = {
    "missing data path": (
        lambda root: ["--data-path", root.parent / "nowhere"],
        "nowhere: no such folder; check --data-path",
    ),
    "wrong layout": (
        lambda root: ["--data-path", root / "PNGImages"],
        "PNGImages: no masks named <name>_mask.png; set --mask-path and --mask-suffix",
    ),
    "unreadable image": (
        lambda root: ["--data-path", _break_first_image(root), "-j", 1, "--test-size", 9],
        "FudanPed00000.png: cannot read the image",
    ),
    "weights and backbone": (
        lambda root: ["--data-path", root, "--weights", "DEFAULT", "--weights-backbone", "DEFAULT"],
        "--weights-backbone needs --weights none",
    ),
    "sizes": (lambda root: ["--data-path", root, "--min-size", 900, "--max-size", 800], "--min-size 900 is above"),
    "ssd300 too small": (
        lambda root: ["--data-path", root, "--model", "ssd300_vgg16", "--min-size", 256],
        "--min-size 256: ssd300_vgg16's last layers need an input of at least 268 pixels; use its own 300",
    ),
    "scale range above 1": (
        lambda root: ["--data-path", root, "--scale-range", 1.2, 1.5],
        "--scale-range 1.2 1.5: LOW up to 1 and HIGH from 1",
    ),
    "scale range with lsj": (
        lambda root: ["--data-path", root, "--augmentation", "lsj", "--scale-range", 0.8, 1.2],
        "--scale-range 0.8 1.2: --augmentation lsj scales on its own; drop one of the two",
    ),
    "test size": (lambda root: ["--data-path", root, "--test-size", 10], "--test-size 10: must be at least 1"),
    "test-only alone": (lambda root: ["--data-path", root, "--test-only"], "--test-only needs --resume PATH"),
    "missing checkpoint": (lambda root: ["--data-path", root, "--resume", root / "gone.pth"], "gone.pth: no such file"),
    "download with folder": (lambda root: ["--data-path", root, "--dataset", "folder", "--download"], "--download"),
    "no cuda": (lambda root: ["--data-path", root, "--device", "cuda"], "CUDA is not available here; use --device cpu"),
    "diverging": (lambda root: ["--data-path", root, "--lr", 10000], "the loss is nan"),
    "output dir is a file": (
        lambda root: ["--data-path", root, "--output-dir", root / "PNGImages" / "FudanPed00000.png"],
        "FudanPed00000.png: is a file, not a folder; choose another --output-dir",
    ),
    "output dir under a file": (
        lambda root: ["--data-path", root, "--output-dir", root / "PNGImages" / "FudanPed00000.png" / "out"],
        "out: cannot write there (Not a directory); choose another --output-dir",
    ),
}  # fmt: skip


# These three run as a user runs them, where a stray warning would show as a second line; the others are flags and
# paths refused before any work, in this process.
IN_A_PROCESS_OF_THEIR_OWN = ("missing data path", "unreadable image", "diverging")


@pytest.mark.parametrize("case", slow_where(USER_ERRORS, IN_A_PROCESS_OF_THEIR_OWN))
def test_user_errors_print_one_line_and_exit_2(case, pennfudan, tmp_path, capsys):
    make_args, expected = USER_ERRORS[case]
    args = [*FAST, "--epochs", 1, "--output-dir", tmp_path / "out", *make_args(pennfudan)]
    result = run_cli(*args) if case in IN_A_PROCESS_OF_THEIR_OWN else run_cli_here(capsys, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


@pytest.mark.slow
def test_trains_on_real_cvppp_through_the_folder_route_with_flags_only(cvppp, tmp_path, capsys, monkeypatch):
    saves_in_memory(monkeypatch)  # no file of it is read
    out = tmp_path / "output"
    flags = ["--data-path", cvppp, "--image-suffix", "_rgb", "--mask-suffix", "_label", "--test-size", 2]
    result = run_cli_here(capsys, *FAST, *flags, "--epochs", 1, "--output-dir", out)
    assert result.returncode == 0, result.stderr
    assert "Training maskrcnn_tiny_fpn on 4 images, testing on 2" in result.stdout
    split = json.loads((out / "split.json").read_text())
    assert all(name.endswith("_rgb.png") for name in split["train"] + split["test"])
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(record["segm"]) == 12 and record["loss_mask"] > 0


@pytest.mark.slow
def test_trains_and_evaluates_real_cvppp_through_the_coco_route(cvppp, tmp_path, capsys):
    plants = []
    for rgb in sorted(cvppp.glob("*_rgb.png")):
        pixels = np.asarray(Image.open(rgb).convert("RGB"))
        mask = np.asarray(Image.open(rgb.with_name(rgb.name.replace("_rgb", "_label"))))
        plants.append((rgb.name.replace("_rgb.png", ".jpg"), pixels, mask))
    images = tmp_path / "images"
    images.mkdir()
    ann_file = write_coco(images, plants)  # polygons, compressed and uncompressed RLE, two categories
    out = tmp_path / "output"
    result = run_cli_here(
        capsys,
        *FAST,
        "--data-path",
        images,
        "--ann-file",
        ann_file,
        "--test-size",
        2,
        "--epochs",
        1,
        "--output-dir",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert "leaf_even" in result.stdout and "leaf_odd" in result.stdout  # the per-class table
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(record["per_class"]["segm"]) == {"leaf_even", "leaf_odd"}
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["model_config"]["class_names"] == ["background", "leaf_even", "leaf_odd"]
    assert checkpoint["model_config"]["num_classes"] == 3
    assert json.loads((out / "args.json").read_text())["class_names"] == ["background", "leaf_even", "leaf_odd"]


@pytest.mark.slow
def test_test_only_writes_results_that_the_users_json_scores_alike(tmp_path, capsys):
    from test_coco_eval import coco_with_ids_of_its_own

    ann_file = coco_with_ids_of_its_own(tmp_path)
    out = tmp_path / "run"
    run_main(*FAST, "--data-path", tmp_path, "--ann-file", ann_file, "--epochs", 1, "--output-dir", out)
    capsys.readouterr()
    stats = run_main("--resume", out / "checkpoint.pth", "--test-only")
    assert "wrote" in capsys.readouterr().out
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert checkpoint["model_config"]["category_ids"] == [3, 7]
    names = {image["file_name"]: image["id"] for image in json.loads(ann_file.read_text())["images"]}
    test_ids = [names[name] for name in checkpoint["split"]["test"]]
    ground_truth = COCO(str(ann_file))
    for iou_type in ("bbox", "segm"):
        results = json.loads((out / f"results_{iou_type}.json").read_text())
        assert results and {r["image_id"] for r in results} <= set(test_ids)
        assert {r["category_id"] for r in results} <= {3, 7}
        assert all(names[r["file_name"]] == r["image_id"] for r in results)
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        evaluator.params.imgIds = test_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert stats[iou_type] == pytest.approx(evaluator.stats.tolist(), abs=1e-9)


@pytest.mark.slow
def test_a_fixed_validation_set_replaces_the_split(pennfudan, pennfudan_master, tmp_path, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    saves_in_memory(monkeypatch)  # no file of it is read
    out = tmp_path / "output"
    run_main("--data-path", pennfudan, "--val-data-path", pennfudan_master, *FAST, "--epochs", 1, "--output-dir", out)
    split = json.loads((out / "split.json").read_text())
    names = sorted(p.name for p in (pennfudan / "PNGImages").iterdir())
    assert split == {"train": names, "test": names, "skipped": []}  # every image trains; --test-size is unused
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(record["segm"]) == 12


@pytest.mark.parametrize(
    ("typed", "sizes"), [([], (320, 640)), (["--min-size", 160], (160, 640)), (["--max-size", 480], (320, 480))]
)
def test_a_model_whose_builder_sets_its_sizes_trains_at_them_unless_typed(typed, sizes, pennfudan, tmp_path):
    out = tmp_path / "out"
    model = [
        "--model",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "--weights",
        "none",
        "--epochs",
        0,
        "-j",
        0,
        "--test-size",
        3,
    ]
    run_main("--data-path", pennfudan, *model, *typed, "--output-dir", out)
    written = json.loads((out / "args.json").read_text())
    assert (written["min_size"], written["max_size"]) == sizes


def test_workers_default_to_at_most_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(train.utils, "available_cpus", lambda: 2)
    assert train.get_args_parser().parse_args([]).workers == 2  # PyTorch warns above the cores it may use
    monkeypatch.setattr(train.utils, "available_cpus", lambda: 64)
    assert train.get_args_parser().parse_args([]).workers == 4


# The box and keypoint heads narrowed (what these tests are about is keypoint data, its loss, scores and files, not
# the heads' widths; tests/test_learning.py trains torchvision's): 30 M parameters, not 59.
KEYPOINT_RUN = [
    "--model", "keypointrcnn_resnet50_fpn", "--weights", "none", "--lr", "0.001", "--min-size", "64",
    "--max-size", "128", "--test-size", "3", "-j", "0", "--box-head", "128", "--box-batch-size-per-image", "16",
    "--keypoint-head", "2", "128",
]  # fmt: skip


@pytest.mark.slow
@needs_keypoint_transforms
def test_keypoint_rcnn_trains_resumes_exactly_and_scores_keypoint_ap(tmp_path, capsys, monkeypatch):
    """In this process (a resume across processes: the resume-equals-straight tests above), from the straight run's
    first checkpoint.pth, the one file of the runs' saves written (the others stay in memory, best.pth among them:
    --test-only scores that checkpoint.pth, which holds best.pth's weights and more): an R50's checkpoint.pth once."""
    monkeypatch.delenv("MKL_CBWR", raising=False)
    ann_file = write_keypoint_coco(tmp_path)
    saved = saves_in_memory(monkeypatch, written=lambda weights: weights["epoch"] == 0, best=False)
    common = ["--data-path", tmp_path, "--ann-file", ann_file, *KEYPOINT_RUN, "--use-deterministic-algorithms"]
    result = run_cli_here(capsys, *common, "--epochs", 2, "--output-dir", tmp_path / "straight")
    assert result.returncode == 0, result.stderr
    assert "IoU metric: keypoints" in result.stdout and "keypoint AP" in result.stdout.splitlines()[-2]
    straight = saved[-1]
    (tmp_path / "resumed").mkdir()
    os.link(tmp_path / "straight/checkpoint.pth", tmp_path / "resumed/checkpoint.pth")  # epoch 0's; a link: no write
    result = run_cli_here(capsys, "--resume", tmp_path / "resumed/checkpoint.pth")
    assert result.returncode == 0, result.stderr
    resumed = saved[-1]
    assert straight["epoch"] == resumed["epoch"] == 1 and len(saved) == 3
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    # --use-deterministic-algorithms was the runs': the process is left as it was (a notebook's next call)
    assert not torch.are_deterministic_algorithms_enabled() and "MKL_CBWR" not in os.environ
    record = straight["metrics"][-1]
    assert len(record["keypoints"]) == 10 and "loss_keypoint" in record and "segm" not in record
    config = straight["model_config"]
    assert config["num_keypoints"] == 3 and config["keypoint_names"] == ["head", "left_hand", "right_hand"]
    assert [tuple(pair) for pair in config["skeleton"]] == [(0, 1), (0, 2)] and config["keypoint_sigmas"] == [0.067] * 3

    assert not (tmp_path / "straight/best.pth").exists()
    result = run_cli_here(capsys, "--resume", tmp_path / "straight/checkpoint.pth", "--test-only")  # epoch 0's
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "straight/eval.json").read_text())
    results = json.loads((tmp_path / "straight/results_keypoints.json").read_text())
    assert results and all(len(r["keypoints"]) == 9 and r["category_id"] == 1 for r in results)
    ground_truth = COCO(str(ann_file))  # the user's own json scores our results file alike
    names = {image["file_name"]: image["id"] for image in ground_truth.dataset["images"]}
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "keypoints")
    evaluator.params.imgIds = [names[name] for name in straight["split"]["test"]]
    evaluator.params.kpt_oks_sigmas = np.array(config["keypoint_sigmas"])
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert stats["keypoints"] == pytest.approx(evaluator.stats.tolist(), abs=1e-9)


@pytest.mark.slow
@needs_keypoint_transforms
def test_keypoint_rcnn_without_keypoints_or_with_unmirrorable_names_is_refused(
    keypoint_coco, pennfudan, tmp_path, capsys
):
    folder, ann_file = keypoint_coco
    result = run_cli_here(capsys, "--data-path", pennfudan, *KEYPOINT_RUN, "--output-dir", tmp_path / "a")
    assert result.returncode == 2 and "learns keypoints: train it on a COCO keypoints json" in result.stderr
    data = json.loads(ann_file.read_text())
    data["categories"][0]["keypoints"] = ["head", "left_hand", "hand_2"]
    ann_file.write_text(json.dumps(data))
    result = run_cli_here(
        capsys, "--data-path", folder, "--ann-file", ann_file, *KEYPOINT_RUN, "--output-dir", tmp_path / "b"
    )
    assert result.returncode == 2 and "'left_hand' names a side but there is no 'right_hand'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
