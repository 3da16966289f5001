"""dataset_cli.py: which dataset the flags name, and `python dataset.py check` and `show`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CVPPP, LAYOUT, ROOT
from PIL import Image

from dataset import MaskFolderDataset, PennFudanDataset
from dataset_cli import get_dataset
from dataset_cli import main as dataset_main
from utils import UserError


def test_get_dataset_infers_the_layout(pennfudan, tmp_path):
    assert type(get_dataset(None, pennfudan)) is PennFudanDataset
    folder = get_dataset(None, pennfudan / "PNGImages", mask_path=pennfudan / "PedMasks")
    assert type(folder) is MaskFolderDataset and len(folder) == len(LAYOUT)
    with pytest.raises(UserError, match="absent: no such folder; check --data-path$"):  # not Penn-Fudan: no download
        get_dataset(None, tmp_path / "absent")
    with pytest.raises(UserError, match="PennFudanPed: no such folder; pass --download"):
        get_dataset(None, tmp_path / "elsewhere" / "PennFudanPed")


def test_check_passes_real_cvppp_and_ignores_training_flags(cvppp):
    counts = dict(line.split(", ") for line in (CVPPP / "A1.csv").read_text().split("\n") if line.strip())
    expected = sum(int(counts[p.name]) for p in cvppp.glob("*_rgb.png"))
    args = ["check", "--data-path", str(cvppp), "--image-suffix", "_rgb", "--mask-suffix", "_label", "--epochs", "3"]
    result = subprocess.run([sys.executable, "dataset.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"instances: {expected} (object {expected})" in result.stdout
    assert "image sizes: 500x530 (6)" in result.stdout and "usable: 0 errors, 0 warnings" in result.stdout


def test_check_names_every_problem_and_exits_2(pennfudan, capsys):
    (pennfudan / "PNGImages" / "FudanPed00000.png").write_bytes(
        (pennfudan / "PNGImages" / "FudanPed00000.png").read_bytes()[:300]
    )
    (pennfudan / "PNGImages" / "FudanPed00001.png").write_text("not an image")
    Image.new("L", (10, 10)).save(pennfudan / "PedMasks" / "FudanPed00004_mask.png")
    (pennfudan / "PNGImages" / "FudanPed00005.png").unlink()
    tiny = np.zeros((100, 100), np.uint8)
    tiny[20:80, 20:80], tiny[5:7, 5:8] = 1, 2  # a normal instance and one of 6 pixels
    Image.fromarray(tiny).save(pennfudan / "PedMasks" / "FudanPed00007_mask.png")
    assert dataset_main(["check", "--data-path", str(pennfudan)]) == 2
    out = capsys.readouterr().out
    assert "error: " in out and "FudanPed00000.png: cannot read the image" in out  # truncated
    assert "FudanPed00001.png: cannot read the image" in out  # not an image
    assert "FudanPed00004_mask.png: mask is 10x10 but its image" in out
    assert "FudanPed00005_mask.png: mask without an image" in out
    assert "warning: " in out and "FudanPed00007.png: instance 1 (person) has only 6 pixels" in out
    assert "FudanPed00002_mask.png: no instances in FudanPed00002.png" in out
    assert "not usable: 4 errors, 2 warnings" in out


def test_check_says_how_many_images_are_16_bit_and_their_range(pennfudan, capsys):
    # A 12-bit camera's images fill 1/16 of the 16-bit range: they read dark, and check says so.
    for index in (1, 3):
        path = pennfudan / "PNGImages" / f"FudanPed{index:05d}.png"
        gray = np.maximum(np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16, 16)  # 16..4080 of 65535
        gray[0, 0] = 7 * index
        Image.fromarray(gray).save(path)
    assert dataset_main(["check", "--data-path", str(pennfudan)]) == 0
    out = capsys.readouterr().out
    highest = max(int(np.asarray(Image.open(pennfudan / "PNGImages" / f"FudanPed{i:05d}.png")).max()) for i in (1, 3))
    assert f"16-bit images: 2, values 7..{highest} of 0..65535 (scaled to 8 bits; the brightest uses 6% of it)" in out


def test_check_reports_coco_problems(coco_folder, capsys):
    folder, ann_file, _ = coco_folder
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = 99
    data["annotations"][1]["bbox"] = [100.0, 50.0, 60.0, 20.0]  # past the right edge of a 128-wide image
    ann_file.write_text(json.dumps(data))
    assert dataset_main(["check", "--data-path", str(folder), "--ann-file", str(ann_file)]) == 2
    out = capsys.readouterr().out
    assert "instances.json: annotation 1 of a.png has category_id 99" in out
    assert "instances.json: annotation 2 of a.png has bbox [100.0, 50.0, 60.0, 20.0] outside its 128x96 image" in out


def test_dataset_show_draws_samples_before_and_after_the_augmentation(pennfudan, tmp_path):
    out = tmp_path / "show"
    command = [sys.executable, "dataset.py", "show", "--data-path", pennfudan, "--augmentation", "lsj",
               "--min-size", 64, "--num-images", 3, "--output-dir", out]  # fmt: skip
    result = subprocess.run(list(map(str, command)), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pictures = sorted(out.iterdir())
    assert len(pictures) == 3 and len(result.stdout.strip().splitlines()) == 3
    for path in pictures:
        height, width, _ = LAYOUT[int(path.stem[-5:])]
        picture = np.asarray(Image.open(path))
        # the image as read (scaled to 320 high), a gap, the lsj square (64 x 64, scaled to 320 x 320)
        assert picture.shape[:2] == (320, round(width * 320 / height) + 4 + 320), path
    bad = subprocess.run([sys.executable, "dataset.py", "show", "--data-path", str(pennfudan), "--augmentation",
                          "sideways"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --augmentation sideways: unknown; choose one of hflip, none, ssd, ssdlite, multiscale, lsj, topdown"
    )
