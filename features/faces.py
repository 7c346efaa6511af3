"""Face detection in user photos and cropping to the UTKFace framing.

Detection uses the LBP frontal-face cascade that scikit-image ships, so nothing is
downloaded. Calibration (a UTKFace 200x200 crop pasted on a plain 400x400 background,
100 faces): the cascade's box has a median size of 192 px (0.96 of the crop) and its
top sits 14 px (0.07 of the box) above the crop's top, so the UTKFace framing of a
detected box is the box grown by ``CROP_SCALE`` around a centre moved down by
``CROP_SHIFT`` of the box.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

CROP_SCALE = 200 / 192
CROP_SHIFT = 0.07


@dataclass(frozen=True)
class FaceBox:
    """A face in image pixels: top-left corner, size, and how many raw detections agreed."""

    top: int
    left: int
    height: int
    width: int
    votes: int = 1

    def iou(self, other: "FaceBox") -> float:
        """Intersection over union with another box."""
        rows = max(0, min(self.top + self.height, other.top + other.height)
                   - max(self.top, other.top))
        cols = max(0, min(self.left + self.width, other.left + other.width)
                   - max(self.left, other.left))
        inter = rows * cols
        return inter / (self.height * self.width + other.height * other.width - inter)


@lru_cache(maxsize=1)
def _cascade():
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def _group(boxes: list[FaceBox], min_overlap: float) -> list[FaceBox]:
    """Merge overlapping raw detections into one box each (their mean), most votes first."""
    groups: list[list[FaceBox]] = []
    for box in sorted(boxes, key=lambda b: -b.width):
        for group in groups:
            if group[0].iou(box) >= min_overlap:
                group.append(box)
                break
        else:
            groups.append([box])
    merged = []
    for group in groups:
        mean = np.mean([(b.top, b.left, b.height, b.width) for b in group], axis=0)
        merged.append(FaceBox(*np.rint(mean).astype(int).tolist(), votes=len(group)))
    return sorted(merged, key=lambda b: (-b.votes, -b.width))


def detect_faces(image: np.ndarray, *, scale_factor: float = 1.15, min_size: int = 40,
                 min_votes: int = 1, min_overlap: float = 0.3,
                 max_side: int = 800) -> list[FaceBox]:
    """Find frontal faces in a grayscale image.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W)
        Grayscale photo.
    scale_factor : float
        Step between detection scales (smaller finds more faces, slower).
    min_size : int
        Smallest face side in pixels of ``image``.
    min_votes : int
        Raw detections a face needs after grouping.
    min_overlap : float
        Overlap (IoU) above which raw detections are grouped as one face.
    max_side : int
        Larger photos are searched at this longest side (boxes are mapped back).

    Returns
    -------
    list of FaceBox
        Faces in ``image`` coordinates, most supported first.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a grayscale (H, W) image, got shape {image.shape}")
    scale = min(1.0, max_side / max(image.shape))
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    side = min(image.shape)
    found = _cascade().detect_multi_scale(
        image, scale_factor=scale_factor, step_ratio=1,
        min_size=(max(24, round(min_size * scale)),) * 2, max_size=(side, side))
    boxes = [FaceBox(d["r"], d["c"], d["height"], d["width"]) for d in found]
    faces = [b for b in _group(boxes, min_overlap) if b.votes >= min_votes]
    return [FaceBox(*(round(v / scale) for v in (b.top, b.left, b.height, b.width)),
                    votes=b.votes) for b in faces]


def crop_face(image: Image.Image, box: FaceBox) -> Image.Image:
    """Square crop of ``box`` in the UTKFace framing; outside the photo is edge-padded."""
    side = max(box.height, box.width) * CROP_SCALE
    centre_row = box.top + box.height / 2 + CROP_SHIFT * box.height
    centre_col = box.left + box.width / 2
    top, left = round(centre_row - side / 2), round(centre_col - side / 2)
    side = round(side)
    pixels = np.asarray(image)
    pad = max(0, -top, -left, top + side - pixels.shape[0], left + side - pixels.shape[1])
    if pad:
        widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (pixels.ndim - 2)
        pixels = np.pad(pixels, widths, mode="edge")
    return Image.fromarray(pixels[top + pad:top + pad + side, left + pad:left + pad + side])
