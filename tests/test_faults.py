"""Faults injected on purpose: broken datasets, code in checkpoints, kill -9, Ctrl-C, SIGTERM, divergence, a full
disk, data with nothing to learn.

Every broken input must either work as the README documents or stop before training with
one line that names the file and the problem (exit status 2, no traceback). Every fault
during a run must leave a checkpoint that loads and a run that --resume completes.
"""

import functools
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, check_here, slow_where, stand_in_training
from PIL import Image
from test_train import FAST, run_cli, run_cli_here

from coco_utils import CocoDataset
from dataset import PennFudanDataset
from dataset_cli import check_dataset
from masks import instance_masks

pytestmark = pytest.mark.usefixtures("tiny_models")  # FAST trains the tests' own model (tests/tiny_model.py)

IMAGES, MASKS = "PNGImages", "PedMasks"


def _first_image(root):
    return root / IMAGES / "FudanPed00000.png"


def _first_mask(root):
    return root / MASKS / "FudanPed00000_mask.png"


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _remove_all_images(root):
    for path in (root / IMAGES).iterdir():
        path.unlink()


def _many_colours(root):  # what a mask saved as JPEG, or with anti-aliased edges, becomes
    noise = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(_first_mask(root))


# name: (how to break the Penn-Fudan-layout dataset, what the one line must say)
BROKEN_FOLDERS = {
    "truncated png": (lambda r: _truncate(_first_image(r)), "FudanPed00000.png: cannot read the image"),
    "text named .png": (lambda r: _first_image(r).write_text("hello"), "FudanPed00000.png: cannot read the image"),
    "zero-byte image": (lambda r: _first_image(r).write_bytes(b""), "FudanPed00000.png: cannot read the image"),
    "zero-byte mask": (lambda r: _first_mask(r).write_bytes(b""), "FudanPed00000_mask.png: cannot read the mask"),
    "truncated mask": (lambda r: _truncate(_first_mask(r)), "FudanPed00000_mask.png: cannot read the mask"),
    "mask size differs": (
        lambda r: Image.new("L", (10, 10)).save(_first_mask(r)),
        "FudanPed00000_mask.png: mask is 10x10 but its image FudanPed00000.png is 128x96",
    ),
    "missing mask": (lambda r: _first_mask(r).unlink(), "FudanPed00000.png: no mask FudanPed00000_mask.png"),
    "empty image folder": (_remove_all_images, "PNGImages: no images"),
    "missing mask folder": (
        lambda r: [p.unlink() for p in (r / MASKS).iterdir()] and (r / MASKS).rmdir(),
        "PedMasks: mask folder not found",
    ),
    "rgb mask of many colours": (_many_colours, "FudanPed00000_mask.png: an RGB mask with"),
}  # fmt: skip


def _assert_stopped_before_training(result, expected, out):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "Epoch: [0]" not in result.stdout and not (out / "checkpoint.pth").exists()


# One case of each table (BROKEN_COCO's is below) runs as a user runs it, where a stray warning would be a second line;
# the others in this process, without the 5 s of a process's start-up.
AS_A_USER_RUNS_IT = ("truncated png", "not json")


def _run(case, capsys, *args):
    return run_cli(*args) if case in AS_A_USER_RUNS_IT else run_cli_here(capsys, *args)


@pytest.mark.parametrize("case", slow_where(BROKEN_FOLDERS, AS_A_USER_RUNS_IT))
def test_a_broken_folder_dataset_stops_before_training(case, pennfudan, tmp_path, capsys):
    # -j 1: the pre-flight reads in a worker process, as most runs do; its error must still be one line.
    breaks, expected = BROKEN_FOLDERS[case]
    breaks(pennfudan)
    out = tmp_path / "out"
    result = _run(case, capsys, "--data-path", pennfudan, *FAST, "-j", 1, "--epochs", 1, "--output-dir", out)
    _assert_stopped_before_training(result, expected, out)


def _coco(folder, change):
    data = json.loads((folder / "instances.json").read_text())
    change(data)
    (folder / "instances.json").write_text(json.dumps(data))


def _polygon_of_two_points(data):
    data["annotations"][3]["segmentation"] = [[10.0, 10.0, 30.0, 30.0]]  # pycocotools would read it as a box


BROKEN_COCO = {
    "not json": (lambda f: (f / "instances.json").write_text("{'images': ["), "instances.json: not valid json"),
    "a json list": (lambda f: (f / "instances.json").write_text("[]"), "instances.json: holds a json list"),
    "no images key": (lambda f: _coco(f, lambda d: d.pop("images")), 'instances.json: no "images" list'),
    "image without width": (
        lambda f: _coco(f, lambda d: d["images"][1].pop("width")), 'instances.json: images[1] has no "width"'
    ),
    "annotation without id": (
        lambda f: _coco(f, lambda d: d["annotations"][2].pop("id")), 'instances.json: annotations[2] has no "id"'
    ),
    "annotation without segmentation": (
        lambda f: _coco(f, lambda d: d["annotations"][3].pop("segmentation")),
        'instances.json: annotation 4 of b.jpg has no "segmentation"',
    ),
    "unknown category": (
        lambda f: _coco(f, lambda d: d["annotations"][3].update(category_id=99)),
        "instances.json: annotation 4 of b.jpg has category_id 99, which is not in categories",
    ),
    "polygon of two points": (
        lambda f: _coco(f, _polygon_of_two_points),
        "instances.json: annotation 4 of b.jpg has a polygon of 2 points; a polygon needs 3 or more",
    ),
    "polygon of odd length": (
        lambda f: _coco(f, lambda d: d["annotations"][3].update(segmentation=[[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])),
        "instances.json: annotation 4 of b.jpg has a polygon [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]; polygons are",
    ),
    "rle of the wrong size": (
        lambda f: _coco(f, lambda d: d["annotations"][1]["segmentation"].update(size=[5, 5])),
        "instances.json: annotation 2 of a.png has an RLE of size [5, 5] for an image of height 96 and width 128",
    ),
    "image file missing": (lambda f: (f / "b.jpg").unlink(), "b.jpg: listed in instances.json but not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", slow_where(BROKEN_COCO, AS_A_USER_RUNS_IT))
def test_a_broken_coco_file_stops_before_training(case, coco_folder, tmp_path, capsys):
    folder, ann_file, _ = coco_folder
    breaks, expected = BROKEN_COCO[case]
    breaks(folder)
    out = tmp_path / "out"
    result = _run(case, capsys, "--data-path", folder, "--ann-file", ann_file, *FAST, "--test-size", 1, "--epochs", 1,
                  "--output-dir", out)  # fmt: skip
    _assert_stopped_before_training(result, expected, out)


def test_rgb_and_16_bit_masks_work_as_documented(pennfudan):
    # An RGB mask (each colour one instance, black the background) and a 16-bit one give the palette mask's target.
    expected = PennFudanDataset(pennfudan)[1][1]
    values = np.asarray(Image.open(pennfudan / MASKS / "FudanPed00001_mask.png"))
    colours = np.zeros((*values.shape, 3), np.uint8)
    colours[values == 3], colours[values == 7] = (10, 250, 10), (250, 10, 10)  # green's code is below red's
    Image.fromarray(colours).save(pennfudan / MASKS / "FudanPed00001_mask.png")
    rgb = PennFudanDataset(pennfudan)[1][1]
    Image.fromarray(values.astype(np.uint16) * 1000).save(pennfudan / MASKS / "FudanPed00001_mask.png")
    sixteen_bit = PennFudanDataset(pennfudan)[1][1]
    for target in (rgb, sixteen_bit):
        assert torch.equal(instance_masks(target), instance_masks(expected)) and torch.equal(
            target["boxes"], expected["boxes"]
        )


def test_a_coco_box_outside_the_image_is_clipped_with_a_warning(coco_folder):
    folder, ann_file, _ = coco_folder
    _coco(folder, lambda d: d["annotations"][1].update(bbox=[100.0, 50.0, 60.0, 20.0]))  # past x = 128
    dataset = CocoDataset(folder, ann_file)
    target = dataset[0][1]
    assert target["boxes"][1].tolist() == [100.0, 50.0, 128.0, 70.0]
    _, errors, warnings = check_dataset(dataset)
    assert not errors and any("outside its 128x96 image; it is clipped" in w for w in warnings)


@pytest.mark.slow
def test_skip_bad_samples_leaves_them_out_with_a_warning_each(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    _truncate(_first_image(pennfudan))
    (pennfudan / IMAGES / "FudanPed00003.png").write_bytes(b"")
    (pennfudan / MASKS / "FudanPed00005_mask.png").unlink()
    out = tmp_path / "out"
    result = run_cli_here(
        capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, "--skip-bad-samples"
    )
    assert result.returncode == 0, result.stderr
    for name in ("FudanPed00000.png: cannot read", "FudanPed00003.png: cannot read", "FudanPed00005.png: no mask"):
        assert f"warning: {pennfudan / IMAGES / name}" in result.stdout
    assert "Read 9 samples" in result.stdout and "3 bad" in result.stdout  # 9 paired images, 2 of them broken
    split = json.loads((out / "split.json").read_text())
    used = split["train"] + split["test"]
    assert len(used) == 7 and not {"FudanPed00000.png", "FudanPed00003.png", "FudanPed00005.png"} & set(used)
    assert len(split["skipped"]) == 3 and torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_a_file_that_breaks_during_the_run_stops_it_with_one_line(pennfudan, tmp_path, capsys, monkeypatch):
    stand_in_training(monkeypatch)  # what it learns is not looked at
    # After the pre-flight passed: the run stops at the file, naming it; the last checkpoint is intact.
    out = tmp_path / "out"
    assert run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out).returncode == 0
    before = (out / "checkpoint.pth").read_bytes()
    breaker = (  # train.py, whose training loop first overwrites an image
        "import sys, runpy, engine; sys.argv = ['train.py', *sys.argv[1:]]\n"
        "sys.path.append('tests'); import tiny_model; tiny_model.register()\n"
        "real = engine.train_one_epoch\n"
        "def breaking(*args, **kwargs):\n"
        f"    open({str(_first_image(pennfudan))!r}, 'w').write('gone')\n"
        "    return real(*args, **kwargs)\n"
        "engine.train_one_epoch = breaking\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )  # fmt: skip
    args = ["--data-path", pennfudan, *FAST, "--epochs", 2, "--output-dir", out, "--resume", out / "checkpoint.pth"]
    result = subprocess.run([sys.executable, "-c", breaker, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "FudanPed00000.png: cannot read the image" in result.stderr
    assert (out / "checkpoint.pth").read_bytes() == before


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--resume", "--weights"])
def test_a_checkpoint_that_runs_code_is_refused(flag, pennfudan, tmp_path, capsys):
    marker = tmp_path / "it-ran"
    evil = {"model": {"x": _RunsCode(str(marker))}, "optimizer": {}, "epoch": 0}
    torch.save(evil, tmp_path / "evil.pth")
    out = tmp_path / "out"
    run = run_cli if flag == "--resume" else functools.partial(run_cli_here, capsys)  # one as a user runs it
    result = run("--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out, flag, tmp_path / "evil.pth")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "evil.pth: refused to load it with weights_only=True" in result.stderr
    assert not marker.exists() and not (out / "checkpoint.pth").exists()


# ---------------------------------------------------------------------------
# Faults while training: kill -9, Ctrl-C, divergence, a full disk.

EPOCHS = 3


def _command(pennfudan, out, *extra):
    """The faults' training run: EPOCHS epochs of FAST into `out`, resumed from its checkpoint.pth when there is one."""
    args = ["--data-path", pennfudan, *FAST, "--epochs", EPOCHS, "--output-dir", out, "--print-freq", 1, *extra]
    return [*args, "--resume", out / "checkpoint.pth"] if (out / "checkpoint.pth").exists() else args


def _start(pennfudan, out, *extra, env=None):
    args = _command(pennfudan, out, *extra)
    command = [sys.executable, "-u", str(ROOT / "tests" / "faulty_train.py"), *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_hear_ctrl_c)  # fmt: skip


def _finish(pennfudan, out, capsys):
    """_start's command resumed to its end in this process: the resume after a fault is an ordinary one, which a
    process of its own would not prove more of (its start-up is 4 s). Returns (exit status, what it printed)."""
    result = run_cli_here(capsys, *_command(pennfudan, out))
    return result.returncode, result.stdout + result.stderr


def _hear_ctrl_c():
    """A run started in the background (`pytest &`, some CI runners) inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt; a terminal's Ctrl-C reaches a foreground run, which this restores."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_until(process, marker, after=0.0):
    """Read the run's output until a line holds `marker`, wait `after` seconds, return the output so far."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            time.sleep(after)
            return "".join(lines)
    process.wait()
    raise AssertionError(f"the run ended before {marker!r}:\n" + "".join(lines))


def _epochs_in(out):
    if not (out / "checkpoint.pth").exists():
        return None
    return torch.load(out / "checkpoint.pth", weights_only=True)["epoch"]


@pytest.mark.slow
def test_kill_9_at_any_moment_loses_nothing(pennfudan, tmp_path, capsys):
    out, rng = tmp_path / "out", random.Random(0)
    slow = {"FAULT_SLOW_WRITE": "1.5"}  # a kill lands 0.5 s into the write
    # Where each kill lands, run after run: mid-iteration, mid-evaluation, mid-checkpoint write, and at random.
    kills = [
        ("Epoch: [0] [2/", rng.uniform(0, 0.3)),  # mid-iteration, no checkpoint yet
        ("Test:", rng.uniform(0, 0.2)),  # evaluating epoch 0
        ("FAULT: half-written checkpoint.pth", 0.5),  # writing epoch 0's checkpoint (best.pth is written)
        ("Epoch: [1] [1/", rng.uniform(0, 0.3)),  # a fresh run got through epoch 0: mid-iteration of epoch 1
        ("FAULT: half-written checkpoint.pth", 0.5),  # resumed: writing epoch 1's checkpoint
        ("Training", rng.uniform(0, 4.0)),  # anywhere
    ]
    for marker, after in kills:
        before = _epochs_in(out)
        process = _start(pennfudan, out, env=slow)
        _run_until(process, marker, after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        epoch = _epochs_in(out)  # the checkpoint left behind always loads (weights_only) ...
        assert epoch is None or before is None or epoch >= before  # ... and never goes back
        if epoch is not None:
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            assert [m["epoch"] for m in metrics][:epoch] == list(range(epoch))
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write('{"epoch": 7, "loss": 0.5')  # a half-written line, as a crash mid-line leaves
    code, output = _finish(pennfudan, out, capsys)
    assert code == 0, output
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(EPOCHS))  # each epoch exactly once
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == EPOCHS - 1
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] < EPOCHS
    assert not list(out.glob(".*.tmp"))  # the temporaries the kills left were cleaned up


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_last_epoch_resumes(pennfudan, tmp_path, capsys):
    out = tmp_path / "out"
    process = _start(pennfudan, out)
    _run_until(process, "Epoch: [1] [1/")  # epoch 0 is saved
    process.send_signal(signal.SIGINT)
    output = process.communicate()[0]
    assert process.returncode == 130 and "Traceback" not in output, output
    resume = f"the last good checkpoint (epoch 0) is intact: continue with --resume {out / 'checkpoint.pth'}"
    assert f"interrupted; {resume}" in output
    assert _epochs_in(out) == 0
    code, output = _finish(pennfudan, out, capsys)
    assert code == 0 and "Epoch: [1]" in output and "Epoch: [0]" not in output, output
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["Epoch: [1] [2/", "FAULT: half-written checkpoint.pth"])
def test_sigterm_stops_like_ctrl_c_with_exit_143(pennfudan, tmp_path, marker, capsys):
    # A scheduler's preemption or docker stop, mid-iteration (-j 2: workers too) and mid-checkpoint-write.
    out = tmp_path / "out"
    process = _start(pennfudan, out, "-j", 2, env={"FAULT_SLOW_WRITE": "2"})
    _run_until(process, "Epoch: [1] [1/")  # epoch 0 is saved
    _run_until(process, marker, 0.2)  # epoch 1: mid-iteration, or writing its checkpoint
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 143 and "Traceback" not in output, output
    assert _epochs_in(out) == 0
    assert f"stopped by SIGTERM; the last good checkpoint (epoch 0) is intact: continue with --resume " \
        f"{out / 'checkpoint.pth'}" in output  # fmt: skip
    assert not list(out.glob(".*.tmp"))  # the write it cut short left nothing behind
    code, output = _finish(pennfudan, out, capsys)
    assert code == 0, output
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_the_previous_checkpoint(pennfudan, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out).returncode == 0
    saved = _digest(out / "checkpoint.pth")
    resume = ["--resume", out / "checkpoint.pth", "--lr", 10000]
    result = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 3, "--output-dir", out, *resume)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and re.search("the loss is (nan|-?inf)", result.stderr)
    assert "epoch 1 iteration" in result.stderr and re.search(r"loss_\w+ (nan|-?inf)", result.stderr)  # where, which
    assert _digest(out / "checkpoint.pth") == saved


def _mount_tmpfs(folder, size):
    """A real file system of `size` bytes at `folder` (root only); False where this machine does not allow it."""
    folder.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except OSError:  # no mount command
        return False


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(pennfudan, tmp_path):
    # A real full file system where the machine allows it (a tmpfs with room for epoch 0's files and not for
    # epoch 1's checkpoint), else the same fault injected into the write. A model whose checkpoint is larger than
    # the pictures' room (4 MB) can tell the two apart: the MobileNetV3 one, in place of FAST's (0.6 MB).
    from checkpoint import checkpoint_size
    from model import get_model
    from utils import tensor_bytes

    model = get_model(
        "maskrcnn_mobilenet_v3_large_fpn", num_classes=2, weights="none", fpn_channels=32, mask_head=(1, 32),
        box_head=128,
    )  # fmt: skip
    mobilenet = ["--model", "maskrcnn_mobilenet_v3_large_fpn", "--fpn-channels", 32, "--box-head", 128]  # after FAST's
    weights, checkpoint = tensor_bytes(model.state_dict()), checkpoint_size(model, "sgd")
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, weights + checkpoint + weights // 2 + 2**22)
    out = disk / "out"
    try:
        process = _start(pennfudan, out, *mobilenet, env={} if mounted else {"FAULT_ENOSPC": "checkpoint.pth:2"})
        output = process.communicate()[0]
        assert process.returncode == 2 and "Traceback" not in output, output
        (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
        assert line.startswith(f"error: no space left on device while writing {out}/"), line
        assert re.search(r"\(it needs about \d+ MB, [\d.]+ MB free\); ", line), line
        assert line.endswith(
            f"the last good checkpoint (epoch 0) is intact: free some space, then continue with --resume "
            f"{out / 'checkpoint.pth'}"
        ), line
        if mounted:
            assert f"warning: --output-dir {out} has " in output and "less than two checkpoints" in output
        assert _epochs_in(out) == 0 and not list(out.glob(".*.tmp"))
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_dataset_without_any_instance_stops_before_training(pennfudan, tmp_path, capsys):
    # Every mask all background: a suffix that pairs the wrong files, 0/255 JPEG masks thresholded to nothing.
    for path in (pennfudan / MASKS).iterdir():
        size = Image.open(path).size
        Image.new("L", size).save(path)
    out = tmp_path / "out"
    result = run_cli_here(capsys, "--data-path", pennfudan, *FAST, "--epochs", 1, "--output-dir", out)
    _assert_stopped_before_training(result, "none of the 7 training images holds an instance", out)
    assert "python dataset.py check and python dataset.py show" in result.stderr
    check = check_here(capsys, "--data-path", pennfudan)
    assert check.returncode == 2 and "error: " in check.stdout and "no image holds an instance" in check.stdout


@pytest.mark.slow
def test_a_test_split_without_instances_warns_and_never_prints_minus_one(pennfudan, tmp_path, capsys):
    # --seed 0 --test-size 1 holds out image 2 of the layout, the one without instances.
    out = tmp_path / "out"
    args = [*FAST, "--test-size", 1, "--seed", 0, "--epochs", 2, "--output-dir", out]
    result = run_cli_here(capsys, "--data-path", pennfudan, *args)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "split.json").read_text())["test"] == ["FudanPed00002.png"]
    assert "warning: the test split (1 image) holds no instance" in result.stdout
    assert "IoU metric: segm: no ground truth in the test split" in result.stdout
    assert "No ground truth in the test split: no epoch was scored, best.pth is the last" in result.stdout
    assert "-1.000" not in result.stdout and "Best epoch" not in result.stdout
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 1
    evaluated = run_cli_here(
        capsys, "--resume", out / "checkpoint.pth", "--test-only", "--output-dir", tmp_path / "eval"
    )
    assert "nothing to score (no ground truth) on the run's 1 test images" in evaluated.stdout, evaluated.stderr
