"""Instance masks without an N x H x W stack at the photo's size.

A 12-megapixel photo with 300 instances is 3.6 GB as N x H x W bytes, but 48 MB as one integer
image in which each pixel holds the number of the instance it belongs to. The datasets here
return their outlines so (an InstanceMap under the target's "instance_map"); the transforms move
it as they move any mask (nearest-neighbour, so every instance keeps exactly the pixels its own
mask would), and transforms.ResizeForModel splits it into per-instance masks only at the size
the model sees. Instances that overlap (COCO's crowds, polygons that share an edge) go to
different layers of the map, so no pixel of any instance is lost.

Evaluation goes the other way a few instances at a time: the ground truth is encoded one
instance at a time, and the model's 28 x 28 mask probabilities are pasted at the photo's size,
cut at 0.5 and encoded a few at a time (`unpasted_masks`), never all at once.

`dataset.py check` counts the instances too small to learn, and flags the fragments that a lossy mask's
blurred edges leave beside larger instances (fragments_beside_larger).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torchvision import tv_tensors
from torchvision.models.detection.roi_heads import paste_masks_in_image

PASTED_AT_ONCE = 2  # detections pasted at the photo's size together: 2 x 12 megapixels of float32 is 96 MB


class InstanceMap(tv_tensors.Mask):
    """L x H x W int32: a pixel of value k > 0 belongs to instance k (the k-th row of the target's boxes,
    labels, ..., counted from 1), 0 to none. Instances that overlap lie in different layers; most data needs
    one. As a tv_tensors.Mask, torchvision's transforms flip, crop, pad and resize it as they do masks."""


STRIP = 256  # rows of a photo worked on at once: a 4000-pixel-wide photo's temporaries stay near 8 MB each


def index_label_image(label_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An instance-label image (H x W; 0 background, any other value an instance) as an index map: H x W int32,
    the instances numbered 1..N in the order of their values; and the pixels of each, N int64."""
    flat = label_image.reshape(-1)
    if flat.dtype.kind in "ub" or (flat.dtype.kind == "i" and flat.size and 0 <= flat.min() and flat.max() < 2**20):
        counts = np.zeros(int(flat.max(initial=0)) + 1, np.int64)  # 8-bit, 16-bit and palette masks: a table
        for start in range(0, flat.size, STRIP * 4096):
            counts += np.bincount(flat[start : start + STRIP * 4096], minlength=len(counts))
        values = np.flatnonzero(counts[1:]) + 1
        lookup = np.zeros(len(counts), np.int32)
        lookup[values] = np.arange(1, len(values) + 1, dtype=np.int32)
        return lookup[label_image], counts[values]
    values, index, counts = np.unique(label_image, return_inverse=True, return_counts=True)
    index = index.reshape(label_image.shape).astype(np.int32)
    if len(values) and values[0] == 0:
        return index, counts[1:]
    return index + 1, counts  # no background pixel: every value is an instance


def _strips(instance_map: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, H' x W rows of one layer) of an L x H x W map, STRIP rows at a time."""
    height, width = instance_map.shape[-2:]
    for layer in instance_map.reshape(-1, height, width):
        for top in range(0, height, STRIP):
            yield top, layer[top : top + STRIP]


def boxes_of_index_maps(layers: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """N x 4 float32 XYXY boxes of instances 1..n of an L x H x W index map, in COCO's convention (x2 = last
    column + 1, as dataset.boxes_of_masks gives them); 0s for an instance without pixels. One pass over it."""
    layers = torch.as_tensor(layers)
    height, width = layers.shape[-2:]
    rows = torch.zeros(n + 1, height, dtype=torch.uint8)  # rows[k, y]: instance k has a pixel in row y
    cols = torch.zeros(n + 1, width, dtype=torch.uint8)
    for top, strip in _strips(layers):
        rows[strip, torch.arange(top, top + len(strip), dtype=torch.int32)[:, None]] = 1
        cols[strip, torch.arange(width, dtype=torch.int32)[None, :]] = 1
    rows, cols = rows[1:], cols[1:]
    y1, y2 = rows.argmax(dim=1), height - rows.flip(1).argmax(dim=1)  # argmax finds the first maximum
    x1, x2 = cols.argmax(dim=1), width - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32).reshape(-1, 4)
    boxes[rows.sum(dim=1) == 0] = 0
    return boxes


def pixels_of(instance_map: torch.Tensor, n: int) -> torch.Tensor:
    """The pixels of instances 1..n of an index map: N int64."""
    counts = torch.zeros(n + 1, dtype=torch.int64)
    for _, strip in _strips(instance_map):
        counts += torch.bincount(strip.reshape(-1), minlength=n + 1)
    return counts[1:]


def split(instance_map: torch.Tensor, n: int) -> tv_tensors.Mask:
    """Instances 1..n of an L x H x W index map as N x H x W uint8 masks (0 or 1): the one stack, made last."""
    height, width = instance_map.shape[-2:]
    masks = torch.zeros(n + 1, height * width, dtype=torch.uint8)
    for layer in instance_map.reshape(-1, height * width).long():
        masks.scatter_(0, layer[None], 1)  # masks[layer[p], p] = 1 for every pixel p
    return tv_tensors.Mask(masks[1:].reshape(n, height, width))


def keep(instance_map: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The index map of the instances where `kept` (N bool) is True, numbered 1..kept.sum() in their order."""
    if kept.all():
        return instance_map
    lookup = torch.zeros(len(kept) + 1, dtype=instance_map.dtype)
    lookup[1:][kept] = torch.arange(1, int(kept.sum()) + 1, dtype=instance_map.dtype)
    return tv_tensors.wrap(lookup[instance_map], like=instance_map)


class MapBuilder:
    """An InstanceMap painted one instance at a time, each into the first layer where it overlaps nothing."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.layers: list[np.ndarray] = []
        self.count = 0

    def add(self, window: np.ndarray, top: int, left: int) -> None:
        """The next instance: its mask `window` (h x w, nonzero inside), whose top-left pixel is at (top, left)."""
        self.count += 1
        inside = window.astype(bool)
        height, width = inside.shape
        for layer in self.layers:
            region = layer[top : top + height, left : left + width]
            if not region[inside].any():
                region[inside] = self.count
                return
        self.layers.append(np.zeros((self.height, self.width), np.int32))
        self.layers[-1][top : top + height, left : left + width][inside] = self.count

    def result(self) -> InstanceMap:
        layers = self.layers or [np.zeros((self.height, self.width), np.int32)]
        return InstanceMap(torch.from_numpy(np.stack(layers)))


def rle_counts(rle: dict[str, Any]) -> np.ndarray:
    """The run lengths of a COCO RLE (zeros first, down the columns); a compressed one's string read as
    pycocotools' rleFrString reads it (5 bits a character, each run after the second relative to the one two back)."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return np.asarray(counts, np.int64)
    text, runs, p = counts.decode() if isinstance(counts, bytes) else counts, [], 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            value |= (c & 0x1F) << shift
            more, p, shift = bool(c & 0x20), p + 1, shift + 5
            if not more and c & 0x10:
                value |= -1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return np.asarray(runs, np.int64)


def rasterise(segmentation: list[list[float]] | dict[str, Any], height: int, width: int) -> tuple[np.ndarray, int, int]:
    """A COCO segmentation (polygons in pixels, or an RLE) of an image of `height` x `width`, as pycocotools'
    annToMask draws it, cut to its box: (mask, top, left). Only the box's columns are decoded: a small outline on a
    large photo costs its own pixels, not the photo's."""
    if isinstance(segmentation, list):  # pycocotools draws the polygon as an RLE of the whole image: no pixels yet
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    left, top, box_width, box_height = (int(v) for v in mask_utils.toBbox(rle))
    if not box_width or not box_height:
        return np.zeros((0, 0), np.uint8), 0, 0
    ends = np.cumsum(rle_counts(rle))
    first, last = left * height, (left + box_width) * height  # the box's columns, as positions down the columns
    columns = np.zeros(box_width * height, np.uint8)
    for k in range(1, len(ends), 2):  # odd runs are the instance's pixels
        start, end = max(ends[k - 1], first), min(ends[k], last)
        if start < end:
            columns[start - first : end - first] = 1
    return np.ascontiguousarray(columns.reshape(box_width, height).T[top : top + box_height]), top, left


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """One H x W binary mask as a COCO compressed RLE, its counts a str (json writes it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_ground_truth(target: dict[str, Any]) -> list[dict[str, Any]]:
    """COCO RLEs of a target's instances ("instance_map" or "masks"), one instance at a time; an instance of the
    map is looked for inside its own box only."""
    if "masks" in target:
        return [_rle(mask.cpu().numpy()) for mask in target["masks"]]
    instance_map = target["instance_map"].cpu()
    height, width = instance_map.shape[-2:]
    boxes = boxes_of_index_maps(instance_map, len(target["labels"])).long().tolist()
    canvas = np.zeros((height, width, 1), np.uint8, order="F")  # Fortran order: what pycocotools encodes
    rles = []
    for k, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        canvas[y1:y2, x1:x2, 0] = (instance_map[:, y1:y2, x1:x2] == k).any(dim=0).numpy()
        rles.append(mask_utils.encode(canvas)[0])
        rles[-1]["counts"] = rles[-1]["counts"].decode("ascii")
        canvas[y1:y2, x1:x2, 0] = 0
    return rles


def encode_detections(output: dict[str, torch.Tensor], height: int, width: int) -> list[dict[str, Any]]:
    """COCO RLEs of a model's masks at the image's size: "masks" (N x 1 x H x W probabilities, pasted by the
    model), or "mask_probs" (N x 1 x M x M, unpasted_masks) pasted a few at a time, as torchvision pastes them;
    cut at 0.5 either way."""
    if "masks" in output:
        return [_rle((mask[0] > 0.5).cpu().numpy()) for mask in output["masks"]]
    rles = []
    for start in range(0, len(output["mask_probs"]), PASTED_AT_ONCE):
        chunk = slice(start, start + PASTED_AT_ONCE)
        pasted = paste_masks_in_image(output["mask_probs"][chunk], output["boxes"][chunk], (height, width))
        rles += [_rle((mask[0] > 0.5).cpu().numpy()) for mask in pasted]
    return rles


@contextlib.contextmanager
def unpasted_masks(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, a Mask R-CNN's detections come without "masks" (so torchvision pastes none at the image's size:
    N x 1 x H x W float, 4.8 GB for 100 detections on 12 megapixels), and the list given receives each image's
    N x 1 x 28 x 28 mask probabilities, in the order of its detections. Other models are left as they are."""
    taken: list[torch.Tensor] = []
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    if heads is None or not heads.has_mask():
        yield taken
        return

    def take(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        detections, losses = output
        if not module.training:
            taken.extend(detection.pop("masks") for detection in detections)
        return detections, losses

    handle = heads.register_forward_hook(take)
    try:
        yield taken
    finally:
        handle.remove()


def instance_masks(target: dict[str, Any]) -> torch.Tensor:
    """A target's instances as N x H x W uint8 masks, whichever form it holds them in: for small images and
    tests (a photo's would be the stack this module avoids)."""
    if "masks" in target:
        return target["masks"]
    return split(torch.as_tensor(target["instance_map"]), len(target["labels"]))


MIN_INSTANCE_AREA = 16  # pixels; smaller instances all but vanish at the backbone's stride of 4 and more


def fragments_beside_larger(boxes: torch.Tensor, pixels: list[float]) -> set[int]:
    """The instances under MIN_INSTANCE_AREA pixels whose box touches the box of one of MIN_INSTANCE_AREA or more:
    what the blurred edge of a larger instance reads as (a band of in-between values around it)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    small = [k for k, area in enumerate(pixels) if 0 < area < MIN_INSTANCE_AREA]
    large = [k for k, area in enumerate(pixels) if area >= MIN_INSTANCE_AREA]
    if not small or not large:
        return set()
    grown = boxes[small] + torch.tensor([-2.0, -2.0, 2.0, 2.0])  # touching: within two pixels
    others = boxes[large]
    overlap_x = (grown[:, None, 0] < others[None, :, 2]) & (others[None, :, 0] < grown[:, None, 2])
    overlap_y = (grown[:, None, 1] < others[None, :, 3]) & (others[None, :, 1] < grown[:, None, 3])
    return {small[i] for i in (overlap_x & overlap_y).any(dim=1).nonzero().flatten().tolist()}
