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


@pytest.mark.slow
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


def _grey_masks_through_jpeg(folder, mask_format):
    """Four images of three objects each, their masks grey 60/120/180 on black saved as JPEG (quality 90, as a
    mistaken export), as a PNG-named JPEG, or as PNGs of what a JPEG decodes to (the bleed, saved losslessly)."""
    folder.mkdir()
    for i in range(4):
        mask = np.zeros((96, 128), np.uint8)
        for value, (y, x) in zip((60, 120, 180), ((10, 10), (40, 60), (20, 95)), strict=True):
            mask[y : y + 30 + 4 * i, x : x + 25] = value
        Image.fromarray(np.where(mask[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, 2)).save(folder / f"p{i}.png")
        name = folder / f"p{i}_mask.{'jpg' if mask_format == 'jpg' else 'png'}"
        Image.fromarray(mask).save(name, format="JPEG" if mask_format != "bled png" else "PNG", quality=90)
        if mask_format == "bled png":
            Image.fromarray(mask).save(folder / "tmp.jpg", quality=90)
            Image.open(folder / "tmp.jpg").save(name)
            (folder / "tmp.jpg").unlink()
    return folder


@pytest.mark.parametrize("mask_format", ["jpg", "png-named jpeg"])
def test_masks_in_a_lossy_format_are_refused_in_one_line_before_anything_is_counted(mask_format, tmp_path, capsys):
    folder = _grey_masks_through_jpeg(tmp_path / "data", mask_format)
    assert dataset_main(["check", "--data-path", str(folder), "--dataset", "folder"]) == 2
    out, err = capsys.readouterr()
    assert "instances:" not in out and len(err.strip().splitlines()) == 1, err
    assert "p0_mask." in err and "a mask saved as JPEG (and 3 other masks)" in err and "export the masks as PNG" in err
    import train

    with pytest.raises(SystemExit) as stop:
        train.cli(["--data-path", str(folder), "--dataset", "folder", "--weights", "none", "--output-dir",
                   str(tmp_path / "out"), "--epochs", "1"])  # fmt: skip
    assert stop.value.code == 2 and "a mask saved as JPEG" in capsys.readouterr().err


def test_check_names_the_bleed_of_lossy_masks_once_for_the_dataset(tmp_path, capsys):
    folder = _grey_masks_through_jpeg(tmp_path / "data", "bled png")
    assert dataset_main(["check", "--data-path", str(folder), "--dataset", "folder"]) == 0
    out = capsys.readouterr().out
    bleed = [line for line in out.splitlines() if "fragments of under 16 pixels beside larger ones" in line]
    assert len(bleed) == 1 and "export the masks as PNG" in bleed[0], out
    assert "too few to learn" not in out  # not one line per fragment


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


@pytest.mark.slow
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
