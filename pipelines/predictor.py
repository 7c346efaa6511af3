"""Loading saved models and predicting from face crops: :class:`FacePredictor`.

Models
    A model is what :mod:`pipelines.run` or :mod:`pipelines.cnn_training` wrote: a run
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
    Age groups come from the predicted age (:func:`models.labels.age_group`), so age
    and group always agree; an ``age_group`` classifier is used only without an age
    model. Predicted ages are clipped at 0, as the CNN does.

Batching
    The crops of several photos are predicted together: a classical pipeline's first
    step (the stateless image -> features step) runs once per batch for all tasks whose
    first steps are equal, then each task's learnt steps (scaling, PCA, model) run on the
    whole batch, RBF SVMs through BLAS kernel matrices
    (:func:`models.svm.with_blas_kernels`: libsvm's values to about 1e-12, many times
    faster); a classifier's label is its most probable class (what the project's
    classifiers' ``predict`` gives), so one pass gives labels and probabilities. A CNN or
    a stack judges the batch in one pass too (a stack's classical members with the same
    BLAS kernels). A face's prediction does not depend on the other faces of a batch
    beyond float rounding: BLAS and TensorFlow kernels sum in a different order for
    different batch shapes (probabilities move by about 1e-8).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

from models import cnn, safety
from models.labels import AGE_GROUP_NAMES, TASKS, age_group
from models.stack import StackedFaceModel, is_multitask, labels_of
from models.svm import with_blas_kernels
from pipelines.artifacts import CNN_MODEL_FILE, PACKAGE, STACK_FILE, task_model_file, versions
from pipelines.metrics import class_names

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
#: Package data folder (in ``pipelines``) of the bundled model: a run folder.
BUNDLED_MODEL_DIR = "pretrained"


class ModelError(Exception):
    """A model that is missing, corrupt, fails its checksum or is of another version."""


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
        The remaining steps, run on the extracted batch.
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
        return cls(task, pipeline[:1], with_blas_kernels(pipeline[1:]),
                   joblib.hash(pipeline[0]),
                   np.asarray(pipeline.classes_) if has_proba else None)

    def outputs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and class probabilities (columns in code order) of feature rows.

        A row with NaN features (a face the descriptor model does not find) gets NaN.
        """
        found = ~np.isnan(features).any(axis=1)
        values = np.full(len(features), np.nan)
        proba = (np.full((len(features), len(class_names(self.task))), np.nan)
                 if self.classes is not None else None)
        if not found.any():
            return values, proba
        if proba is None:
            values[found] = self.learnt.predict(features[found])
            return values, proba
        found_proba = self.learnt.predict_proba(features[found])
        values[found] = self.classes[found_proba.argmax(axis=1)]
        proba[found] = 0.0
        proba[np.ix_(found, self.classes)] = found_proba
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
        #: Tasks predicted, in :data:`models.labels.TASKS` order.
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
        outputs = self.network.task_outputs(list(crops))
        return {task: (outputs[task], None) if task == "age"
                else (labels_of(task, outputs[task]), outputs[task])
                for task in self.network_tasks}

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
        with_blas_kernels(model)  # the classical members' SVMs
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


def run_folder_files() -> list[str]:
    """Names of the model files a run folder may hold, in the order they are used."""
    return [STACK_FILE, *(task_model_file(task) for task in TASKS), CNN_MODEL_FILE]


def model_files(path: str | os.PathLike) -> list[Path]:
    """The model files of a run folder (stack, classical per task, CNN), or ``[path]``.

    Raises
    ------
    ModelError
        If ``path`` does not exist, or is a folder without model files.
    """
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in run_folder_files() if (path / name).is_file()]
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


