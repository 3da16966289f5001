"""What keypoints mean: which point a mirror image turns each one into, and how far off a prediction may be.

A horizontal flip moves a left wrist to where a right wrist would be, so after flipping the
pixels the points must also swap names, or the model learns mirrored labels. The flip map
comes from the names (`left_eye` <-> `right_eye`, `wristL` <-> `wristR`, ...) or from
--keypoint-flip-map; where the names say "left" or "right" but the partner is missing, or two
points share a name, nothing is guessed: the run stops and says so.

COCO's keypoint AP scores a predicted point by its distance from the labelled one relative to
the object's size and the point's sigma (how precisely people place it): COCO's 17 person
points have their own sigmas; other points get --keypoint-sigmas, or DEFAULT_SIGMA.
"""

from __future__ import annotations

import re

import torch

from utils import UserError

COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)  # fmt: skip
# pycocotools' sigmas for those 17 points (COCOeval's Params.kpt_oks_sigmas).
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                      0.087, 0.087, 0.089, 0.089)  # fmt: skip
# Other points: the mean of COCO's, as tolerant as an average body joint.
DEFAULT_SIGMA = round(sum(COCO_PERSON_SIGMAS) / len(COCO_PERSON_SIGMAS), 3)

SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}
# The words of a name: "left_wrist", "leftWrist", "wrist-L", "LWrist" -> left|wrist, left|Wrist, wrist|L, L|Wrist.
WORDS = re.compile(r"[A-Z](?=[A-Z][a-z])|[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def _mirrored(name: str) -> str | None:
    """`name` with its side word swapped (left_eye -> right_eye, eyeL -> eyeR); None if no word names a side."""
    for word in WORDS.finditer(name):
        other = SIDES.get(word.group().lower())
        if other is None:
            continue
        text = word.group()
        other = other.upper() if text.isupper() else other.title() if text[0].isupper() else other
        return name[: word.start()] + other + name[word.end() :]
    return None


def flip_permutation(names: list[str], flip_map: str | None = None) -> list[int]:
    """For K keypoint `names`: the index each point takes its label from after a mirror flip.

    flip_map: "a:b,c:d" pairs of names (or 0-based indices) that swap, every other point keeping its
    own; None: pairs found from the names. A UserError says when the names do not tell.
    """
    if flip_map is not None:
        permutation = list(range(len(names)))
        for pair in filter(None, (p.strip() for p in flip_map.split(","))):
            ends = [end.strip() for end in pair.split(":")]
            if len(ends) != 2:
                raise UserError(f"--keypoint-flip-map {flip_map}: {pair!r} is not a pair; write a:b,c:d")
            a, b = (_keypoint_index(end, names, flip_map) for end in ends)
            permutation[a], permutation[b] = b, a
        return permutation
    duplicates = sorted({name for name in names if names.count(name) > 1 or not name.strip()})
    if duplicates:
        raise UserError(
            f"keypoints {duplicates} are named twice or not at all, so a flip cannot tell them apart; rename them, "
            "give --keypoint-flip-map, or train with --augmentation none"
        )
    index = {name: k for k, name in enumerate(names)}
    permutation = []
    for name in names:
        other = _mirrored(name)
        if other is not None and other not in index:
            raise UserError(
                f"keypoint {name!r} names a side but there is no {other!r} to swap it with when an image is "
                "mirrored; give --keypoint-flip-map (a:b pairs) or train with --augmentation none"
            )
        permutation.append(index[other] if other is not None else index[name])
    return permutation


def _keypoint_index(end: str, names: list[str], flip_map: str) -> int:
    if end in names:
        return names.index(end)
    if end.isdigit() and int(end) < len(names):
        return int(end)
    raise UserError(f"--keypoint-flip-map {flip_map}: {end!r} is not one of the keypoints {names}")


def keypoint_sigmas(names: list[str], sigmas: list[float] | None = None) -> list[float]:
    """The OKS sigma of each of K keypoints: `sigmas` (K values, or one for all), COCO's for COCO's person
    points, else DEFAULT_SIGMA each."""
    if sigmas:
        if len(sigmas) == 1:
            sigmas = sigmas * len(names)
        if len(sigmas) != len(names) or min(sigmas) <= 0:
            raise UserError(
                f"--keypoint-sigmas: {len(sigmas)} values for {len(names)} keypoints; give one positive value for "
                "all or one per keypoint"
            )
        return list(sigmas)
    if tuple(names) == COCO_PERSON_KEYPOINTS:
        return list(COCO_PERSON_SIGMAS)
    return [DEFAULT_SIGMA] * len(names)


def labelled_inside(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """For ... x K x 3 keypoints, which are labelled (visibility 1 or 2) and lie on the image's pixels
    (COCO's pixel indices: 0 <= x < width, 0 <= y < height); the others count as unlabelled."""
    x, y, visibility = points.unbind(-1)
    return (visibility > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
