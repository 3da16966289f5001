import numpy as np
import pytest

import bench
import bench_tiles
import flags
from image_io import read_image, read_instance_mask


def test_big_photos_are_plants_side_by_side_each_leaf_its_own_instance(cvppp, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_tiles, "GRID", 2)  # the six plants make one photo of 2 x 2 and leave two
    args = bench.get_args_parser().parse_args(["--data-path", str(cvppp), "--image-suffix", "_rgb",
                                               "--mask-suffix", "_label", "--tiles-test-photos", "0"])  # fmt: skip
    assert bench_tiles.compose_big_photos(args, tmp_path / "photos") == 1
    photo = read_image(tmp_path / "photos" / "big00_rgb.png")
    labels = read_instance_mask(tmp_path / "photos" / "big00_label.png")
    assert photo.shape == (3, 2 * 530, 2 * 500) and labels.shape == (2 * 530, 2 * 500)
    plants = sorted(cvppp.glob("*_rgb.png"))
    leaves, found = 0, 0
    for cell in range(4):  # each cell holds one of the plants, pixel for pixel, its leaves numbered on
        top, left = (cell // 2) * 530, (cell % 2) * 500
        pixels = photo[:, top : top + 530, left : left + 500]
        match = [p for p in plants if (read_image(p) == pixels).all()]
        assert len(match) == 1
        plant_labels = read_instance_mask(match[0].with_name(match[0].name.replace("_rgb", "_label")))
        cell_labels = labels[top : top + 530, left : left + 500]
        assert ((cell_labels > 0) == (plant_labels > 0)).all()
        values = np.unique(cell_labels[cell_labels > 0])
        assert len(values) == len(np.unique(plant_labels[plant_labels > 0])) and values.min() > found
        leaves, found = leaves + len(values), values.max()
    assert len(np.unique(labels[labels > 0])) == leaves  # no leaf shares a number with another plant's


@pytest.mark.parametrize("run", ["whole", "tiles"])
def test_each_tiles_run_is_a_command_train_py_takes(run):
    more = bench_tiles.WHOLE if run == "whole" else ["--train-tile", "512", "--tile", "512", "--tta"]
    args, typed = flags.parse_args([*bench_tiles.TILE_RECIPE, *more, "--data-path", "data", "--time-budget", "12"])
    flags.apply_recipe(args, typed)
    flags.check_args(args)
    assert args.box_detections_per_img == 300 and args.time_budget == 12
    assert (args.min_size, args.train_tile) == ((800, None) if run == "whole" else (320, 512))
    assert args.batch_size == (1 if run == "whole" else 2)


def test_too_few_plants_for_a_held_out_photo_is_one_line(cvppp, tmp_path):
    args = bench.get_args_parser().parse_args(["--data-path", str(cvppp), "--image-suffix", "_rgb",
                                               "--mask-suffix", "_label"])  # fmt: skip
    with pytest.raises(bench_tiles.utils.UserError, match="6 images make 0 photos of 16"):
        bench_tiles.compose_big_photos(args, tmp_path / "photos")
