"""Command line and functions: age, gender and ethnicity of the faces in new photos.

Run ``python -m pipelines.predict [MODEL] IMAGE_OR_FOLDER... [--out results.csv]``;
without a model, the small model shipped with the package (:func:`bundled_model`:
dlib's face descriptors into light heads) predicts.

Models
    ``MODEL`` is what :mod:`pipelines.run` or :mod:`pipelines.cnn_training` wrote: a run
    folder (``<task>_model.joblib`` per task, a CNN ``model.keras`` or a stack's
    ``stack_model.joblib``), or one model file (a classical or stacked ``.joblib`` with
    its metadata JSON beside it, a CNN ``.keras``, or a pickled CNN ``.joblib`` with
    metadata). Every ``.joblib`` goes through
    :func:`models.safety.load_model`, which checks the SHA-256 recorded in the metadata
    before unpickling. A ``.joblib`` whose metadata records another ``utkface-toolkit``
    version than the installed one is **refused** (a pickled pipeline runs this
    package's feature code, which may have changed); ``allow_other_version`` /
    ``--allow-other-version`` uses it anyway, with a warning. A ``.keras`` file holds no
    code and no metadata: it is loaded by Keras' safe loader, without a version check.
    When a folder holds two models of one task, the stack is used first, then the
    per-task classical file.
    Age groups come from the predicted age (:func:`pipelines.labels.age_group`), so age
    and group always agree; an ``age_group`` classifier is used only without an age
    model. Predicted ages are clipped at 0, as the CNN does.

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

Batching
    A face's prediction never depends on the other faces of a run, and is bit for bit
    what the saved model's own ``predict([crop])`` gives. The crops of several photos are
    gathered into a batch; a classical pipeline's first step (the stateless image ->
    features step) runs over the whole batch, once for all tasks whose first steps are
    equal, and its learnt steps (scaling, PCA, model) run face by face: BLAS matrix
    products differ in the last bits between one row and many. A CNN or a stack runs
    face by face for the same reason: TensorFlow's CPU kernels give a face slightly
    different outputs (about 1e-8) at different positions of a batch.

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

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

import joblib
import numpy as np
from PIL import Image
from sklearn.pipeline import Pipeline
from tqdm.auto import tqdm

from features.faces import FaceBox, crop_face, detect_faces
from features.io import ImageLoadError, convert_mode, open_image
from models import cnn, safety
from models.stack import StackedFaceModel, is_multitask, labels_of
from pipelines.classical import PACKAGE, versions
from pipelines.cnn_training import MODEL_FILE as CNN_MODEL_FILE
from pipelines.labels import AGE_GROUP_NAMES, TASKS, age_group
from pipelines.metrics import class_names
from pipelines.writers import OUTPUT_SUFFIXES, RecordWriter, TableWriter, open_writer

logger = logging.getLogger(__name__)

PHOTO_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp",
                                     ".tif", ".tiff")
FACE_COLUMNS: tuple[str, ...] = ("file", "face", "top", "left", "height", "width")
DEFAULT_BATCH_SIZE = 32
#: The stacked model of a ``pipelines.run --model stack`` run folder.
STACK_FILE = "stack_model.joblib"
#: Package data folder (in ``pipelines``) of the bundled model: a run folder.
BUNDLED_MODEL_DIR = "pretrained"


class ModelError(Exception):
    """A model that is missing, corrupt, fails its checksum or is of another version."""


class NoFaceError(ValueError):
    """A photo in which no face was found."""


# --- models -----------------------------------------------------------------------------


@dataclass
class ClassicalTask:
    """A saved classical pipeline of one task, split for batched prediction.

    Attributes
    ----------
    task : str
        Task it predicts.
    features : Pipeline
        The stateless first step (images -> features), run over a batch of crops.
    learnt : Pipeline
        The remaining steps, run face by face.
    features_key : str
        Hash of ``features``: tasks with equal keys share one extraction.
    classes : ndarray or None
        Class codes of the ``predict_proba`` columns; None without probabilities.
    """

    task: str
    features: Pipeline
    learnt: Pipeline
    features_key: str
    classes: np.ndarray | None

    @classmethod
    def from_pipeline(cls, task: str, pipeline: Pipeline) -> ClassicalTask:
        """Split a pipeline saved by :mod:`pipelines.classical`."""
        has_proba = task != "age" and hasattr(pipeline, "predict_proba")
        return cls(task, pipeline[:1], pipeline[1:], joblib.hash(pipeline[0]),
                   np.asarray(pipeline.classes_) if has_proba else None)

    def outputs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and class probabilities (columns in code order) of feature rows.

        A row with NaN features (a face the descriptor model does not find) gets NaN.
        """
        found = ~np.isnan(features).any(axis=1)
        values = np.full(len(features), np.nan)
        proba = (np.full((len(features), len(class_names(self.task))), np.nan)
                 if self.classes is not None else None)
        for i in np.flatnonzero(found):
            values[i] = self.learnt.predict(features[i:i + 1])[0]
            if proba is not None:
                proba[i] = 0.0
                proba[i, self.classes] = self.learnt.predict_proba(features[i:i + 1])[0]
        return values, proba


class FacePredictor:
    """Every task model of a run, predicting from face crops.

    Parameters
    ----------
    classical : sequence of ClassicalTask
        Classical models, one task each.
    network : CNNPredictor or StackedFaceModel, optional
        A multi-task model, used for ``network_tasks``.
    network_tasks : sequence of str
        Tasks taken from ``network``.
    batch_size : int
        Faces gathered before they are predicted (see the module docstring).
    """

    def __init__(self, classical: Sequence[ClassicalTask],
                 network: cnn.CNNPredictor | StackedFaceModel | None = None,
                 network_tasks: Sequence[str] = (), batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.classical = list(classical)
        self.network = network
        self.network_tasks = tuple(network_tasks)
        self.batch_size = batch_size
        found = {model.task for model in self.classical} | set(self.network_tasks)
        #: Tasks predicted, in :data:`pipelines.labels.TASKS` order.
        self.tasks = tuple(task for task in TASKS if task in found)

    def _has_proba(self, task: str) -> bool:
        if task in self.network_tasks:
            return task != "age"
        return next(m for m in self.classical if m.task == task).classes is not None

    @property
    def columns(self) -> list[str]:
        """Prediction columns of a record, in order."""
        columns = []
        for task in self.tasks:
            if task == "age":
                columns += ["age", "age_group"]
                continue
            columns.append(task)
            if self._has_proba(task):
                columns += [f"p_{task}_{name}" for name in class_names(task)]
        return columns

    def _classical_outputs(self, crops: Sequence[np.ndarray]) -> dict[str, tuple]:
        extracted: dict[str, np.ndarray] = {}
        outputs = {}
        for model in self.classical:
            if model.features_key not in extracted:
                extracted[model.features_key] = model.features.transform(list(crops))
            outputs[model.task] = model.outputs(extracted[model.features_key])
        return outputs

    def _network_outputs(self, crops: Sequence[np.ndarray]) -> dict[str, tuple]:
        if self.network is None:
            return {}
        outputs = [self.network.task_outputs([crop]) for crop in crops]
        combined = {task: np.concatenate([output[task] for output in outputs])
                    for task in self.network_tasks}
        return {task: (values, None) if task == "age"
                else (labels_of(task, values), values)
                for task, values in combined.items()}

    def predict(self, crops: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """Predictions for face crops.

        Parameters
        ----------
        crops : sequence of ndarray
            uint8 faces (H, W, 3) RGB or (H, W) gray, any size, in the UTKFace framing.

        Returns
        -------
        list of dict
            Per crop, the values of :attr:`columns`: class names, probabilities as
            floats, age in years (>= 0) and its age group name.
        """
        if not crops:
            return []
        outputs = {**self._network_outputs(crops), **self._classical_outputs(crops)}
        return [_fields(outputs, row) for row in range(len(crops))]


def _fields(outputs: dict[str, tuple], row: int) -> dict[str, Any]:
    """One face's record values from per-task (predictions, probabilities) arrays."""
    fields: dict[str, Any] = {}
    unjudged = []
    for task in TASKS:
        if task not in outputs:
            continue
        values, proba = outputs[task]
        if np.isnan(values[row]):
            unjudged.append(task)
            continue
        if task == "age":
            age = max(float(values[row]), 0.0)
            fields.update(age=age, age_group=AGE_GROUP_NAMES[int(age_group(age))])
            continue
        names = class_names(task)
        fields[task] = names[int(values[row])]
        if proba is not None:
            fields.update({f"p_{task}_{name}": float(p) for name, p in zip(names, proba[row])})
    if unjudged:
        fields["error"] = (f"the face descriptor finds no face in this crop: no "
                           f"{', '.join(unjudged)} prediction")
    return fields


def _check_version(path: Path, metadata: dict[str, Any], allow_other_version: bool) -> None:
    """Refuse (or, if allowed, warn about) a model saved by another package version."""
    saved = metadata.get("package_version") or metadata.get("versions", {}).get(PACKAGE)
    installed = versions()[PACKAGE]
    if saved == installed:
        return
    message = (f"{path} was saved by {PACKAGE} {saved or '(version not recorded)'}, but "
               f"{installed} is installed")
    if not allow_other_version:
        raise ModelError(f"{message}; its features may be computed differently now. Retrain "
                         f"it, or pass --allow-other-version to use it anyway")
    logger.warning("%s: used anyway (--allow-other-version)", message)


def _load_joblib(path: Path, allow_other_version: bool) -> dict[str, Any]:
    metadata = safety.read_metadata(path)
    _check_version(path, metadata, allow_other_version)
    model = safety.load_model(path)
    if isinstance(model, cnn.CNNPredictor):
        _ = model.network  # decode the network now, before any output is written
        return {task: model for task in model.tasks}
    if isinstance(model, StackedFaceModel):
        for member in model.members.values():
            if isinstance(member, cnn.CNNPredictor):
                _ = member.network
        return {task: model for task in model.tasks}
    if isinstance(model, Pipeline) and metadata.get("task") in TASKS:
        return {metadata["task"]: model}
    raise ModelError(f"{path} holds a {type(model).__name__} (task {metadata.get('task')!r}), "
                     f"not a model saved by pipelines.run, a CNNPredictor or a "
                     f"StackedFaceModel")


def load_model_file(path: str | os.PathLike,
                    allow_other_version: bool = False) -> dict[str, Any]:
    """Load one saved model and name the tasks it predicts.

    Parameters
    ----------
    path : path-like
        A ``.joblib`` (checksum-verified, version-checked; see the module docstring) or
        a CNN ``.keras``.
    allow_other_version : bool
        Use a ``.joblib`` saved by another ``utkface-toolkit`` version, with a warning.

    Returns
    -------
    dict
        Task -> model (a scikit-learn ``Pipeline`` or a ``CNNPredictor``).

    Raises
    ------
    ModelError
        For a missing, unreadable, corrupt or tampered file, a missing or mismatched
        checksum, or another package version; nothing is predicted then.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file at {path}")
    try:
        if path.suffix == ".keras":
            predictor = cnn.load_model(path)
            return {task: predictor for task in predictor.tasks}
        if path.suffix == ".joblib":
            return _load_joblib(path, allow_other_version)
    except ModelError:
        raise
    except safety.ChecksumError as error:
        raise ModelError(str(error)) from None
    except Exception as error:  # unpickling and Keras fail in many ways: all mean "corrupt"
        raise ModelError(f"{path}: cannot load the model, the file is corrupt or not a "
                         f"model ({type(error).__name__}: {error})") from error
    raise ModelError(f"{path}: not a model file (expected .joblib or .keras)")


def bundled_model() -> Path:
    """The run folder of the small model shipped with the package (package data).

    Raises
    ------
    ModelError
        If the installed package lacks it.
    """
    folder = Path(str(resources.files("pipelines") / BUNDLED_MODEL_DIR))
    if not folder.is_dir():
        raise ModelError(f"the bundled model is missing from the installed package "
                         f"({folder}); reinstall it, or give a model")
    return folder


def _run_folder_files() -> list[str]:
    return [STACK_FILE, *(f"{task}_model.joblib" for task in TASKS), CNN_MODEL_FILE]


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model files of a run folder (stack, classical per task, CNN), or ``[path]``.

    Raises
    ------
    ModelError
        If ``path`` does not exist, or is a folder without model files.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _run_folder_files() if (path / name).is_file()]
        if not found:
            raise ModelError(f"{path} holds no model: expected <task>_model.joblib files "
                             f"(pipelines.run), {CNN_MODEL_FILE} (a CNN run) or "
                             f"{STACK_FILE} (a stack)")
        return found
    if not path.exists():
        raise ModelError(f"no model file or run folder at {path}")
    return [path]


def load_predictor(path: str | os.PathLike, *, allow_other_version: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> FacePredictor:
    """Load every task model of a run folder or model file into a :class:`FacePredictor`.

    A task found in two files is taken from the first (:func:`model_files` order); an
    ``age_group`` classifier is left out when an age model is loaded.

    Raises
    ------
    ModelError
        See :func:`load_model_file` and :func:`model_files`.
    """
    chosen: dict[str, Any] = {}
    for file in model_files(path):
        for task, model in load_model_file(file, allow_other_version).items():
            if task in chosen:
                logger.info("%s: not used for %s, taken from an earlier file", file, task)
            else:
                chosen[task] = model
                logger.info("%s predicted by %s", task, file)
    if "age" in chosen and chosen.pop("age_group", None) is not None:
        logger.info("age groups come from the age predictions, not the age_group model")
    networks = {id(model): model for model in chosen.values() if is_multitask(model)}
    if len(networks) > 1:
        raise ModelError(f"{path} holds more than one multi-task model (CNN or stack); "
                         f"point at one model file")
    classical = [ClassicalTask.from_pipeline(task, model) for task, model in chosen.items()
                 if isinstance(model, Pipeline)]
    network = next(iter(networks.values()), None)
    return FacePredictor(classical, network,
                         [task for task, model in chosen.items() if model is network],
                         batch_size)


# --- photos -----------------------------------------------------------------------------


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


# --- command line -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pipelines.predict``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.predict",
        description="Predict age, gender and ethnicity of the faces in photos with models "
                    "saved by pipelines.run (or a CNN run): faces are detected, cropped in "
                    "the UTKFace framing and predicted; one result per face.",
        epilog="Exit status: 0 every photo gave at least one face, 1 some photos failed (no "
               "face, unreadable, animated), 2 usage or model error (nothing is written "
               "then). Loading a .joblib model runs code from it: use only models you "
               "trust; its SHA-256 is checked against the metadata JSON beside it. "
               "Example: python -m pipelines.predict runs/classical photos/ --out faces.csv")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="[MODEL] IMAGE_OR_FOLDER",
                        help="an optional model first (as --model), then photos, or folders "
                             "searched recursively for "
                             f"{', '.join(PHOTO_EXTENSIONS)} files")
    parser.add_argument("--model", type=Path, default=None,
                        help="run folder (<task>_model.joblib files, a CNN model.keras or a "
                             "stack_model.joblib) or one model file (.joblib with its "
                             "metadata .json, or .keras); default: the first argument when it "
                             "is one, else the small model bundled with the package "
                             "(descriptors + light heads)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file, written as it goes: .csv, .jsonl (JSON Lines, one "
                             "object per face) or .json (one array); without it a table is "
                             "printed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (without it, it is refused)")
    parser.add_argument("--no-detect", action="store_true",
                        help="take every image as an already-cropped face (like UTKFace's), "
                             "without face detection")
    parser.add_argument("--allow-other-version", action="store_true",
                        help="use a .joblib model saved by another utkface-toolkit version "
                             "(refused by default), with a warning")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="faces predicted together (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, warnings only")
    return parser


def is_model_path(path: Path) -> bool:
    """Whether ``path`` names a model: a ``.joblib``/``.keras`` path (existing or not,
    so that a missing model is reported as one) or a run folder."""
    if path.suffix in (".joblib", ".keras"):
        return True
    return path.is_dir() and any((path / name).is_file() for name in _run_folder_files())


def _model_and_inputs(parser: argparse.ArgumentParser,
                      args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """The model (``--model``, a leading model argument, or the bundled one) and photos."""
    inputs = list(args.inputs)
    if args.model is not None:
        return args.model, inputs
    if is_model_path(inputs[0]):
        if len(inputs) == 1:
            parser.error(f"{inputs[0]} is a model: give the photos to predict after it")
        return inputs[0], inputs[1:]
    model = bundled_model()
    logger.info("no model given: using the bundled model %s", model)
    return model, inputs


def _check_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.out is None:
        return
    if args.out.suffix.lower() not in OUTPUT_SUFFIXES:
        parser.error(f"--out must end in one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")


@contextmanager
def _writer_for(args: argparse.Namespace, predictor: FacePredictor,
                paths: Sequence[Path]) -> Iterator[RecordWriter]:
    if args.out is not None:
        with open_writer(args.out, record_columns(predictor)) as writer:
            yield writer
        return
    writer = TableWriter(predictor.columns, max(len(str(path)) for path in paths))
    yield writer
    writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 all photos OK, 1 some failed, 2 error)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    _check_out(parser, args)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        model, inputs = _model_and_inputs(parser, args)
        paths = find_photos(inputs)
        if not paths:
            raise FileNotFoundError(f"no image files in {', '.join(map(str, inputs))}")
        predictor = load_predictor(model, allow_other_version=args.allow_other_version,
                                   batch_size=args.batch_size)
    except (ModelError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with logging_redirect_tqdm(), _writer_for(args, predictor, paths) as writer:
            summary = write_predictions(writer, predictor, paths, detect=not args.no_detect,
                                        progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted{f'; the results so far are in {args.out}' if args.out else ''}",
              file=sys.stderr)
        return 130
    print(f"{summary.photos} photo(s), {summary.faces} face(s), {summary.failed} failed"
          + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
