import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from PIL import Image

import bench
import bench_memory
import bench_recipe
import flags
from bench_speed import median_ms
from model import MODELS
from utils import UserError


@pytest.mark.slow
def test_bench_measures_every_part_beside_the_tutorial_s_way(pennfudan, tmp_path, capsys):
    # Every part (data, train, eval, epoch) at a tiny size: what is measured, not how fast.
    output = tmp_path / "bench.json"
    args = bench.get_args_parser().parse_args(
        ["--data-path", str(pennfudan), "--models", "maskrcnn_mobilenet_v3_large_fpn", "--min-size", "64",
         "--max-size", "128", "--iterations", "2", "--warmup", "1", "-j", "0", "--test-size", "3",
         "--output", str(output)]
    )  # fmt: skip
    report = bench.main(args)
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))

    assert [(row["pipeline"], row["workers"]) for row in report["data"]] == [
        ("ours", 0), ("tutorial", 0), ("tutorial 2019", 0)
    ]  # fmt: skip
    assert all(row["images"] == 9 and row["images_per_second"] > 0 for row in report["data"])  # not image 3
    assert all(0 < row["first_batch_seconds"] * row["images_per_second"] < 10 for row in report["data"])

    assert [row["precision"] for row in report["training"]] == ["float32", "bfloat16"]  # CPU: --amp is bfloat16
    assert all(row["channels_last"] for row in report["training"])  # train.py's default
    for row in report["training"]:
        assert row["images_per_second"] > 0 and row["peak_memory_mb"] > 100
        assert abs(row["images_per_second"] * row["seconds_per_iteration"] - 2) < 1e-6  # 2 images per iteration
        assert row["final_loss"] > 0

    tutorial, ours, channels_last = report["evaluation"]
    assert [row["evaluation"] for row in report["evaluation"]] == ["tutorial", "ours", "ours + channels_last"]
    assert ours["identical_ap"] is True and ours["stats"] == tutorial["stats"]
    assert ours["images"] == 3 and ours["model_seconds_per_image"] + ours["metric_seconds_per_image"] > 0
    assert ours["model_seconds_per_image"] <= ours["seconds_per_image"]
    assert tutorial["metric_seconds_per_image"] is None and tutorial["speed_up"] == 1  # not timed apart there
    assert channels_last["speed_up"] == tutorial["seconds_per_image"] / channels_last["seconds_per_image"]
    ours, tutorial = report["epoch"]
    # Image 3 has a one-pixel-wide instance: the tutorial's masks_to_boxes would give it a zero-width box, which
    # Mask R-CNN refuses (ours keeps it: COCO boxes, x2 = last column + 1). Both loops train on the other 9.
    assert ours["loop"] == "ours" and tutorial["loop"] == "tutorial"
    assert ours["images"] == tutorial["images"] == 9 and ours["left_out"] == tutorial["left_out"] == 1
    assert ours["seconds"] > 0 and tutorial["seconds"] > 0 and "error" not in tutorial
    assert "images_per_second" in capsys.readouterr().out  # the tables


# One mask recipe and the box recipe through --recipe; the comparisons (EXPERIMENTS lines) take the same path with
# other flags, each of which train.py must take (the test below). --recipe-args sets the epochs and sizes here.
RECIPES = ["cpu-12min", "cpu-box-20min"]


@pytest.mark.parametrize("name", list(bench_recipe.RECIPES))
def test_every_recipe_and_comparison_is_a_command_train_py_takes(name):
    command = [*bench_recipe.RECIPES[name], "--data-path", "data", "--seed", "1", "--test-size", "16"]
    args, typed = flags.parse_args(command)
    flags.apply_recipe(args, typed)  # a --recipe's values under what the line types
    flags.check_args(args)
    assert args.model in MODELS and (args.recipe or "--model" in command)


@pytest.mark.slow
def test_recipe_part_records_ap_against_minutes_beside_the_tutorial_s_code(pennfudan, tmp_path, monkeypatch):
    # A smoke run at a tiny size: what is recorded, not how good or fast. The recipes train MobileNetV3 models with
    # narrow heads, not their ResNet-18s (checkpoint.pth and best.pth 40-110 MB an epoch, not 190; the recipes' own
    # settings are checked above); the recipe's optimizer, schedule and the rest as it gives them.
    smaller = {
        "cpu-12min": ["--model", "maskrcnn_mobilenet_v3_large_fpn", "--fpn-channels", "32", "--mask-head", "1", "32"],
        "cpu-box-20min": ["--model", "fasterrcnn_mobilenet_v3_large_fpn"],  # torchvision's builder: its pyramid fixed
    }
    for name, model in smaller.items():
        monkeypatch.setitem(bench_recipe.RECIPES, name, [*bench_recipe.RECIPES[name], *model, "--box-head", "128"])
    output, plot = tmp_path / "bench.json", tmp_path / "recipes.png"
    small = "--min-size 64 --max-size 128 --epochs 2"
    args = bench.get_args_parser().parse_args(
        ["--data-path", str(pennfudan), "--parts", "recipe", "--min-size", "64", "--max-size", "128", "-j", "0",
         "--test-size", "3", "--tutorial-epochs", "1", "--recipe-args", small,
         "--plot", str(plot), "--output", str(output), "--recipes", "tutorial", *RECIPES]
    )  # fmt: skip
    report = bench.main(args)
    assert [row["recipe"] for row in report["recipes"]] == ["tutorial", *RECIPES]
    for row in report["recipes"]:  # the tutorial's R50 for one epoch (its second was 10 s of the test), a recipe two
        assert [point["epoch"] for point in row["points"]] == ([0] if row["recipe"] == "tutorial" else [0, 1])
        minutes = [point["minutes"] for point in row["points"]]
        assert 0 < minutes[0] and minutes == sorted(set(minutes)) and minutes[-1] == row["minutes"]
        boxes = "--recipe cpu-box" in row["command"]  # a box recipe scores box AP
        for point in row["points"]:
            assert 0 <= point["score"] <= 1 and point["score"] == point["bbox_ap" if boxes else "segm_ap"]
            assert (point["segm_ap"] is None) == boxes
        assert row["best_ap"] == max(point["score"] for point in row["points"])
        assert row["last_ap"] == row["points"][-1]["score"]  # the figure a report states: no test image chose it
        # milliseconds per held-out image of what a recipe trained, as predict.py runs it; the tutorial's: none
        assert (row["ms_per_image"] is None) if row["recipe"] == "tutorial" else row["ms_per_image"] > 0
    assert "--seed 0 --test-size 3" in report["recipes"][1]["command"]
    with Image.open(plot) as image:
        assert image.format == "PNG"

    # the tutorial's first model, Faster R-CNN, for boxes
    args.recipes, args.models, args.tutorial_epochs, args.plot = ["tutorial"], ["fasterrcnn_resnet50_fpn"], 1, None
    (tutorial,) = bench.main(args)["recipes"]
    assert "fasterrcnn_resnet50_fpn" in tutorial["command"] and len(tutorial["points"]) == 1
    assert tutorial["points"][0]["segm_ap"] is None and tutorial["points"][0]["score"] == tutorial["best_ap"]
    args.models = ["maskrcnn_resnet18_fpn"]
    with pytest.raises(UserError, match="--models maskrcnn_resnet18_fpn: the tutorial's code trains"):
        bench.main(args)

    args.recipes, args.budget_minutes, args.plot = ["cpu-12min"], 0.001, None  # stopped before an epoch
    args.keep_runs = str(tmp_path / "runs")
    (stopped,) = bench.main(args)["recipes"]
    assert stopped["points"] == [] and stopped["best_ap"] is None and stopped["last_ap"] is None
    assert (tmp_path / "runs" / "cpu-12min.log").is_file() and (tmp_path / "runs" / "cpu-12min").is_dir()
    with pytest.raises(UserError, match="--keep-runs .*cpu-12min exists already; choose another folder"):
        bench.main(args)  # a kept run is never overwritten


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the parent-death signal is Linux's")
def test_a_killed_recipe_benchmark_leaves_no_training_behind(pennfudan, tmp_path):
    command = [sys.executable, "bench.py", "--data-path", str(pennfudan), "--parts", "recipe", "--recipes",
               "cpu-12min", "--recipe-args", "--min-size 64 --max-size 128 --epochs 50", "-j", "0", "--test-size", "3",
               "--output", str(tmp_path / "bench.json")]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the killed benchmark's folder stays, in here
    benchmark = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, training = time.time() + 60, []
    while not training and time.time() < deadline:
        time.sleep(0.2)
        training = [pid for pid in _children(benchmark.pid) if b"train.py" in _cmdline(pid)]
    assert training, "the benchmark never started train.py"
    benchmark.kill()  # SIGKILL: bench.py runs no clean-up of its own
    benchmark.wait()
    deadline = time.time() + 20
    while _alive(training[0]) and time.time() < deadline:
        time.sleep(0.2)
    orphaned = _alive(training[0])
    if orphaned:
        os.kill(training[0], signal.SIGKILL)  # leave nothing running, even when the check fails
    assert not orphaned


def _children(pid):
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == pid]


def _parent(pid):
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid):
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid):
    """Running (a zombie that nobody reaps counts as ended)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_memory_part_measures_each_command_on_big_and_model_sized_photos(tmp_path):
    # The memory part at a tiny size, one route: each command ran in its own process, on both sizes; the model
    # narrowed by --memory-args (its checkpoints 14 MB, not 87).
    output = tmp_path / "bench.json"
    args = bench.get_args_parser().parse_args(
        ["--parts", "memory", "--memory-size", "240", "180", "--memory-instances", "12", "--memory-images", "2",
         "--memory-routes", "folder", "--models", "maskrcnn_mobilenet_v3_large_fpn", "--min-size", "64",
         "--max-size", "100", "--device", "cpu", "--output", str(output),
         "--memory-args", "--fpn-channels 32 --mask-head 1 32 --box-head 128"]
    )  # fmt: skip
    small, big = bench.main(args)["memory"]
    assert (small["size"], big["size"]) == ("85x64", "240x180")  # the model's size: 64 / 180 of the photo
    for row in (small, big):
        assert row["model"] == "maskrcnn_mobilenet_v3_large_fpn" and row["read_seconds_per_sample"] > 0
        assert row["train_command"].startswith("train.py ") and row["train_command"].endswith(" --box-head 128")
        for name in ("check", "train", "evaluate", "predict"):
            assert row[f"{name}_mb"] > 100, row.get(f"{name}_error")  # each ran, and its peak is a process's
        stages = [row[f"{stage}_mb"] for stage in ("training", "evaluation", "pictures")]
        assert all(100 < mb <= row["train_mb"] * 1.01 for mb in stages), stages  # sampled within the run's peak
    assert big["check_ratio"] == pytest.approx(big["check_mb"] / small["check_mb"])
    assert big["pictures_ratio"] == pytest.approx(big["pictures_mb"] / small["pictures_mb"])


def test_a_train_run_s_stages_are_told_apart_by_what_it_printed():
    lines = [(1.0, "Training x on 2 images"), (2.0, "Epoch: [0] Total time: 0:00:01"), (3.0, "Test: [0/1]"),
             (4.0, " Average Precision  (AP) @[ IoU=0.50:0.95"), (5.0, " Average Recall     (AR) @[ IoU=0.50:0.95"),
             (6.0, "Best epoch 0")]  # fmt: skip
    samples = [(0.5, 300.0), (1.5, 900.0), (2.5, 700.0), (4.5, 800.0), (5.5, 2000.0), (6.5, 400.0)]
    assert bench_memory.stage_peaks(lines, samples) == {"training": 900.0, "evaluation": 800.0, "pictures": 2000.0}
    assert bench_memory.stage_peaks(lines[:2], samples) == dict.fromkeys(("training", "evaluation", "pictures"))


def test_speed_is_the_median_after_a_warm_up():
    calls = []

    def predict(image):  # the first call is slow, as a first forward pass is
        calls.append(image)
        time.sleep(0.3 if len(calls) == 1 else 0.0)

    assert median_ms(predict, ["a", "b", "c"]) < 100 and calls == ["a", "b", "c"]
    assert median_ms(predict, ["only"]) is None  # a warm-up and nothing to time
