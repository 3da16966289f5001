"""image_io.py: images of any depth read as 8-bit RGB, scaled rather than clipped; their range reported for check.

The readers' other cases (modes, palettes, EXIF, lossy masks) are tested through the datasets that use them, in
test_dataset.py and test_dataset_cli.py.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from image_io import high_bit_values, read_image
from utils import UserError


def _ramp(height, width, top, dtype):
    return (np.linspace(0, top, height * width).reshape(height, width)).astype(dtype)


@pytest.mark.parametrize(
    ("kind", "suffix", "values", "eight_bits"),
    [
        ("16-bit", ".png", _ramp(12, 20, 65535, np.uint16), lambda v: np.rint(v / 257)),
        ("16-bit", ".tif", _ramp(12, 20, 4095, np.uint16), lambda v: np.rint(v / 257)),  # a 12-bit camera's
        ("32-bit", ".tif", _ramp(12, 20, 2**31 - 1, np.int32), lambda v: np.rint(v * (255 / (2**31 - 1)))),
        ("float", ".tif", _ramp(12, 20, 1.0, np.float32), lambda v: np.rint(v * 255.0)),
    ],
)
def test_high_bit_depth_images_are_scaled_to_eight_bits_not_clipped(tmp_path, kind, suffix, values, eight_bits):
    # PIL's convert("RGB") clips a 16-bit value at 255: every 16-bit photograph would read white.
    path = tmp_path / f"image{suffix}"
    Image.fromarray(values).save(path)
    image = read_image(path)
    expected = torch.from_numpy(eight_bits(values.astype(np.float64)).astype(np.uint8))
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 20)
    assert all(torch.equal(channel, expected) for channel in image)
    assert high_bit_values(path) == (kind, float(values.min()), float(values.max()), {"16-bit": 65535.0,
                                     "32-bit": 2.0**31 - 1, "float": 1.0}[kind])  # fmt: skip
    with pytest.raises(UserError, match="no-such.png: cannot read the image"):
        high_bit_values(tmp_path / "no-such.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "eight.png")
    assert high_bit_values(tmp_path / "eight.png") is None
