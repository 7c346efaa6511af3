"""Faces in photos: finding the photos, the faces in them, and one record per face.

Photos
    Each face is found with :func:`features.faces.detect_faces` on the grayscale photo
    and cropped in the UTKFace framing (:func:`features.faces.crop_face`); with
    ``detect=False`` (``--no-detect``) every image is taken as an already-cropped face.
    Face 0 of a photo is the detection most raw detections agreed on. Folders are walked
    recursively for :data:`PHOTO_EXTENSIONS` (hidden files skipped), in sorted order;
    files named explicitly are read whatever their extension.

Bad files
    Photos are decoded as :mod:`features.io` decodes them: any Pillow mode, so a 16-bit
    PNG works. Empty, truncated, non-image and over-``features.io.MAX_PIXELS``
    (decompression bomb) files, photos without a face, and **animated or multi-frame
    images (GIF, WebP, APNG, multi-page TIFF), which are refused** rather than judged
    from an arbitrary frame, each give a warning and one record with an ``error``; the
    run goes on. A face that a descriptor model's dlib check finds no face in (a false
    detection, a blank crop) gets a record with its box and an ``error`` instead of
    that model's predictions. (A camera's multi-picture MPO JPEG is read as its primary
    image.)

Output
    One record per face (per file when it failed): :data:`FACE_COLUMNS`, then per task
    the prediction and, for a model with ``predict_proba``, ``p_<task>_<class>`` per
    class, then ``error``. Written as each batch is done, flushed per photo, so a run that
    is stopped keeps what it did: CSV (``.csv``), JSON Lines (``.jsonl``, one object per
    line, the most robust: every complete line is a record even after a hard kill) or a
    JSON array (``.json``, written incrementally; its closing bracket is written on
    normal end, errors and Ctrl-C, but not when the process is killed). Without an
    output file a table is printed. The writers live in :mod:`pipelines.writers`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from features.faces import FaceBox, crop_face, detect_faces
from features.io import ImageLoadError, convert_mode, open_image
from pipelines.predictor import FacePredictor
from pipelines.writers import RecordWriter

logger = logging.getLogger(__name__)

PHOTO_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp",
                                     ".tif", ".tiff")
FACE_COLUMNS: tuple[str, ...] = ("file", "face", "top", "left", "height", "width")


class NoFaceError(ValueError):
    """A photo in which no face was found."""


def find_photos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files to predict: files as given, folders walked recursively.

    Folders contribute files with an extension in :data:`PHOTO_EXTENSIONS` (any case),
    sorted, skipping hidden files and folders.

    Raises
    ------
    FileNotFoundError
        If an input does not exist.
    """
    photos: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            photos += sorted(
                file for file in given.rglob("*")
                if file.suffix.lower() in PHOTO_EXTENSIONS and file.is_file()
                and not any(part.startswith(".") for part in file.relative_to(given).parts))
        elif given.exists():
            photos.append(given)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return photos


def read_photo(path: str | os.PathLike) -> Image.Image:
    """Decode a photo at full size as RGB, as :func:`features.io.load_image` decodes.

    Raises
    ------
    features.io.ImageLoadError
        See :func:`features.io.open_image`.
    """
    return convert_mode(open_image(path), 3)


def faces_in(photo: Image.Image, detect: bool = True) -> list[tuple[FaceBox, np.ndarray]]:
    """Face boxes and their uint8 RGB crops in the UTKFace framing.

    With ``detect=False`` the whole photo is one face. Raises :class:`NoFaceError`
    when detection finds none.
    """
    if not detect:
        return [(FaceBox(0, 0, photo.height, photo.width), np.asarray(photo))]
    boxes = detect_faces(np.asarray(photo.convert("L")))
    if not boxes:
        raise NoFaceError("no face found (for already-cropped faces use --no-detect)")
    return [(box, np.asarray(crop_face(photo, box))) for box in boxes]


# --- records ----------------------------------------------------------------------------


def _error_record(path: Path, error: Exception) -> dict[str, Any]:
    logger.warning("%s", error if str(error).startswith(str(path)) else f"{path}: {error}")
    return {"file": str(path), "error": str(error).removeprefix(f"{path}: ")}


def _face_record(path: Path, index: int, box: FaceBox) -> dict[str, Any]:
    return {"file": str(path), "face": index, "top": box.top, "left": box.left,
            "height": box.height, "width": box.width}


@dataclass
class _Photo:
    """A photo read and searched: its faces, or why it failed."""

    path: Path
    faces: list[tuple[FaceBox, np.ndarray]]
    error: Exception | None = None


def _search(path: Path, detect: bool) -> _Photo:
    try:
        return _Photo(path, faces_in(read_photo(path), detect))
    except (ImageLoadError, NoFaceError) as error:
        return _Photo(path, [], error)


def _predict_pending(predictor: FacePredictor,
                     pending: list[_Photo]) -> Iterator[list[dict[str, Any]]]:
    """Predict the faces of the pending photos at once; yield each photo's records."""
    fields = iter(predictor.predict([crop for photo in pending for _, crop in photo.faces]))
    for photo in pending:
        if photo.error is not None:
            yield [_error_record(photo.path, photo.error)]
        else:
            yield [{**_face_record(photo.path, index, box), **next(fields)}
                   for index, (box, _) in enumerate(photo.faces)]


def predict_photos(predictor: FacePredictor, paths: Sequence[str | os.PathLike], *,
                   detect: bool = True, progress: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Predict every face of every photo, in batches; yield each photo's records in order.

    Parameters
    ----------
    predictor : FacePredictor
        Loaded models.
    paths : sequence of path-like
        Photos.
    detect : bool
        Find faces; otherwise each photo is one already-cropped face.
    progress : bool
        Show a tqdm progress bar (photos read).

    Yields
    ------
    list of dict
        The records of one photo: one per face, or one with ``error`` (no face, or an
        unreadable file; logged as a warning). Keys: :data:`FACE_COLUMNS`, the
        predictor's columns and ``error``, where they apply.
    """
    pending: list[_Photo] = []
    n_crops = 0
    for path in tqdm(list(map(Path, paths)), desc="predicting", unit="photo",
                     disable=not progress):
        pending.append(_search(path, detect))
        n_crops += len(pending[-1].faces)
        if n_crops >= predictor.batch_size:
            yield from _predict_pending(predictor, pending)
            pending, n_crops = [], 0
    yield from _predict_pending(predictor, pending)


def record_columns(predictor: FacePredictor) -> list[str]:
    """Every column of an output record, in order."""
    return [*FACE_COLUMNS, *predictor.columns, "error"]


@dataclass
class PredictionSummary:
    """Counts of a finished prediction run."""

    photos: int = 0
    faces: int = 0
    failed: int = 0


def write_predictions(writer: RecordWriter, predictor: FacePredictor,
                      paths: Sequence[str | os.PathLike], *, detect: bool = True,
                      progress: bool = True) -> PredictionSummary:
    """Predict the photos and write each photo's records as soon as they are done."""
    summary = PredictionSummary()
    for records in predict_photos(predictor, paths, detect=detect, progress=progress):
        writer.write(records)
        summary.photos += 1
        if records[0].get("error"):
            summary.failed += 1
        else:
            summary.faces += len(records)
    return summary


