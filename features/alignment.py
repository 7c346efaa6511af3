"""Face alignment to the UTKFace framing with dlib's 5-point landmarks.

UTKFace's crops were made by aligning faces on facial landmarks, so they agree closely
on where the eyes and nose sit: over 3,042 crops of the shared split's training part
(every 5th; 52 had no face found by dlib's HOG detector), dlib's 5-point landmarks,
placed in the detector's box, lie at :data:`UTKFACE_LANDMARKS` of the 200x200 crop with
a standard deviation of 2.5-5 px. :func:`align_face` maps a photo's five landmarks onto
these positions with the least-squares similarity transform (rotation, uniform scale,
shift; scikit-image's ``SimilarityTransform``) and resamples the photo into a 200x200
crop, so a face in a photo reaches a model framed, levelled and scaled as the training
crops were. :func:`measure_template` recomputes the positions from any crops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from skimage.transform import SimilarityTransform, warp

#: Output side in pixels: UTKFace's crops are 200x200.
ALIGNED_SIZE = 200
#: (x, y) of dlib's 5 landmarks (outer and inner corner of the eye on the image's right,
#: then of the left one, the base of the nose) in a 200x200 UTKFace crop: the mean over
#: 3,042 training crops, from ``measure_template(train_paths[::5])``.
UTKFACE_LANDMARKS = np.array([[151.94, 59.94], [121.21, 61.64], [44.32, 59.73],
                              [75.05, 61.61], [98.03, 117.61]])


@dataclass(frozen=True)
class FaceBox:
    """An axis-aligned box in image pixels: top-left corner and size."""

    top: int
    left: int
    height: int
    width: int

    def iou(self, other: "FaceBox") -> float:
        """Intersection over union with another box."""
        rows = max(0, min(self.top + self.height, other.top + other.height)
                   - max(self.top, other.top))
        cols = max(0, min(self.left + self.width, other.left + other.width)
                   - max(self.left, other.left))
        inter = rows * cols
        return inter / (self.height * self.width + other.height * other.width - inter)


@dataclass(frozen=True)
class AlignedFace:
    """A face cut out of a photo in the UTKFace framing.

    Attributes
    ----------
    crop : ndarray of uint8, shape (200, 200, 3)
        The aligned face.
    box : FaceBox
        The crop's square in photo pixels (its centre and side; rotation left out).
    angle : float
        Roll of the face in degrees, counter-clockwise in the photo as displayed.
    score : float or None
        The detector's confidence, where a detector found the face.
    """

    crop: np.ndarray
    box: FaceBox
    angle: float
    score: float | None = None


def framing_transform(landmarks: np.ndarray) -> SimilarityTransform:
    """The similarity transform from crop to photo pixels that best puts the template
    (:data:`UTKFACE_LANDMARKS`) on ``landmarks`` ((5, 2) array of photo (x, y))."""
    landmarks = np.asarray(landmarks, dtype=float)
    if landmarks.shape != UTKFACE_LANDMARKS.shape or not np.isfinite(landmarks).all():
        raise ValueError(f"expected 5 finite (x, y) landmarks, got an array of shape "
                         f"{landmarks.shape}")
    return SimilarityTransform.from_estimate(UTKFACE_LANDMARKS, landmarks)


def align_face(photo: np.ndarray, landmarks: np.ndarray,
               score: float | None = None) -> AlignedFace:
    """Cut the face with these landmarks out of ``photo`` in the UTKFace framing.

    Parameters
    ----------
    photo : ndarray of uint8, shape (H, W, 3) or (H, W)
        The photo.
    landmarks : ndarray, shape (5, 2)
        dlib's 5 landmarks of the face, (x, y) in photo pixels.
    score : float, optional
        The detector's confidence, kept with the face.

    Returns
    -------
    AlignedFace
        Bilinear resampling; beyond the photo's border its edge pixels are repeated.
    """
    transform = framing_transform(landmarks)
    crop = warp(photo, transform, output_shape=(ALIGNED_SIZE, ALIGNED_SIZE), order=1,
                mode="edge", preserve_range=True)
    (col, row), = transform([[ALIGNED_SIZE / 2, ALIGNED_SIZE / 2]])
    side = ALIGNED_SIZE * transform.scale
    box = FaceBox(round(row - side / 2), round(col - side / 2), round(side), round(side))
    angle = -float(np.degrees(transform.rotation))
    return AlignedFace(np.rint(crop).astype(np.uint8), box, angle, score)


def measure_template(paths: Iterable[str | os.PathLike]) -> tuple[np.ndarray, int]:
    """Mean 5-point landmark positions of UTKFace crops, as placed in dlib's HOG box.

    Parameters
    ----------
    paths : iterable of path-like
        Crops in the UTKFace framing (read at 200x200 RGB).

    Returns
    -------
    template : ndarray, shape (5, 2)
        Mean (x, y) in a 200x200 crop.
    missed : int
        Crops in which the detector found no face (left out of the mean).
    """
    from features.embeddings import face_detector
    from features.faces import dlib_landmarks
    from features.io import load_image

    points, missed = [], 0
    for path in paths:
        image = load_image(path, (ALIGNED_SIZE, ALIGNED_SIZE), "rgb")
        rects = face_detector()(image, 0)
        if len(rects) == 0:
            missed += 1
            continue
        points.append(dlib_landmarks(image, max(rects, key=lambda rect: rect.area())))
    if not points:
        raise ValueError("no face found in any of the crops")
    return np.mean(points, axis=0), missed
