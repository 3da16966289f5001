"""Shared fixtures: a small synthetic dataset in Penn-Fudan's layout, written to a temporary folder."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

try:
    import fcntl  # a lock between pytest-xdist's workers (weights_file); not on Windows, where each writes its own
except ImportError:
    fcntl = None

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist (python -m pytest -n 2), each worker takes its share of the cores, set before torch is imported
# here or in a process a test starts: on 2 cores, two one-thread workers ran two trainings in 24 s where one worker of
# two threads ran them one after the other in 35 (a small model's operations keep two threads half idle), and two
# workers of two threads each slowed both down.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the modules are flat files at the repository root, as in torchvision's references

# (height, width, instance boxes as (value, y1, y2, x1, x2)) per image; the mask values
# are not contiguous in image 1, image 2 has no instance, image 3 has a one-pixel-wide one.
LAYOUT = [
    (96, 128, [(1, 10, 60, 10, 40), (2, 30, 90, 70, 120)]),
    (112, 96, [(3, 5, 50, 5, 45), (7, 55, 110, 40, 90)]),
    (96, 112, []),
    (104, 120, [(1, 20, 80, 50, 51), (2, 10, 60, 70, 110)]),
    (96, 128, [(1, 40, 95, 5, 60), (2, 0, 30, 80, 128), (3, 50, 90, 70, 110)]),
    (120, 100, [(1, 10, 110, 10, 50)]),
    (96, 128, [(1, 5, 45, 20, 60), (2, 50, 95, 60, 125)]),
    (100, 100, [(1, 20, 80, 20, 80)]),
    (96, 120, [(1, 10, 90, 5, 35), (2, 10, 90, 45, 75), (3, 10, 90, 85, 115)]),
    (108, 96, [(1, 30, 100, 10, 85)]),
]


def _has_keypoint_transforms() -> bool:
    from torchvision import tv_tensors

    return hasattr(tv_tensors, "KeyPoints")


# Keypoints move with the pixels through tv_tensors.KeyPoints, torchvision 0.23 on; train.py refuses keypoint training
# on an older one in one line (tested). The version-floor run (.ci/floors) has one.
needs_keypoint_transforms = pytest.mark.skipif(
    not _has_keypoint_transforms(), reason="keypoint training needs torchvision 0.23 or later (tv_tensors.KeyPoints)"
)

# The full suite (python -m pytest -q, what CI runs) runs every test; -m "not slow" leaves out those that train, start
# a process of their own or build a large model, and passes in a few minutes (README.md's first test command).
slow = pytest.mark.slow

# The models a fast test may build and run: the large ones (ResNet-50s, VGG, the keypoint head, the tutorial's
# MobileNetV2 with its 64 M parameter box head) take seconds each, and the full suite runs them.
HEAVY_MODELS = {
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
    "keypointrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v2", "maskrcnn_mobilenet_v2",
}  # fmt: skip


def slow_where(values, slow_ones) -> list:
    """`values` for pytest.mark.parametrize, those in `slow_ones` marked slow."""
    return [pytest.param(value, marks=slow) if value in slow_ones else value for value in values]


# Photographs come in every mode: the dataset must turn each into RGB.
IMAGE_MODES = {4: "L", 5: "RGBA", 6: "P"}


def instance_mask(height: int, width: int, instances: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """An instance mask with an ellipse-ish blob (a rectangle for thin ones) per instance."""
    mask = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for value, y1, y2, x1, x2 in instances:
        if x2 - x1 <= 2:
            mask[y1:y2, x1:x2] = value
            continue
        cy, cx, ry, rx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = value
    return mask


def write_pennfudan(root: Path, layout: list = LAYOUT) -> Path:
    """Write images and palette masks as PNGImages/FudanPedNNNNN.png and PedMasks/FudanPedNNNNN_mask.png."""
    rng = np.random.default_rng(0)
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    for index, (height, width, instances) in enumerate(layout):
        mask = instance_mask(height, width, instances)
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        for value in np.unique(mask[mask > 0]):
            pixels[mask == value] = rng.integers(120, 255, 3, dtype=np.uint8)  # objects stand out
        image = Image.fromarray(pixels).convert(IMAGE_MODES.get(index, "RGB"))
        name = f"FudanPed{index:05d}"
        image.save(root / "PNGImages" / f"{name}.png")
        palette_mask = Image.fromarray(mask, mode="L").convert("P")
        palette_mask.putpalette([0, 0, 0] + [255, 0, 0] * 255)
        palette_mask.save(root / "PedMasks" / f"{name}_mask.png")
    return root


@pytest.fixture(scope="session")
def pennfudan_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pennfudan(tmp_path_factory.mktemp("data") / "PennFudanPed")


@pytest.fixture
def pennfudan(pennfudan_master: Path, tmp_path: Path) -> Path:
    """A fresh copy of the synthetic dataset that a test may change."""
    return Path(shutil.copytree(pennfudan_master, tmp_path / "PennFudanPed"))


def pennfudan_zip(num_images: int) -> bytes:
    """A zip laid out like the official PennFudanPed.zip, with `num_images` tiny image and mask pairs."""
    buffer = io.BytesIO()
    png, mask = io.BytesIO(), io.BytesIO()
    Image.new("L", (4, 3)).save(png, format="PNG")
    Image.fromarray(np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]], np.uint8)).save(mask, format="PNG")
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("PennFudanPed/readme.txt", "Penn-Fudan Database for Pedestrian Detection and Segmentation")
        for i in range(num_images):
            archive.writestr(f"PennFudanPed/PNGImages/FudanPed{i:05d}.png", png.getvalue())
            archive.writestr(f"PennFudanPed/PedMasks/FudanPed{i:05d}_mask.png", mask.getvalue())
    return buffer.getvalue()


@pytest.fixture
def serve():
    """Serve bytes at http://127.0.0.1:PORT/PennFudanPed.zip; yields a function that sets them and returns the URL."""
    payload = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            if self.path != "/PennFudanPed.zip":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload["body"])))
            self.end_headers()
            self.wfile.write(payload["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def set_body(body: bytes) -> str:
        payload["body"] = body
        return f"http://127.0.0.1:{server.server_address[1]}/PennFudanPed.zip"

    yield set_body
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    """Serve torchvision's weights downloads from a state dict made here (the real host is unreachable)."""
    import torchvision.models._api

    served = {}

    def load_state_dict_from_url(url, *args, **kwargs):
        served["url"] = url
        return {k: v.clone() for k, v in served["state"].items()}

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", load_state_dict_from_url)
    return served


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory: pytest.TempPathFactory):
    """A function from a model's name to the folder of its run of tests/learning.py (from scratch, on shapes it can
    overfit, with the model's LEARNING settings), trained once a session. Of the checkpoints, the run of a model in
    learning.PREDICTED writes one file, best.pth, holding the last epoch (the one the learning tests score and the
    box models' end-to-end test predicts with), the others none; no checkpoint.pth, curves.png or pictures
    (first_batch.png, best_predictions.png, the error pictures), which these tests never read: an R50's checkpoint
    with its AdamW state is 500 MB, and the writes and the plots of every epoch cost about 2 s of its 4-10 (the tests
    of checkpoints, curves, pictures and faults write theirs). Only the last epoch is evaluated (the one the tests
    score): an epoch before it records AP -1, as a test split without ground truth does. With the pictures, that cut
    the seventeen runs from 1572 s to 1445 s in CI on the 2-core Zen 4 (a ResNet-18's run alone: 21.3 s to 18.3 s).
    None of this changes the training: the pictures draw no random number, and the stand-in for an evaluation draws
    the one number an evaluation draws from torch's generator (the test loader's seed, as its iterator starts), so
    the run trains exactly as a user's run of the same command (tests/test_learning.py checks it)."""
    import learning
    import torch

    import train
    from checkpoint import save_checkpoint

    def last_only(output_dir: Path, weights: dict, *rest: object) -> None:  # train.save_epoch's place
        if weights["epoch"] == weights["args"]["epochs"] - 1 and weights["args"]["model"] in learning.PREDICTED:
            save_checkpoint(weights, output_dir / "best.pth")

    def unevaluated(model: torch.nn.Module, loader: torch.utils.data.DataLoader, *rest: object, **more: object):
        iter(loader)  # what starting an evaluation draws from torch's generator, and no more
        return {"bbox": [-1.0] * 12}

    runs: dict[str, Path] = {}

    def learned(name: str) -> Path:
        if name not in runs:
            root = tmp_path_factory.mktemp(name)
            started = time.perf_counter()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(train, "save_epoch", last_only)
                for drawing in ("plot_curves", "save_batch_picture", "save_predictions_picture", "save_error_pictures"):
                    patch.setattr(train, drawing, lambda *drawn, **how: None)
                args, given = train.parse_args(learning.learning_command(name, root, learning.LEARNING[name]))
                evaluations = iter([*[unevaluated] * (args.epochs - 1), train.evaluate])
                patch.setattr(train, "evaluate", lambda *how, **more: next(evaluations)(*how, **more))
                with learning.one_thread():
                    threads = torch.get_num_threads()
                    train.main(args, given)
            assert (root / "run" / "best.pth").exists() == (name in learning.PREDICTED)
            assert not (root / "run" / "checkpoint.pth").exists()
            runs[name] = root / "run"
            last = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[-1])
            LEARNED.append((name, last, time.perf_counter() - started, threads))
        return runs[name]

    return learned


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist with --dist loadgroup (README.md's full-suite command), the tests that share a model's
    learning run (learned_run) stay on one worker, which trains it once; other tests go where a worker is free."""
    for item in items:
        if "learned_run" in getattr(item, "fixturenames", ()) and "name" in getattr(item, "callspec", {}).params:
            item.add_marker(pytest.mark.xdist_group(item.callspec.params["name"]))


# The learning runs of this worker: (model, its last epoch's metrics record, seconds, torch's threads); each goes with
# the report of the test that trained it (its user_properties, which pytest-xdist carries to the main process) to the
# summary below.
LEARNED: list[tuple[str, dict, float, int]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if call.when == "call" and LEARNED:
        report.user_properties.extend(("learned", run) for run in LEARNED)
        LEARNED.clear()


def pytest_terminal_summary(terminalreporter) -> None:
    """What each learning run reached and took, passed or not: the margins above tests/test_learning.py's 0.5, which
    move with the CPU's kernels and its threads (two runs that passed on one AMD EPYC failed on the next; one that
    passed with two threads failed with one), seen in every CI log."""
    reports = [report for kind in ("passed", "failed") for report in terminalreporter.stats.get(kind, [])]
    runs = [value for report in reports for key, value in getattr(report, "user_properties", []) if key == "learned"]
    if not runs:
        return
    terminalreporter.section("learning runs (tests/learning.py): last epoch's AP@[.5:.95], seconds, torch's threads")
    for name, last, seconds, threads in runs:
        scores = "  ".join(f"{kind} {last[kind][0]:.3f}" for kind in ("bbox", "segm", "keypoints") if kind in last)
        line = f"{name:40s} {last['epoch'] + 1:2d} epochs  {scores:34s} {seconds:5.0f} s  {threads}"
        terminalreporter.write_line(line)


ROW_STEP = 31  # elements between two rows of a compact() tensor


def compact(value):
    """`value`'s shape, dtype and kind of values in a short storage: row i (along the first dimension) is the run of
    `value`'s first values that starts at i x ROW_STEP, so the rows differ but overlap, and torch.save writes the run
    alone. A [1024, 12544] layer of an R50 box head costs 0.2 MB, not 51; small tensors stay as they are."""
    if value.dim() < 2 or not value.is_floating_point() or value.numel() <= 4096:
        return value
    rows, row = value.shape[0], value[0]
    step = min(ROW_STEP, row.numel())
    run = value.flatten()[: step * (rows - 1) + row.numel()].clone()
    return run.as_strided(value.shape, (step, *row.stride()))


def compact_state(model) -> dict:
    """`model`'s state dict with its large tensors compact(), loaded back into `model`: saved, it rebuilds a model
    that predicts exactly as `model` now does, in a file of a few MB."""
    state = {key: compact(value) for key, value in model.state_dict().items()}
    model.load_state_dict(state)
    return state


def coco_state(name: str) -> dict:
    """A state dict shaped like torchvision's COCO weights for `name` (91 classes): the keys, shapes, dtypes and
    initial values of torchvision's builder (seeded), each large tensor compact() (an R50's file is 5 MB, not 178;
    loading copies the values into the model, so a test sees a dense model)."""
    import torch

    from model import MODELS

    source = "fasterrcnn_mobilenet_v3_large_fpn" if name == "maskrcnn_mobilenet_v3_large_fpn" else name
    torch.manual_seed(0)
    return {
        key: compact(value)
        for key, value in MODELS[source][0](weights=None, weights_backbone=None).state_dict().items()
    }


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory):
    """A function from ("coco", model name) or ("imagenet", torchvision network name) to a weights file as torchvision
    ships it, written once a session: coco_state(name), or the state dict of torchvision.models.<network>() seeded 1
    (what --weights-backbone DEFAULT downloads, as a test can write it offline). Tests read these files and never
    change them, and a dozen tests ask for the same few. Under pytest-xdist the workers share them (the first to ask
    writes a file, under a lock the others wait on). Large tensors are compact(): all the files together are tens of
    MB, not the 2 GB of dense ones."""
    import torch
    import torchvision.models

    from utils import save_checkpoint

    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if "PYTEST_XDIST_WORKER" in os.environ and fcntl else base) / "weights"  # this run's own
    folder.mkdir(exist_ok=True)
    files: dict[tuple[str, str], Path] = {}

    def write(kind: str, name: str, path: Path) -> None:
        if kind == "coco":
            state = coco_state(name)
        else:
            torch.manual_seed(1)
            state = {key: compact(value) for key, value in getattr(torchvision.models, name)().state_dict().items()}
        save_checkpoint(state, path)  # atomically: a worker never reads half a file

    def saved(kind: str, name: str) -> Path:
        if (kind, name) not in files:
            path = folder / f"{kind}_{name}.pth"
            with open(path.with_suffix(".lock"), "w") as lock:
                if fcntl:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                if not path.exists():
                    write(kind, name, path)
            files[kind, name] = path
        return files[kind, name]

    return saved


CVPPP = ROOT.parent / "shared" / "data" / "CVPPP_A1"


@pytest.fixture
def cvppp(tmp_path: Path) -> Path:
    """Six real CVPPP A1 plants (RGBA photographs, palette leaf masks), linked into a temporary folder.

    The data lives beside the repository (../shared), never in it. CI always has it; a
    clone without it skips these tests, except under CI, where their absence is a failure.
    """
    if not CVPPP.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{CVPPP} is missing: CI must have ../shared/data/CVPPP_A1")
        pytest.skip(f"{CVPPP} is not here (it is shared data beside the repository)")
    folder = tmp_path / "cvppp"
    folder.mkdir()
    for plant in ("plant001", "plant002", "plant005", "plant006", "plant007", "plant008"):
        for kind in ("rgb", "label"):
            (folder / f"{plant}_{kind}.png").symlink_to(CVPPP / f"{plant}_{kind}.png")
    return folder


def run_here(cli, capsys, *args) -> subprocess.CompletedProcess:
    """A command's `cli` (train.cli, predict.cli) in this process, with what subprocess.run would give: for commands
    where a process of its own proves nothing and its start-up (about 7 s on a 2-core CPU) would be most of the test.
    A stray warning goes to pytest, not to stderr, here: keep some of each kind of refusal in a process of its own."""
    try:
        cli([*map(str, args)])
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture
def tiny_models(monkeypatch) -> None:
    """The tests' own models (tests/tiny_model.py) among model.MODELS for the test, in its process: for the modules
    whose runs train them (test_train.FAST); a process of their own knows them through tests/tiny_model.py."""
    import tiny_model

    import model

    for name, entry in tiny_model.ENTRIES.items():
        monkeypatch.setitem(model.MODELS, name, entry)


def stand_in_training(monkeypatch, step=lambda: None) -> None:
    """engine's training step replaced by a stand-in (a constant loss, no gradient, no update; `step()` in its place),
    for tests of what a run does around learning (its plan, split, choice of best.pth), where a real step costs real
    seconds and what it learns is not looked at."""
    import torch

    import engine

    def losses(*args, **kwargs):
        return torch.tensor(1.0), {"loss_stand_in": torch.tensor(1.0)}

    monkeypatch.setattr(engine, "forward_losses", losses)
    monkeypatch.setattr(engine, "backward_and_step", lambda *args, **kwargs: step())


def keep_each_epoch(monkeypatch, folder: Path) -> Path:
    """Every epoch's checkpoint.pth of the runs that follow, as a resume would find it, kept as `folder`/RUN-EPOCH.pth
    (RUN: the name of the run's output folder): a hard link, which writes nothing (a run replaces checkpoint.pth by
    renaming a new file onto it, so the link keeps the old one), where a copy wrote each checkpoint twice."""
    import train

    saved = train.save_epoch
    folder.mkdir()

    def save_and_keep(output_dir: Path, weights: dict, *args: object) -> None:
        saved(output_dir, weights, *args)
        os.link(output_dir / "checkpoint.pth", folder / f"{output_dir.name}-{weights['epoch']}.pth")

    monkeypatch.setattr(train, "save_epoch", save_and_keep)
    return folder


def last_epoch(weights: dict) -> bool:
    """For saves_in_memory's `written`: the run's last epoch (under a time budget: of its plan, when it ends it)."""
    return weights["epoch"] == weights["args"]["epochs"] - 1


def saves_in_memory(monkeypatch, written=lambda weights: False, best: bool = True) -> list[dict]:
    """The runs that follow keep each epoch's save in the list returned, in memory, and write it only where
    `written(weights)` is true (a checkpoint a test resumes from, a best.pth it tests; with `best` false, checkpoint.pth
    alone): for tests that read what a run saves but not its file, which the tests of checkpoints, resume and faults
    write. Each entry is best.pth's `weights` with "is_best" and checkpoint.pth's "metrics"; its tensors are the
    model's own, not copies, so the last epoch's hold what the run trained. An R50's checkpoint.pth and best.pth are
    700 MB an epoch."""
    import train

    save, saved = train.save_epoch, []

    def keep(output_dir: Path, weights: dict, is_best: bool, *state: object) -> None:
        saved.append({**weights, "is_best": is_best, "metrics": list(state[4])})  # save_epoch's `metrics`
        if written(weights):
            save(output_dir, weights, is_best and best, *state)

    monkeypatch.setattr(train, "save_epoch", keep)
    return saved


def watch_views(monkeypatch) -> list[tuple[int, int]]:
    """The (height, width) of every view (photo, tile, mirror image) that tiles.py hands the model, in order, as the
    test goes on."""
    import tiles

    seen, run_model = [], tiles._run

    def watched(model, images):
        seen.extend(tuple(image.shape[-2:]) for image in images)
        return run_model(model, images)

    monkeypatch.setattr(tiles, "_run", watched)
    return seen


def check_here(capsys, *args) -> subprocess.CompletedProcess:
    """`python dataset.py check ARGS` (dataset_cli.main) in this process, with run_here's result."""
    from dataset_cli import main

    def cli(argv: list[str]) -> None:
        raise SystemExit(main(["check", *argv]))

    return run_here(cli, capsys, *args)


def rle_of(mask: np.ndarray, compressed: bool = True) -> dict:
    """A binary mask as COCO RLE: compressed (counts a string) or uncompressed (counts a list of run lengths)."""
    import pycocotools.mask as mask_utils

    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    runs, value, count = [], 0, 0
    for pixel in mask.astype(np.uint8).flatten(order="F"):  # COCO runs go down the columns
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    return {"size": list(mask.shape), "counts": runs}


def box_polygon(mask: np.ndarray) -> list[list[float]]:
    """The polygon of a mask's bounding rectangle, in COCO's [x1, y1, x2, y2, ...] form."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [[float(v) for v in (x1, y1, x2, y1, x2, y2, x1, y2)]]


def write_coco(folder: Path, plants: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """COCO instances json for (file name, RGB image, instance mask) triples, with two categories (ids 3 and 7).

    Odd instances are category 7, even ones 3; segmentations cycle through polygon,
    compressed RLE and uncompressed RLE; the first instance of the first image is a crowd.
    """
    import json

    images, annotations = [], []
    for image_id, (file_name, pixels, mask) in enumerate(plants, start=1):
        Image.fromarray(pixels).save(folder / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": mask.shape[0], "width": mask.shape[1]})
        for k, value in enumerate(v for v in np.unique(mask) if v):
            instance = mask == value
            ys, xs = np.nonzero(instance)
            kind = len(annotations) % 3
            if kind == 0:
                segmentation = box_polygon(instance)
                area = float((xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min()))
            else:
                segmentation, area = rle_of(instance, compressed=kind == 1), float(instance.sum())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 7 if k % 2 else 3,
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": [
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() + 1 - xs.min()),
                        float(ys.max() + 1 - ys.min()),
                    ],
                    "iscrowd": int(image_id == 1 and k == 0),
                }
            )
    categories = [{"id": 3, "name": "leaf_even"}, {"id": 7, "name": "leaf_odd"}]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def coco_folder(tmp_path):
    """Three images from the synthetic layout as COCO json: two PNG, one JPEG, one without annotations."""
    plants = []
    for index, name in ((0, "a.png"), (1, "b.jpg"), (2, "c.png")):
        height, width, instances = LAYOUT[index]
        mask = instance_mask(height, width, instances)
        pixels = np.where(mask[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, axis=2)
        plants.append((name, pixels, mask))
    return tmp_path, write_coco(tmp_path, plants), plants


def write_yolo(root: Path, layout: list = LAYOUT, val: tuple[int, ...] = (1, 4, 7)) -> Path:
    """An Ultralytics segmentation dataset: images/{train,val}, labels/{train,val} and a data.yaml.

    Instance k of an image is class k % 2, a rectangle polygon from the layout's box; images
    `val` are the validation part. Image 2 of the layout has no instance: it gets no label file.
    """
    rng = np.random.default_rng(0)
    for index, (height, width, instances) in enumerate(layout):
        part = "val" if index in val else "train"
        for kind in ("images", "labels"):
            (root / kind / part).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        lines = []
        for k, (_, y1, y2, x1, x2) in enumerate(instances):
            pixels[y1:y2, x1:x2] = (200, 120 + 60 * (k % 2), 40)
            corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            lines.append(f"{k % 2} " + " ".join(f"{x / width:.6f} {y / height:.6f}" for x, y in corners))
        Image.fromarray(pixels).save(root / "images" / part / f"img{index}.png")
        if lines:
            (root / "labels" / part / f"img{index}.txt").write_text("\n".join(lines) + "\n")
    yaml = root / "data.yaml"
    yaml.write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: stem\n  1: leaf\n")
    return yaml


VOC_NAMES = ("dog", "cat")  # instance k of an image is VOC_NAMES[k % 2]: classes sorted, "cat" is label 1


def voc_xml(file_name: str, height: int, width: int, objects: list[tuple[str, tuple, int]]) -> str:
    """A Pascal VOC annotation as LabelImg writes it; objects: (name, (xmin, ymin, xmax, ymax), difficult)."""
    parts = [
        f"<annotation><folder>JPEGImages</folder><filename>{file_name}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>",
    ]
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, layout: list = LAYOUT, val: tuple[int, ...] | None = (1, 4, 7)) -> Path:
    """A Pascal VOC dataset: JPEGImages/imgN.jpg, Annotations/imgN.xml, and (unless `val` is None)
    ImageSets/Main/train.txt and val.txt. Each instance of the layout is an object whose VOC box is the
    layout's box in 1-based inclusive pixels (xmin = x1 + 1, xmax = x2); the second object of image 8 is
    difficult."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for index, (height, width, instances) in enumerate(layout):
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        objects = []
        for k, (_, y1, y2, x1, x2) in enumerate(instances):
            pixels[y1:y2, x1:x2] = (200, 120 + 60 * (k % 2), 40)
            objects.append((VOC_NAMES[k % 2], (x1 + 1, y1 + 1, x2, y2), int(index == 8 and k == 1)))
        Image.fromarray(pixels).save(root / "JPEGImages" / f"img{index}.jpg", quality=95)
        (root / "Annotations" / f"img{index}.xml").write_text(voc_xml(f"img{index}.jpg", height, width, objects))
        names.append(f"img{index}")
    if val is not None:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        (root / "ImageSets" / "Main" / "val.txt").write_text("".join(f"{names[i]}\n" for i in val))
        train = [name for i, name in enumerate(names) if i not in val]
        (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{name}\n" for name in train))
    return root


KEYPOINT_NAMES = ["head", "left_hand", "right_hand"]
KEYPOINT_COLOURS = [(250, 250, 250), (250, 0, 0), (0, 0, 250)]  # each point sits on a dot of its own colour


def write_keypoint_coco(folder: Path, layout: list = LAYOUT) -> Path:
    """A COCO person-keypoints-style json: each instance of the layout is a figure with a white head, a red
    left hand and a blue right hand (3 x 3 dots at the box's top middle, left and right edges), a rectangle
    segmentation, and category "figure" (id 1) with keypoints and skeleton. In the first image the right
    hand of the first figure is unlabelled (0, 0, 0) and the head of the second is labelled but hidden (1).
    """
    import json

    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (height, width, instances) in enumerate(layout, start=1):
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        for k, (_, y1, y2, x1, x2) in enumerate(instances):
            pixels[y1:y2, x1:x2] = (60, 140, 60)
            points = [((x1 + x2) // 2, y1 + 1), (x1 + 1, (y1 + y2) // 2), (x2 - 2, (y1 + y2) // 2)]
            keypoints = []
            for p, ((x, y), colour) in enumerate(zip(points, KEYPOINT_COLOURS, strict=True)):
                pixels[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = colour
                visibility = 2
                if image_id == 1 and (k, p) == (0, 2):
                    x, y, visibility = 0, 0, 0
                elif image_id == 1 and (k, p) == (1, 0):
                    visibility = 1
                keypoints += [x, y, visibility]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)),
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
                "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
            })  # fmt: skip
        Image.fromarray(pixels).save(folder / f"fig{image_id}.png")
        images.append({"id": image_id, "file_name": f"fig{image_id}.png", "height": height, "width": width})
    categories = [{"id": 1, "name": "figure", "keypoints": KEYPOINT_NAMES, "skeleton": [[1, 2], [1, 3]]}]
    path = folder / "keypoints.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def keypoint_coco(tmp_path: Path) -> tuple[Path, Path]:
    """(image folder, json) of write_keypoint_coco over the ten images of the layout."""
    return tmp_path, write_keypoint_coco(tmp_path)


def untrained_checkpoint(
    path: Path, name: str, class_names: list[str], config_extra: dict | None = None, **model_options
) -> Path:
    """A best.pth as train.py writes it (model_config with `class_names`, and `config_extra`), of the untrained
    model `name` (seeded): it still returns detections. Its large tensors are compact(): a few MB, where a Keypoint
    R-CNN's dense file is 190 MB."""
    import torch

    from checkpoint import model_config
    from model import get_model

    torch.manual_seed(0)
    model = get_model(name, num_classes=len(class_names), weights="none", **model_options)
    config = {**model_config(model, name), "class_names": class_names, **(config_extra or {})}
    torch.save({"model": compact_state(model), "model_config": config, "epoch": 0}, path)
    return path
