"""Training and scoring classical pipelines (features -> PCA -> SVM or XGBoost).

The learnt part of a pipeline (per-block scaling and PCA, then the model) is fitted
on features extracted once, in parallel and cached on disk. The stateless image
loader and extractors are then put in front of it, so that every saved model is one
scikit-learn ``Pipeline`` from image paths or arrays to predictions::

    features  FeatureUnion(image:  per block, ImageLoader(size, colour) -> extractor,
                           mirror: the same on the mirrored face (Mirrored))
    reduce    PerView(ColumnTransformer(per block: StandardScaler -> PCA -> GlobalScaler))
    model     MirrorAveraged(SVC / SVR / LinearSVC / LinearSVR / XGBoost), the mean over
              the face and its mirror image; classifiers without predict_proba are
              calibrated on the validation faces

Judging each face from both views (test-time mirroring) gained about half a point of
gender accuracy on the validation split, for twice the feature extraction at
prediction time. Classifiers predict class indices into the task's names in
:mod:`models.labels` (recorded as ``label_names`` in each model's metadata); the age
model predicts years. Settings are chosen on the validation split only; the test split
is scored once. With a Dask scheduler (:mod:`pipelines.cluster`) the features are
extracted and XGBoost is trained on the cluster's workers.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import joblib
import numpy as np
from joblib import Parallel, delayed
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import FeatureUnion, Pipeline

from models.factory import MODELS, MirrorAveraged, PerView, make_estimator, make_reducer
from models.labels import TASKS
from models.xgboost_models import fit_on_cluster
from pipelines.artifacts import PACKAGE, SUMMARY_FILE, task_model_file, versions
from pipelines.cluster import (SINGLE_MACHINE_MODELS, check_single_machine_model,
                               check_workers_read, connect, on_this_machine)
from pipelines.dataset import DatasetIndex, index_folder
from pipelines.fairness import BALANCE_MODES, balance_weights
from pipelines.feature_blocks import DEFAULT_FEATURES, FeatureSpec, extract_views
from pipelines.metrics import class_names, evaluate_task, headline
from pipelines.reports import (atomic_write_json, prepare_output_dir, result_row, save_artifact,
                               write_task_report)
from pipelines.splits import load_or_create_split

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: Parameter grids tried on the validation split with ``search=True``, per model and
#: estimator kind; without a search the model's defaults are used.
SEARCH_GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "svm": {"classifier": [{"C": c} for c in (3.0, 10.0, 30.0)],
            "regressor": [{"C": c} for c in (10.0, 30.0, 100.0)]},
    "linear-svm": {"classifier": [{"C": c} for c in (0.001, 0.01, 0.1)],
                   "regressor": [{"C": c} for c in (0.01, 0.1, 1.0)]},
    "xgboost": {kind: [{"max_depth": d, "n_estimators": n} for d in (4, 6) for n in (300, 600)]
                for kind in ("classifier", "regressor")},
    "mlp": {kind: [{"alpha": a} for a in (1e-3, 1e-2, 1e-1)]
            for kind in ("classifier", "regressor")},
}
_CHECKED_ROWS = 8


def task_kind(task: str) -> str:
    """``"regressor"`` for age, ``"classifier"`` for the other tasks."""
    return "regressor" if class_names(task) is None else "classifier"



@dataclass
class TrainConfig:
    """What to train.

    Attributes
    ----------
    features : tuple of FeatureSpec
        Feature blocks, concatenated.
    model : {"svm", "linear-svm", "xgboost", "mlp"}
        Estimator family.
    tasks : tuple of str
        Tasks from :data:`models.labels.TASKS`, each trained as its own model.
    params : dict
        Model parameters overriding the defaults, for every task.
    search : bool
        Try :data:`SEARCH_GRIDS` on the validation split and keep the best.
    flip : bool
        Also train on the mirror image of every training face (twice the rows).
    n_jobs : int
        Processes for feature extraction and threads for fitting.
    seed : int
        Seed of PCA and the models.
    balance : {"none", "class", "class-sqrt", "group"}
        Sample weights of the fit (:mod:`pipelines.fairness`): none, every class alike,
        every face by 1 / sqrt of its class's count, or every ethnicity x gender x age
        group alike.
    """

    features: tuple[FeatureSpec, ...] = DEFAULT_FEATURES
    model: str = "svm"
    tasks: tuple[str, ...] = TASKS
    params: dict[str, Any] = field(default_factory=dict)
    search: bool = False
    flip: bool = False
    n_jobs: int = 1
    seed: int = 0
    balance: str = "none"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {MODELS}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty selection of {TASKS}, got {self.tasks}")
        names = [spec.name for spec in self.features]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"feature blocks must be at least one, each extractor, size and "
                             f"colour once; got {[str(spec) for spec in self.features]}")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"features": [spec.describe() for spec in self.features], "model": self.model,
                "tasks": list(self.tasks), "params": self.params, "search": self.search,
                "flip": self.flip, "n_jobs": self.n_jobs, "seed": self.seed,
                "balance": self.balance}


@dataclass
class TaskResult:
    """A fitted, assembled and scored model of one task."""

    task: str
    pipeline: Pipeline
    params: dict[str, Any]
    validation: dict[str, float]
    test_metrics: dict[str, Any]
    test_true: np.ndarray
    test_predicted: np.ndarray
    fit_seconds: float
    n_train: int
    candidates: list[dict[str, Any]]
    test_files: tuple[str, ...]         # names of the test faces scored


def _validation_score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    if task_kind(task) == "regressor":
        return {"mae": float(np.mean(np.abs(y_pred - y_true)))}
    return {"accuracy": float(np.mean(y_pred == y_true))}


def _is_better(task: str, score: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    if task_kind(task) == "regressor":
        return score["mae"] < best["mae"]
    return score["accuracy"] > best["accuracy"]


@dataclass
class _Candidate:
    """One estimator to fit for one task, and what fitting it gave."""

    task: str
    params: dict[str, Any]
    estimator: Any
    seconds: float = 0.0

    def fit(self, Z: np.ndarray, y: np.ndarray, client: Client | None = None,
            sample_weight: np.ndarray | None = None) -> _Candidate:
        start = time.perf_counter()
        if client is None:
            self.estimator.fit(Z, y, sample_weight=sample_weight)
        elif sample_weight is not None:
            raise ValueError("sample weights (balance) are not supported on a Dask cluster")
        else:
            fit_on_cluster(self.estimator, Z, y, client)
        self.seconds = time.perf_counter() - start
        return self


def _candidates(config: TrainConfig) -> list[_Candidate]:
    """Every (task, parameters) fit the config asks for: defaults, or the search grid."""
    candidates = []
    for task in config.tasks:
        kind = task_kind(task)
        for grid_params in SEARCH_GRIDS[config.model][kind] if config.search else [{}]:
            params = {**config.params, **grid_params}
            candidates.append(_Candidate(task, params, make_estimator(
                config.model, kind, n_jobs=config.n_jobs, random_state=config.seed, **params)))
    return candidates


@dataclass
class _Views:
    """Reduced features of the faces of one part, and of their mirror images."""

    image: np.ndarray
    mirror: np.ndarray | None
    rows: np.ndarray            # positions of the faces in the part

    @property
    def both(self) -> np.ndarray:
        """Rows ``[face | mirror image]``, the input of :class:`MirrorAveraged`."""
        return np.hstack([self.image, self.mirror])


def reduced_views(parts: dict[str, DatasetIndex], config: TrainConfig,
                  extract: dict[str, Any]) -> tuple[Any, dict[str, _Views]]:
    """Fit the reducer on the training features; return it and the reduced views of
    every part (of the mirrored training faces only with ``config.flip``).

    A face is kept when both of its views could be described. ``extract`` holds the
    keyword arguments of :func:`features.extract_features` (``n_jobs``, ``cache_dir``,
    ``progress``). Each part's views have ``image``, ``mirror`` (or None) and ``rows``,
    the positions of its faces in the part.
    """
    features, mirrored = extract_views(parts, config.features, flip=config.flip, **extract)
    train = features["train"]
    start = time.perf_counter()
    with on_this_machine():     # PCA here, not shipped to the workers inside connect()
        reducer = make_reducer(train.blocks, len(train.X), random_state=config.seed).fit(train.X)
        logger.info("fitted the reducer (%s) on %d faces in %.1f s",
                    ", ".join(f"{name}: {n} -> {k or n}" for name, n, k in train.blocks),
                    len(train.X), time.perf_counter() - start)
        views = {}
        for part, found in features.items():
            if part not in mirrored:
                views[part] = _Views(reducer.transform(found.X), None, found.kept)
                continue
            rows = np.intersect1d(found.kept, mirrored[part].kept)
            image = found.X[np.searchsorted(found.kept, rows)]
            mirror = mirrored[part].X[np.searchsorted(mirrored[part].kept, rows)]
            views[part] = _Views(reducer.transform(image), reducer.transform(mirror), rows)
    return reducer, views


def train_tasks(parts: dict[str, DatasetIndex], config: TrainConfig, *,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                client: Client | None = None) -> list[TaskResult]:
    """Fit, choose on validation and score on test one model per task.

    Parameters
    ----------
    parts : dict of str to DatasetIndex
        ``train``, ``val`` and ``test`` faces (``Split.apply``).
    config : TrainConfig
        What to train.
    cache_dir : path-like, optional
        Feature cache folder.
    progress : bool
        Progress bars.
    client : dask.distributed.Client, optional
        The client of :func:`pipelines.cluster.connect`, when called inside it: the
        workers must read the image folder, XGBoost trains on them
        (:func:`models.xgboost_models.fit_on_cluster`) and an SVM is refused above
        :data:`pipelines.cluster.SVM_CLUSTER_LIMIT` training rows, both checked before
        any feature is extracted. The extraction runs on the cluster because it is
        inside ``connect``; the PCA, the SVM fits and the scoring stay in this process.

    Returns
    -------
    list of TaskResult
        In the order of ``config.tasks``; each pipeline predicts from images.

    Raises
    ------
    pipelines.cluster.ClusterError
        With ``client``: a worker cannot read the image folder, or an SVM is refused.
    """
    if client is not None:
        check_single_machine_model(config.model,
                                   len(parts["train"]) * (2 if config.flip else 1))
        check_workers_read(client, [parts["train"].folder])
    extract = {"n_jobs": config.n_jobs, "cache_dir": cache_dir, "progress": progress}
    reducer, views = reduced_views(parts, config, extract)
    with on_this_machine():
        return _fit_and_score(parts, config, reducer, views, client)


def _fit_and_score(parts: dict[str, DatasetIndex], config: TrainConfig, reducer: Any,
                   views: dict[str, _Views], client: Client | None) -> list[TaskResult]:
    """The model part of :func:`train_tasks`, on the reduced views of every part."""
    train, val, test = views["train"], views["val"], views["test"]
    Z_train, train_rows = train.image, train.rows
    if config.flip:
        Z_train, train_rows = np.vstack([train.image, train.mirror]), np.tile(train.rows, 2)
    test_faces = parts["test"].subset(test.rows)
    candidates = _candidates(config)
    # libsvm and liblinear run one thread each, so fits run side by side; XGBoost
    # uses its own threads, or the cluster's workers one fit after the other
    threads = 1 if config.model == "xgboost" else config.n_jobs
    fit_client = None if config.model in SINGLE_MACHINE_MODELS else client
    logger.info("fitting %d model(s) on %d rows with %d thread(s)%s", len(candidates),
                len(Z_train), threads, "" if fit_client is None else " on the Dask cluster")
    Parallel(n_jobs=threads, prefer="threads")(
        delayed(candidate.fit)(Z_train, parts["train"].labels(candidate.task)[train_rows],
                               fit_client, balance_weights(config.balance, candidate.task,
                                                           parts["train"], train_rows))
        for candidate in candidates)

    features = FeatureUnion([
        (view, FeatureUnion([(spec.name, spec.branch(mirror=view == "mirror"))
                             for spec in config.features]))
        for view in ("image", "mirror")])
    results = []
    for task in config.tasks:
        y_val = parts["val"].labels(task)[val.rows]
        best, best_score, tried = None, None, []
        for candidate in (c for c in candidates if c.task == task):
            score = _validation_score(task, y_val,
                                      MirrorAveraged(candidate.estimator).predict(val.both))
            tried.append({"params": candidate.params, "validation": score,
                          "fit_seconds": round(candidate.seconds, 1)})
            logger.info("%s %s: validation %s (fit %.1f s)", task, candidate.params, score,
                        candidate.seconds)
            if _is_better(task, score, best_score):
                best, best_score = candidate, score
        estimator = best.estimator
        if task_kind(task) == "classifier":
            estimator = with_probabilities(estimator, val.image, y_val)
        predictions = MirrorAveraged(estimator).predict(test.both)
        truth = test_faces.labels(task)
        metrics = evaluate_task(task, truth, predictions, gender=test_faces.gender,
                                ethnicity=test_faces.ethnicity, age=test_faces.age)
        pipeline = Pipeline([("features", features), ("reduce", PerView(reducer)),
                             ("model", MirrorAveraged(estimator))])
        _check_assembled(pipeline, test_faces.paths[:_CHECKED_ROWS],
                         predictions[:_CHECKED_ROWS])
        results.append(TaskResult(task, pipeline, best.params, best_score, metrics, truth,
                                  predictions, best.seconds, len(Z_train), tried,
                                  test_faces.file_names))
    return results


#: Folds of the validation faces over which an SVM's sigmoids are fitted (at most).
_CALIBRATION_FOLDS = 5


def with_probabilities(classifier, Z_val: np.ndarray, y_val: np.ndarray):
    """``classifier`` with ``predict_proba``: as it is if it has one, else calibrated.

    An SVM has no probabilities: a sigmoid per class is fitted to its decision values
    on the validation faces, in stratified folds (5, or the fewest faces of a class:
    the sigmoids are averaged; the SVM itself stays as fitted; predictions become the
    most probable class). Without two validation faces of every class the classifier
    is returned as it is, without ``predict_proba``.
    """
    if hasattr(classifier, "predict_proba"):
        return classifier
    counts = np.array([np.sum(y_val == label) for label in classifier.classes_])
    if counts.min() < 2:
        logger.warning("classes %s have fewer than 2 validation faces: the model gets no "
                       "predict_proba", classifier.classes_[counts < 2].tolist())
        return classifier
    calibrated = CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid",
                                        cv=min(_CALIBRATION_FOLDS, int(counts.min())))
    return calibrated.fit(Z_val, y_val)


def _check_assembled(pipeline: Pipeline, paths: Sequence[str], expected: np.ndarray) -> None:
    """The assembled pipeline must reproduce, from image files, the predictions made
    from the cached features; a mismatch means training and prediction see different
    features."""
    predicted = pipeline.predict(list(paths))
    if not np.allclose(np.asarray(predicted, dtype=np.float64),
                       np.asarray(expected, dtype=np.float64), rtol=1e-4, atol=1e-3):
        raise RuntimeError(f"the assembled pipeline predicts {predicted} from the image files "
                           f"but {expected} from the cached features")


def save_results(out_dir: str | os.PathLike, results: Sequence[TaskResult],
                 config: TrainConfig, split_info: dict[str, Any],
                 command: str | None = None) -> list[dict[str, Any]]:
    """Write each task's model, model metadata, test metrics and plots into ``out_dir``.

    Files per task: ``<task>_model.joblib`` (the whole pipeline, ``joblib.dump``),
    ``<task>_model.json`` (metadata with the model file's SHA-256, checked by
    :func:`models.safety.load_model`), ``<task>_metrics.json`` and a PNG plot. Every
    file is written atomically. ``command``, the command line that trained the models,
    is recorded in the metadata when given.

    Returns
    -------
    list of dict
        One summary row per task (for :func:`pipelines.reports.format_summary_table`).
    """
    out_dir = Path(out_dir)
    installed = versions()
    rows = []
    for result in results:
        names = class_names(result.task)
        metadata = {
            "format_version": 1,
            "package_version": installed[PACKAGE],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "task": result.task,
            "kind": task_kind(result.task),
            "label_names": list(names) if names else None,
            "predicts": ("class index into label_names" if names else "age in years"),
            "model": config.model,
            "params": result.params,
            "estimator": repr(result.pipeline[-1].model),
            "features": [spec.describe() for spec in config.features],
            "flip_augmentation": config.flip,
            "test_time_mirroring": True,
            "split": split_info,
            "n_train": result.n_train,
            "validation": result.validation,
            "candidates": result.candidates,
            "test": headline(result.task, result.test_metrics),
            "n_test": result.test_metrics["overall"]["n"],
            "fit_seconds": round(result.fit_seconds, 1),
            "versions": installed,
        }
        pipeline = result.pipeline
        save_artifact(out_dir / task_model_file(result.task),
                      lambda temp: joblib.dump(pipeline, temp), metadata)
        write_task_report(out_dir, result.task, result.test_metrics, result.test_true,
                          result.test_predicted, result.test_files)
        rows.append({**result_row(result.task, config.model, result.n_train, result.validation,
                                  headline(result.task, result.test_metrics)),
                     "fit_s": round(result.fit_seconds)})
    return rows


def run_classical(data_dir: str | os.PathLike, config: TrainConfig, *,
                  split_path: str | os.PathLike, out_dir: str | os.PathLike,
                  cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
                  progress: bool = True, scheduler: str | None = None,
                  command: str | None = None) -> dict[str, Any]:
    """The whole job: index and split the data, train, score on test, write results.

    Parameters
    ----------
    data_dir : path-like
        UTKFace image folder.
    config : TrainConfig
        What to train.
    split_path : path-like
        Split manifest; made from ``config.seed`` and saved there if missing.
    out_dir : path-like
        Results folder (see :func:`save_results`, plus ``summary.json``).
    cache_dir : path-like, optional
        Feature cache folder.
    overwrite : bool
        Allow an output folder that already holds files.
    progress : bool
        Progress bars.
    scheduler : str, optional
        Address of a Dask scheduler: extract the features and train XGBoost on its
        cluster (:mod:`pipelines.cluster`; the image folder must be readable at the
        same path from every worker). None runs on this machine without importing Dask.
    command : str, optional
        The command line of the run, recorded in the summary and model metadata.

    Returns
    -------
    dict
        The content of ``summary.json``: ``rows`` (one per task), ``command``, ``config``,
        ``split``, ``data``, ``scheduler``, ``seconds`` and ``versions``.

    Raises
    ------
    pipelines.reports.OutputExistsError
        If ``out_dir`` holds files and ``overwrite`` is false (checked before the
        features are extracted).
    pipelines.cluster.ClusterError
        With ``scheduler``: see :func:`train_tasks`.
    """
    start = time.perf_counter()
    index = index_folder(data_dir)
    out_dir = prepare_output_dir(out_dir, overwrite)
    split = load_or_create_split(index, split_path, seed=config.seed)
    parts = split.apply(index)
    split_info = {"manifest": str(Path(split_path).resolve()), "sha256": split.sha256,
                  **{part: len(faces) for part, faces in parts.items()}}
    logger.info("%d faces in %s; split %s", len(index), index.folder, split_info)
    with connect(scheduler) as client:
        results = train_tasks(parts, config, cache_dir=cache_dir, progress=progress,
                              client=client)
    rows = save_results(out_dir, results, config, split_info, command)
    summary = {"rows": rows, "command": command, "config": config.describe(),
               "split": split_info,
               "data": str(index.folder), "scheduler": scheduler,
               "seconds": round(time.perf_counter() - start, 1), "versions": versions()}
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary
