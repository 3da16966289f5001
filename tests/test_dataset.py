"""dataset.py: the folder datasets, Penn-Fudan and its download, the split."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from conftest import CVPPP, LAYOUT, instance_mask, pennfudan_zip
from PIL import Image
from torchvision import tv_tensors

from dataset import (
    MaskFolderDataset,
    PennFudanDataset,
    download_pennfudan,
    masks_to_target,
)
from dataset_cli import get_dataset
from masks import InstanceMap, instance_masks
from utils import UserError


def test_contract_on_every_image(pennfudan):
    dataset = PennFudanDataset(pennfudan)
    assert len(dataset) == len(LAYOUT)
    for index, (height, width, instances) in enumerate(LAYOUT):
        image, target = dataset[index]
        n = len(instances)
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, height, width)
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].format.name == "XYXY"
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
        assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1] * n
        assert isinstance(target["instance_map"], InstanceMap) and target["instance_map"].dtype == torch.int32
        assert target["instance_map"].shape == (1, height, width)  # Penn-Fudan's instances never overlap
        assert instance_masks(target).shape == (n, height, width)
        assert target["image_id"] == index and isinstance(target["image_id"], int)
        assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
        assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0] * n


def test_instances_are_the_distinct_mask_values_in_order(pennfudan):
    image, target = PennFudanDataset(pennfudan)[1]  # values 3 and 7
    expected = instance_mask(*LAYOUT[1][:2], LAYOUT[1][2])
    for k, value in enumerate([3, 7]):
        assert torch.equal(instance_masks(target)[k], torch.from_numpy((expected == value).astype(np.uint8)))
        assert target["area"][k] == (expected == value).sum()


def test_boxes_agree_with_pycocotools_to_bbox():
    rng = np.random.default_rng(1)
    mask = np.zeros((60, 70), np.uint16)
    mask[5:40, 3] = 9  # one pixel wide
    mask[50, 10:60] = 300  # one pixel high, and a 16-bit value
    mask[rng.random((60, 70)) > 0.97] = 4  # scattered pixels
    target = masks_to_target(mask, image_id=0)
    rles = mask_utils.encode(np.asfortranarray(instance_masks(target).numpy().transpose(1, 2, 0)))
    xywh = mask_utils.toBbox(rles)
    expected = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    np.testing.assert_array_equal(target["boxes"].numpy(), expected)
    widths = target["boxes"][:, 2] - target["boxes"][:, 0]
    heights = target["boxes"][:, 3] - target["boxes"][:, 1]
    assert (widths > 0).all() and (heights > 0).all()


def test_image_without_instances_has_empty_tensors(pennfudan):
    _, target = PennFudanDataset(pennfudan)[2]
    assert target["boxes"].shape == (0, 4) and instance_masks(target).shape == (0, 96, 112)
    assert target["labels"].shape == target["area"].shape == target["iscrowd"].shape == (0,)


def test_sixteen_bit_mask(pennfudan):
    mask = np.zeros((96, 128), np.uint16)
    mask[10:20, 10:30] = 1000
    mask[40:60, 50:90] = 65535
    Image.fromarray(mask).save(pennfudan / "PedMasks" / "FudanPed00000_mask.png")
    _, target = PennFudanDataset(pennfudan)[0]
    assert target["boxes"].tolist() == [[10, 10, 30, 20], [50, 40, 90, 60]]


def test_four_bit_palette_mask(pennfudan):
    # 46 of CVPPP's masks are 4-bit palette PNGs, which torchvision.io (the tutorial's reader) misreads; PIL does not.
    mask = np.zeros((96, 128), np.uint8)
    mask[10:20, 10:30], mask[40:60, 50:90], mask[70:80, 5:9] = 3, 15, 9
    palette_mask = Image.fromarray(mask, mode="P")
    palette_mask.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, 0)])
    path = pennfudan / "PedMasks" / "FudanPed00000_mask.png"
    palette_mask.save(path, bits=4)
    assert path.read_bytes()[24:26] == bytes([4, 3])  # IHDR: bit depth 4, colour type 3 (palette)
    _, target = PennFudanDataset(pennfudan)[0]
    assert target["boxes"].tolist() == [[10, 10, 30, 20], [5, 70, 9, 80], [50, 40, 90, 60]]  # values 3, 9, 15


def test_every_image_mode_becomes_rgb(pennfudan):
    dataset = PennFudanDataset(pennfudan)
    for index, mode in {4: "L", 5: "RGBA", 6: "P"}.items():
        assert Image.open(dataset.image_paths[index]).mode == mode
        image, _ = dataset[index]
        assert image.shape[0] == 3
    gray, _ = dataset[4]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_pairs_by_stem_not_by_sorted_order(pennfudan):
    # An extra image sorted between the others must not shift the pairing.
    (pennfudan / "PedMasks" / "FudanPed00001_mask.png").rename(pennfudan / "PedMasks" / "tmp.png")
    (pennfudan / "PedMasks" / "tmp.png").rename(pennfudan / "PedMasks" / "AAA_mask.png")
    (pennfudan / "PNGImages" / "FudanPed00001.png").rename(pennfudan / "PNGImages" / "AAA.png")
    dataset = PennFudanDataset(pennfudan)
    for image_path, mask_path in zip(dataset.image_paths, dataset.mask_paths, strict=True):
        assert mask_path.name == f"{image_path.stem}_mask.png"
    image, target = dataset[0]
    assert image.shape[-2:] == instance_masks(target).shape[-2:] == (112, 96)


def test_image_without_mask_is_an_error_naming_it(pennfudan):
    (pennfudan / "PedMasks" / "FudanPed00003_mask.png").unlink()
    with pytest.raises(UserError, match="FudanPed00003.png: no mask FudanPed00003_mask.png"):
        PennFudanDataset(pennfudan)


def test_mask_without_image_is_an_error_naming_it(pennfudan):
    (pennfudan / "PNGImages" / "FudanPed00005.png").unlink()
    with pytest.raises(UserError, match="FudanPed00005_mask.png: mask without an image"):
        PennFudanDataset(pennfudan)


def test_wrong_layout_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        PennFudanDataset(tmp_path / "nowhere")
    (tmp_path / "PNGImages").mkdir()
    with pytest.raises(UserError, match="PedMasks: mask folder not found"):
        PennFudanDataset(tmp_path)


def test_unreadable_image_and_mismatched_mask(pennfudan):
    (pennfudan / "PNGImages" / "FudanPed00000.png").write_text("not a png")
    Image.new("L", (10, 10)).save(pennfudan / "PedMasks" / "FudanPed00001_mask.png")
    dataset = PennFudanDataset(pennfudan)
    with pytest.raises(UserError, match="FudanPed00000.png: cannot read the image"):
        dataset[0]
    with pytest.raises(UserError, match="FudanPed00001_mask.png: mask is 10x10 but its image"):
        dataset[1]


def test_get_height_and_width_reads_only_the_header(pennfudan):
    path = pennfudan / "PNGImages" / "FudanPed00001.png"
    path.write_bytes(path.read_bytes()[:100])  # the header survives, the pixels do not
    dataset = PennFudanDataset(pennfudan)
    assert dataset.get_height_and_width(1) == (112, 96)
    with pytest.raises(UserError):
        dataset[1]


def test_mask_folder_shares_one_folder(tmp_path):
    for key in ("plant1", "plant2"):
        Image.new("RGBA", (20, 10), (1, 2, 3, 255)).save(tmp_path / f"{key}_rgb.png")
        mask = np.zeros((10, 20), np.uint8)
        mask[2:5, 3:9] = 1
        Image.fromarray(mask).save(tmp_path / f"{key}_label.png")
    dataset = MaskFolderDataset(tmp_path, tmp_path, image_suffix="_rgb", mask_suffix="_label")
    assert [p.name for p in dataset.image_paths] == ["plant1_rgb.png", "plant2_rgb.png"]
    image, target = dataset[1]
    assert image.shape == (3, 10, 20) and target["boxes"].tolist() == [[3, 2, 9, 5]]


# ---------------------------------------------------------------------------
# download_pennfudan against a zip served on 127.0.0.1


def test_download_extracts_and_checks_170_pairs(serve, tmp_path):
    url = serve(pennfudan_zip(170))
    root = download_pennfudan(tmp_path / "data" / "PennFudanPed", url=url)
    assert len(list((root / "PNGImages").glob("*.png"))) == 170
    assert len(PennFudanDataset(root)) == 170
    assert [p.name for p in root.parent.iterdir()] == ["PennFudanPed"]  # no temporary files left behind


def test_download_refuses_an_incomplete_archive(serve, tmp_path):
    url = serve(pennfudan_zip(169))
    with pytest.raises(UserError, match="expected 170 images and 170 masks, got 169 and 169"):
        download_pennfudan(tmp_path / "PennFudanPed", url=url)
    assert not (tmp_path / "PennFudanPed").exists()


def test_download_failure_says_what_to_do(serve, tmp_path):
    url = serve(b"")
    with pytest.raises(UserError, match="could not download .*by hand"):
        download_pennfudan(tmp_path / "PennFudanPed", url=url.replace("PennFudanPed.zip", "missing.zip"))
    with pytest.raises(UserError, match="not a valid zip"):
        download_pennfudan(tmp_path / "PennFudanPed", url=serve(b"<html>moved</html>"))


def test_real_cvppp_plants_through_the_folder_route(cvppp):
    counts = dict(line.split(", ") for line in (CVPPP / "A1.csv").read_text().split("\n") if line.strip())
    dataset = get_dataset("folder", cvppp, image_suffix="_rgb", mask_suffix="_label")
    assert len(dataset) == 6
    for index, path in enumerate(dataset.image_paths):
        image, target = dataset[index]
        assert image.shape == (3, 530, 500) and image.dtype == torch.uint8  # RGBA became RGB
        assert len(target["boxes"]) == int(counts[path.name]), path.name  # one instance per leaf
        assert (target["area"] > 0).all()


# ---------------------------------------------------------------------------
# python dataset.py check


def write_phone_photo(folder, height, width, orientation, suffix=".jpg"):
    """A JPEG stored turned, with the EXIF Orientation that shows it upright, and its upright mask PNG.

    Upright, the picture is dark with a red block in its top-left part; the mask covers that block.
    """
    upright = np.full((height, width, 3), 40, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[4 : height // 2, 6 : width // 3] = 1
    upright[mask == 1] = (230, 20, 20)
    # exif_transpose undoes the orientation: store what undoing it turns upright
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright).transpose(stored).save(folder / f"photo{suffix}", quality=95, exif=exif)
    Image.fromarray(mask).save(folder / "photo_mask.png")
    return folder


@pytest.mark.parametrize(
    ("height", "width", "orientation", "suffix"),
    [(48, 48, 6, ".jpg"), (40, 64, 6, ".jpg"), (40, 64, 8, ".jpg"), (36, 52, 3, ".jpg"), (40, 64, 6, ".png")],
)
def test_a_phone_photo_is_read_upright_under_its_mask(tmp_path, height, width, orientation, suffix):
    dataset = MaskFolderDataset(write_phone_photo(tmp_path, height, width, orientation, suffix), tmp_path)
    assert dataset.get_height_and_width(0) == (height, width)  # from the header, turned as the pixels are
    image, target = dataset[0]
    assert image.shape[-2:] == (height, width)
    under = image[:, instance_masks(target)[0].bool()].float().mean(dim=1)
    assert under[0] > 200 and under[1] < 60, f"mean RGB under the mask {under.tolist()}: read the wrong way up"


def test_a_box_model_reads_a_mask_folder_for_boxes_alone(pennfudan):
    # The same boxes, labels and areas as the masks give, one instance at a time: no N x H x W stack is made.
    with_masks, boxes_only = PennFudanDataset(pennfudan), PennFudanDataset(pennfudan, masks=False)
    for idx in range(len(with_masks)):
        expected, target = with_masks[idx][1], boxes_only[idx][1]
        assert "masks" not in target and "instance_map" not in target
        for key in ("boxes", "labels", "area", "iscrowd"):
            assert torch.equal(target[key], expected[key]), key
