"""Faces in photos: finding the photos, the faces in them, and one record per face.

Photos
    Faces are found by :func:`features.faces.detect_faces` (detector and smallest face:
    :class:`FaceSearch`; dlib's HOG detector by default) and aligned to the UTKFace
    framing on their landmarks; a record's box is the aligned crop's square in photo
    pixels. ``FaceSearch(None)`` (``--no-detect``) takes every image as an
    already-cropped face. Face 0 of a photo is the detector's most confident. Folders
    are walked recursively for :data:`PHOTO_EXTENSIONS` (hidden files skipped), in
    sorted order; files named explicitly are read whatever their extension.

Parallel work
    With ``n_jobs`` > 1, spawned worker processes read and search chunks of
    ``batch_size`` photos; with classical models they also predict them (each worker
    holds a copy and a share of the cores), while a network (CNN or stack) predicts in
    the calling process on whole batches, with every core. Records come back in the
    photos' order.

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
    class, then ``error``. Written as each chunk is done, flushed per photo, so a run that
    is stopped keeps what it did: CSV (``.csv``), JSON Lines (``.jsonl``, one object per
    line, the most robust: every complete line is a record even after a hard kill) or a
    JSON array (``.json``, written incrementally; its closing bracket is written on
    normal end, errors and Ctrl-C, but not when the process is killed). Without an
    output file a table is printed. The writers live in :mod:`pipelines.writers`.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from features.alignment import FaceBox
from features.faces import DEFAULT_DETECTOR, DEFAULT_MIN_SIZE, DETECTORS, detect_faces
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


@dataclass(frozen=True)
class FaceSearch:
    """How faces are found in a photo.

    Attributes
    ----------
    detector : str or None
        One of :data:`features.faces.DETECTORS`; None takes every image as one
        already-cropped face (``--no-detect``).
    min_size : int
        Smallest face searched for (side of its UTKFace crop, photo pixels).
    """

    detector: str | None = DEFAULT_DETECTOR
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self) -> None:
        if self.detector is not None and self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)} or None, got "
                             f"{self.detector!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size!r}")


def faces_in(photo: Image.Image,
             search: FaceSearch = FaceSearch()) -> list[tuple[FaceBox, np.ndarray]]:
    """Face boxes (photo pixels) and their aligned uint8 RGB crops in the UTKFace framing.

    Without a detector the whole photo is one face. Raises :class:`NoFaceError` when
    detection finds none.
    """
    if search.detector is None:
        return [(FaceBox(0, 0, photo.height, photo.width), np.asarray(photo))]
    faces = detect_faces(photo, search.detector, min_size=search.min_size)
    if not faces:
        raise NoFaceError("no face found (for already-cropped faces use --no-detect)")
    return [(face.box, face.crop) for face in faces]


# --- records ----------------------------------------------------------------------------


def _error_record(path: Path, error: Exception) -> dict[str, Any]:
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


def _search(path: Path, search: FaceSearch) -> _Photo:
    try:
        return _Photo(path, faces_in(read_photo(path), search))
    except (ImageLoadError, NoFaceError) as error:
        return _Photo(path, [], error)


def _predict_pending(predictor: FacePredictor,
                     pending: list[_Photo]) -> list[list[dict[str, Any]]]:
    """Predict the faces of the pending photos at once; each photo's records."""
    fields = iter(predictor.predict([crop for photo in pending for _, crop in photo.faces]))
    return [[_error_record(photo.path, photo.error)] if photo.error is not None
            else [{**_face_record(photo.path, index, box), **next(fields)}
                  for index, (box, _) in enumerate(photo.faces)]
            for photo in pending]


def _photo_batches(predictor: FacePredictor, paths: Iterable[Path],
                   search: FaceSearch) -> Iterator[list[list[dict[str, Any]]]]:
    """Search photos one by one and predict them once a batch of crops is gathered."""
    pending: list[_Photo] = []
    n_crops = 0
    for path in paths:
        pending.append(_search(path, search))
        n_crops += len(pending[-1].faces)
        if n_crops >= predictor.batch_size:
            yield _predict_pending(predictor, pending)
            pending, n_crops = [], 0
    if pending:
        yield _predict_pending(predictor, pending)


_worker_predictor: FacePredictor | None = None


def _start_worker(predictor: FacePredictor | None, threads: int) -> None:
    """Worker process set-up: keep the predictor (None: the worker only searches
    photos), and share the cores among the workers."""
    global _worker_predictor
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    _worker_predictor = predictor


def _search_chunk(paths: list[Path], search: FaceSearch) -> list[_Photo]:
    return [_search(path, search) for path in paths]


def _predict_chunk(paths: list[Path], search: FaceSearch) -> list[list[dict[str, Any]]]:
    return [records for batch in _photo_batches(_worker_predictor, paths, search)
            for records in batch]


def _parallel_batches(predictor: FacePredictor, paths: list[Path], search: FaceSearch,
                      n_jobs: int) -> Iterator[list[list[dict[str, Any]]]]:
    """Chunks of ``batch_size`` photos worked on by ``n_jobs`` processes, in order.

    Classical models predict in the workers (each with a copy); a network (CNN or
    stack) stays in this process, where TensorFlow uses every core on whole batches,
    and the workers only read and search the photos.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    in_workers = predictor.network is None
    chunks = [paths[start:start + predictor.batch_size]
              for start in range(0, len(paths), predictor.batch_size)]
    threads = max(1, (os.cpu_count() or 1) // n_jobs) if in_workers else 1
    task = _predict_chunk if in_workers else _search_chunk
    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker,
                             initargs=(predictor if in_workers else None, threads)) as pool:
        running = deque(pool.submit(task, chunk, search) for chunk in chunks[:2 * n_jobs])
        for chunk in [*chunks[2 * n_jobs:], *[None] * len(running)]:
            done = running.popleft().result()
            if chunk is not None:
                running.append(pool.submit(task, chunk, search))
            yield done if in_workers else _predict_pending(predictor, done)


def predict_photos(predictor: FacePredictor, paths: Sequence[str | os.PathLike], *,
                   search: FaceSearch = FaceSearch(), n_jobs: int = 1,
                   progress: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Predict every face of every photo, in batches; yield each photo's records in order.

    Parameters
    ----------
    predictor : FacePredictor
        Loaded models.
    paths : sequence of path-like
        Photos.
    search : FaceSearch
        Detector and smallest face; ``FaceSearch(None)`` takes each photo as one
        already-cropped face.
    n_jobs : int
        Worker processes for chunks of ``predictor.batch_size`` photos (see the module
        docstring); 1, or no more photos than one chunk, works in this process (starting
        workers costs seconds). The records are the same whatever ``n_jobs``, up to
        float rounding of batched arithmetic.
    progress : bool
        Show a tqdm progress bar (photos done).

    Yields
    ------
    list of dict
        The records of one photo: one per face, or one with ``error`` (no face, or an
        unreadable file; logged as a warning). Keys: :data:`FACE_COLUMNS`, the
        predictor's columns and ``error``, where they apply.
    """
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs!r}")
    paths = list(map(Path, paths))
    in_process = n_jobs == 1 or len(paths) <= predictor.batch_size
    batches = (_photo_batches(predictor, paths, search) if in_process
               else _parallel_batches(predictor, paths, search, n_jobs))
    with tqdm(total=len(paths), desc="predicting", unit="photo", disable=not progress) as bar:
        for batch in batches:
            for records in batch:
                if "face" not in records[0]:
                    logger.warning("%s: %s", records[0]["file"], records[0]["error"])
                bar.update()
                yield records


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
                      paths: Sequence[str | os.PathLike], *, search: FaceSearch = FaceSearch(),
                      n_jobs: int = 1, progress: bool = True) -> PredictionSummary:
    """Predict the photos (see :func:`predict_photos`) and write each photo's records as
    soon as they are done."""
    summary = PredictionSummary()
    for records in predict_photos(predictor, paths, search=search, n_jobs=n_jobs,
                                  progress=progress):
        writer.write(records)
        summary.photos += 1
        if records[0].get("error"):
            summary.failed += 1
        else:
            summary.faces += len(records)
    return summary


