"""Image and mask files read as the datasets need them: photos as 8-bit RGB, upright as a viewer shows them; instance
masks as integer label images; lossy mask files refused before their blurred edges count as instances.

dataset.py's datasets, predict.py and export.py read every image through read_image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from utils import UserError


def value_range(img: Image.Image) -> tuple[str, float] | None:
    """("16-bit", 65535), ("32-bit", 2**31 - 1) or ("float", 1.0) for an image of more than 8 bits per value; None
    for the 8-bit modes. PIL gives 16-bit grayscale as I;16 (or I, from a PNG), 32-bit integers as I, floats as F."""
    if img.mode.startswith("I;16"):
        return "16-bit", 65535
    if img.mode == "I":
        bits = getattr(img, "tag_v2", {}).get(258, (32,))  # a TIFF says its bits per sample; a PNG has 16 at most
        return ("16-bit", 65535) if img.format == "PNG" or bits[0] == 16 else ("32-bit", 2**31 - 1)
    if img.mode == "F":
        return "float", 1.0
    return None


def to_eight_bits(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image scaled to 8 bits as OpenCV's reader and torchvision's to_dtype(scale=True)
    do: value x 255 / the largest value (a 16-bit value / 257; floats span 0..1). PIL's own convert() clips at
    255 instead, so that a 16-bit photograph would read white."""
    found = value_range(img)
    if found is None:
        return img
    top = found[1]
    values = np.clip(np.asarray(img, dtype=np.float64), 0, top)
    return Image.fromarray(np.rint(values * (255 / top)).astype(np.uint8), mode="L")


def read_image(path: Path) -> tv_tensors.Image:
    """Decode any image PIL reads (grayscale, palette, RGBA, 16-bit, float) into uint8 RGB, 3 x H x W, upright.

    A photo whose pixels are stored turned, with an EXIF Orientation tag (phones do this), is
    turned as every viewer and labelling tool shows it, so that masks drawn on it fit. More than
    8 bits per value are scaled to 8 (to_eight_bits).
    """
    try:
        with Image.open(path) as img:
            return tv_tensors.Image(F.pil_to_tensor(to_eight_bits(ImageOps.exif_transpose(img)).convert("RGB")))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL: SyntaxError if broken
        raise UserError(f"{path}: cannot read the image ({error}); replace or remove the file") from error


def high_bit_values(path: Path) -> tuple[str, float, float, float] | None:
    """For an image of more than 8 bits per value: (its kind, its smallest and largest value, the kind's largest);
    None for an 8-bit image, whose pixels are not decoded. For `dataset.py check`: a 12-bit camera's images fill
    1/16 of the 16-bit range, and read dark."""
    try:
        with Image.open(path) as img:
            found = value_range(img)
            if found is None:
                return None
            low, high = img.getextrema()
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{path}: cannot read the image ({error}); replace or remove the file") from error
    return found[0], float(low), float(high), float(found[1])


EXIF_ORIENTATION = 0x0112
TURNED_A_QUARTER = (5, 6, 7, 8)  # the EXIF orientations that swap width and height


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the image at `path` as read_image turns it upright, from its header alone."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "PNG":  # PIL decodes a PNG to find an EXIF chunk after the pixels; read the header's only
                exif = Image.Exif()
                exif.load(img.info.get("exif", b""))
            else:
                exif = img.getexif()  # JPEG, TIFF, WebP: in the header
            if exif.get(EXIF_ORIENTATION) in TURNED_A_QUARTER:
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"{path}: cannot read the image header ({error}); replace or remove the file") from error
    return height, width


MAX_COLOUR_INSTANCES = 1000  # more colours than this in an RGB mask: a photo, or lossy or anti-aliased edges


def lossy_format(path: Path) -> str | None:
    """ "JPEG" or "lossy WebP" when the file, whatever its name, is in a format that blurs edges; else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError:
        return None  # reading it later says what is wrong
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and b"VP8 " in head and b"VP8L" not in head:
        return "lossy WebP"
    return None


def refuse_lossy_masks(paths: list[Path]) -> None:
    """A UserError naming the first mask file in a lossy format: its blurred edges hold values of their own, each of
    which would be read as an instance (a JPEG of three objects reads as dozens)."""
    lossy = [(path, kind) for path in paths if (kind := lossy_format(path)) is not None]
    if lossy:
        (path, kind), others = lossy[0], len(lossy) - 1
        more = f" (and {others} other mask{'s' if others > 1 else ''})" if others else ""
        raise UserError(
            f"{path}: a mask saved as {kind}{more}, whose blurred edges read as extra instances; export the masks as "
            "PNG (lossless), one exact value per instance"
        )


def read_instance_mask(path: Path) -> np.ndarray:
    """An instance mask as an H x W integer array: 0 is background, each other value one instance.

    Indexed (palette), grayscale, 16-bit and float masks give their values; RGB(A) masks,
    as many annotation tools export them, give one instance per colour, black the background.
    An EXIF Orientation tag is applied, as read_image applies it.
    """
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw)
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB")).astype(np.int32)
                codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]  # black is 0: background
                colours = len(np.unique(codes))
                if colours > MAX_COLOUR_INSTANCES:
                    raise UserError(
                        f"{path}: an RGB mask with {colours} colours; give each instance one exact colour on black "
                        "and save it as PNG (JPEG and anti-aliasing blend colours)"
                    )
                return codes
            if img.mode == "LA":
                img = img.convert("L")
            if img.mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
                raise UserError(
                    f"{path}: mask is mode {img.mode}; save instance masks as indexed (palette), grayscale, "
                    "16-bit or RGB PNGs where each instance has its own value or colour and 0 (black) is background"
                )
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot read the mask ({error}); replace or remove the file") from error
