"""Train, or fine-tune, the multi-task CNN on a UTKFace folder and score it on its test split.

:func:`train_cnn` indexes the folder, applies the shared split manifest, loads the faces
once into memory, trains :mod:`models.cnn` networks (TensorFlow is only imported there)
and writes, into one output folder:

- ``model.keras``: the network of the best epoch (load with ``models.cnn.load_model``);
- ``training_curves.png``: loss and per-task metric per epoch, train and validation;
- ``<task>_metrics.json`` and ``<task>_confusion.png`` / ``age_error.png``: test-split
  scores from :mod:`pipelines.metrics` and :mod:`pipelines.reports`, as for every model;
- ``cnn_summary.json``: settings (the views each face is judged from among them),
  history, timings, headline validation figures and headline test figures (before
  and after training when fine-tuning);
- ``split.json``: the split manifest, unless another ``manifest_path`` is given.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from features.embeddings import N_FEATURES, DlibFaceDescriptor
from features.extract import extract_features
from features.io import DEFAULT_SIZE, load_images
from models.cnn import (DEFAULT_DESCRIPTOR_WEIGHT, DEFAULT_LABEL_SMOOTHING,
                        DEFAULT_LEARNING_RATE, OUTPUT_LAYERS,
                        CNNPredictor, FitSchedule, build_model, distribution_strategy,
                        fit_network, load_model, network_tasks, resolve_tasks, select_tasks)
from models.face_model import ARCHITECTURE as FACE_ARCHITECTURE
from models.face_model import (aligned_chips, is_face_model, top_training_data,
                               with_mirror_rows)
from models.precision import check_precision, set_precision
from models.safety import file_sha256
from pipelines.artifacts import (CNN_CHECKPOINT_FILE, CNN_MODEL_FILE, CNN_SUMMARY_FILE,
                                 CURVES_FILE, SPLIT_FILE)
from pipelines.dataset import DatasetIndex, index_folder
from pipelines.fairness import BALANCE_MODES, balance_weights
from pipelines.metrics import evaluate_task, headline
from pipelines.reports import atomic_path, atomic_write_json, prepare_output_dir, write_task_report
from pipelines.splits import PARTS, load_or_create_split, names_sha256

logger = logging.getLogger(__name__)

#: Defaults sized so that a default run on UTKFace (15,206 training faces, 128x128
#: grayscale) takes under an hour on a 2-core CPU; see ``train_cnn``.
DEFAULT_EPOCHS = 45
DEFAULT_BATCH_SIZE = 64
DEFAULT_COLOR = "gray"
#: Peak learning rate when fine-tuning a saved network.
FINE_TUNE_LEARNING_RATE = 3e-4
#: Defaults of ``face-resnet`` (models.face_model): epochs, of which the first train the
#: heads only, at the heads' peak learning rate; then the top blocks at the lower one.
FACE_EPOCHS = 10
FACE_FREEZE_EPOCHS = 2
FACE_HEAD_LEARNING_RATE = 3e-3
FACE_LEARNING_RATE = 1e-4
#: Label smoothing of ``face-resnet``'s gender and ethnicity losses (the other networks:
#: ``models.cnn.DEFAULT_LABEL_SMOOTHING``); chosen on validation, docs/face-resnet.md.
FACE_LABEL_SMOOTHING = 0.0
_CURVE_METRICS = (("loss", "total loss"), ("gender_acc", "gender accuracy"),
                  ("ethnicity_acc", "ethnicity accuracy"), ("age_mae", "age MAE (years)"))


@dataclass
class Faces:
    """Decoded faces of one split part and the index of exactly those faces."""

    images: np.ndarray
    index: DatasetIndex

    def labels(self, tasks: Sequence[str]) -> dict[str, np.ndarray]:
        """Label codes (age in years) per task, aligned with ``images``."""
        return {task: self.index.labels(task) for task in tasks}


def load_faces(index: DatasetIndex, size: tuple[int, int], color: str, n_jobs: int,
               progress: bool = True) -> Faces:
    """Decode the faces of an index, dropping unreadable files from images and labels alike."""
    report = load_images(index.paths, size=size, color=color, n_jobs=n_jobs, progress=progress)
    return Faces(report.images, index.subset(report.kept))


def _sample(index: DatasetIndex, count: int | None, seed: int) -> DatasetIndex:
    if count is None or count >= len(index):
        return index
    if count < 1:
        raise ValueError(f"max_train must be >= 1, got {count}")
    return index.subset(np.random.default_rng(seed).choice(len(index), count, replace=False))


def evaluate(predictor: CNNPredictor,
             faces: Faces) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Score a predictor on faces with :func:`pipelines.metrics.evaluate_task`.

    Returns
    -------
    dict
        Task -> (metrics, predictions).
    """
    predictions = predictor.predict(faces.images)
    groups = {"gender": faces.index.gender, "ethnicity": faces.index.ethnicity,
              "age": faces.index.age}
    return {task: (evaluate_task(task, faces.index.labels(task), predictions[task], **groups),
                   predictions[task])
            for task in predictor.tasks}


#: Image size the teacher's descriptors are computed at (UTKFace's own resolution).
TEACHER_SIZE = (200, 200)


def teacher_descriptors(faces: dict[str, Faces], n_jobs: int = 1,
                        cache_dir: str | os.PathLike | None = None,
                        progress: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """dlib face descriptors of the faces, standardised with the training faces' statistics.

    The descriptors (:class:`features.embeddings.DlibFaceDescriptor`, 200x200 RGB) are
    the targets of the CNN's distillation output (``models.cnn.fit_network``). Each of the
    128 values is centred and scaled by its mean and standard deviation over the
    ``train`` faces, so every value weighs alike in the squared error. Faces without a
    descriptor (dlib's face check failed, or the file could not be read at 200x200 RGB)
    get the mean descriptor, all zeros after standardising, and are counted.

    Parameters
    ----------
    faces : dict of str to Faces
        Split parts, with at least ``train``.
    n_jobs : int
        Worker processes.
    cache_dir : path-like, optional
        Feature cache folder (:func:`features.extract_features`).
    progress : bool
        Show a progress bar.

    Returns
    -------
    descriptors : dict of str to ndarray
        Part -> float32 (N, 128), aligned with that part's images.
    missing : int
        Faces that got the mean descriptor.

    Raises
    ------
    ImportError
        Without dlib (``pip install -e ".[embeddings]"``).
    """
    raw = {}
    for part, part_faces in faces.items():
        paths = part_faces.index.paths
        report = extract_features(paths, DlibFaceDescriptor(), size=TEACHER_SIZE,
                                  color="rgb", n_jobs=n_jobs, cache_dir=cache_dir,
                                  progress=progress)
        rows = np.full((len(paths), N_FEATURES), np.nan, np.float32)
        rows[report.kept] = report.images
        raw[part] = rows
    mean = np.nanmean(raw["train"], axis=0)
    scale = np.nanstd(raw["train"], axis=0)
    missing = sum(int(np.isnan(rows).any(axis=1).sum()) for rows in raw.values())
    if missing:
        logger.warning("%d faces have no teacher descriptor (no face found by dlib); "
                       "they get the mean descriptor", missing)
    return {part: np.nan_to_num((rows - mean) / scale).astype(np.float32)
            for part, rows in raw.items()}, missing


def _check_teacher() -> None:
    """Fail, saying how to go on, when dlib or its models are missing."""
    try:
        DlibFaceDescriptor().fit()
    except ImportError as error:
        raise ImportError(f"{error}; or train without distilling dlib's face descriptors "
                          f"(--no-distill, distill=False)") from error


def _initial_network(config: CNNConfig):
    """A saved network (restricted to the config's tasks), or a new one of its
    architecture."""
    if config.init_from is None:
        size = tuple(config.size or DEFAULT_SIZE)
        channels = 1 if (config.color or DEFAULT_COLOR) == "gray" else 3
        return build_model(config.architecture, (*size, channels),
                           resolve_tasks(config.architecture, config.tasks), seed=config.seed)
    saved = load_model(config.init_from)
    if config.size is not None and tuple(config.size) != saved.size:
        raise ValueError(f"{config.init_from} takes images of size {saved.size}, "
                         f"not {tuple(config.size)}")
    if config.color is not None and config.color != saved.color:
        raise ValueError(f"{config.init_from} takes {saved.color!r} images, "
                         f"not {config.color!r}")
    return select_tasks(saved.network, config.tasks or saved.tasks)


def plot_history(history: dict[str, list[float]], path: str | os.PathLike) -> Path:
    """Save training curves (train and validation per epoch) as a PNG, atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(key, title) for key, title in _CURVE_METRICS if key in history]
    figure = Figure(figsize=(4 * len(panels), 3.4), layout="constrained")
    epochs = np.arange(1, len(history["loss"]) + 1)
    best = int(np.argmin(history["val_loss"])) + 1
    frozen = int(sum(history["trunk_frozen"]))
    for axes, (key, title) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        axes.plot(epochs, history[key], marker="o", ms=3, label="train")
        axes.plot(epochs, history[f"val_{key}"], marker="o", ms=3, label="validation")
        axes.axvline(best, color="grey", ls="--", lw=0.8, label=f"best epoch ({best})")
        if frozen:
            axes.axvspan(0.5, frozen + 0.5, color="tab:blue", alpha=0.08, label="trunk frozen")
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=8)
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=110)
    return Path(path)


@dataclass(frozen=True)
class CNNConfig:
    """What :func:`train_cnn` trains, and how; settings left None take the defaults below.

    Attributes
    ----------
    architecture : {"default", "seed_baseline", "face-resnet"}
        Network design for a new network (ignored with ``init_from``). ``face-resnet``
        fine-tunes dlib's pretrained face ResNet (:mod:`models.face_model`) on aligned
        chips: the frozen part of its trunk runs once per training face and mirror image,
        and the epochs train its top blocks and the heads on those activations.
    tasks : tuple of str, optional
        Heads to train; by default every head of the architecture (or of the saved
        network). With ``init_from`` a subset drops the other heads.
    size : tuple of int, optional
        Input (height, width); 128x128 for a new network, the saved one's otherwise.
    color : {"gray", "rgb"}, optional
        Input colour; grayscale for a new network, the saved one's otherwise.
    epochs : int, optional
        Maximum epochs (early stopping may end sooner); :data:`DEFAULT_EPOCHS`
        (:data:`FACE_EPOCHS` for a ``face-resnet`` network).
    batch_size : int
        Faces per step (the global batch over several devices).
    learning_rate : float, optional
        Peak learning rate; 1e-3 for a new network, :data:`FINE_TUNE_LEARNING_RATE` when
        fine-tuning, :data:`FACE_LEARNING_RATE` for a ``face-resnet`` network (whose
        heads-only epochs peak at :data:`FACE_HEAD_LEARNING_RATE`).
    precision : {"float32", "mixed_bfloat16"}
        Arithmetic of the training (:mod:`models.precision`: bfloat16 with float32
        weights is faster on GPUs and CPUs with bfloat16 instructions). The network is
        saved, and scored, in float32 either way.
    seed : int
        Seed of weight initialisation, shuffling, augmentation and dropout.
    n_jobs : int
        Processes decoding images and computing the teacher's descriptors.
    init_from : path-like, optional
        A saved CNN (``.keras`` or pickled predictor) to fine-tune; it is scored on the
        test split before and after training.
    freeze_trunk_epochs : int, optional
        Epochs at the start that train the heads only, for a pretrained trunk
        (``init_from`` or ``face-resnet``); 0 by default, :data:`FACE_FREEZE_EPOCHS` for
        a new ``face-resnet`` network.
    distill : bool, optional
        Also train the network to regress dlib's face descriptors of the training faces
        (:func:`teacher_descriptors`, ``models.cnn.with_descriptor_head``); the saved
        network has no such output and predicts without dlib. Needs dlib
        (``pip install -e ".[embeddings]"``). By default on for a new network of the
        default architecture, off for ``seed_baseline`` and fine-tuning.
    max_train : int, optional
        Train on a random subset of this many training faces (quick runs).
    balance : {"none", "class", "class-sqrt", "group"}
        Per-face weights of the training losses (:mod:`pipelines.fairness`): every
        class of each task weighs alike, or a face by 1 / sqrt of its class's count,
        or every ethnicity x gender x age group weighs alike.

    Raises
    ------
    ValueError
        For ``freeze_trunk_epochs`` without a pretrained trunk, or distilling into the
        face ResNet.
    """

    architecture: str = "default"
    tasks: tuple[str, ...] | None = None
    size: tuple[int, int] | None = None
    color: str | None = None
    epochs: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float | None = None
    precision: str = "float32"
    seed: int = 0
    n_jobs: int = 1
    init_from: str | os.PathLike | None = None
    freeze_trunk_epochs: int | None = None
    distill: bool | None = None
    max_train: int | None = None
    balance: str = "none"

    def __post_init__(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.freeze_trunk_epochs and self.init_from is None and not self.new_face:
            raise ValueError("freeze_trunk_epochs needs init_from or the pretrained "
                             "face-resnet: a new trunk cannot be frozen")
        if self.new_face and self.distill:
            raise ValueError("face-resnet is dlib's descriptor network itself: there is "
                             "nothing to distil into it (use --no-distill)")
        if self.distill is None:
            object.__setattr__(self, "distill",
                               self.init_from is None and self.architecture == "default")

    @property
    def new_face(self) -> bool:
        """Whether this trains a new ``face-resnet`` network."""
        return self.init_from is None and self.architecture == FACE_ARCHITECTURE

    def schedule(self, aligned: bool, verbose: int) -> FitSchedule:
        """The training schedule, defaults filled in for a network that takes aligned
        chips (``aligned``) or faces."""
        learning_rate = self.learning_rate or (
            FACE_LEARNING_RATE if aligned else DEFAULT_LEARNING_RATE if self.init_from is None
            else FINE_TUNE_LEARNING_RATE)
        freeze = self.freeze_trunk_epochs
        return FitSchedule(
            epochs=self.epochs or (FACE_EPOCHS if aligned else DEFAULT_EPOCHS),
            batch_size=self.batch_size, learning_rate=learning_rate,
            freeze_trunk_epochs=(FACE_FREEZE_EPOCHS if self.new_face else 0)
            if freeze is None else freeze,
            head_learning_rate=FACE_HEAD_LEARNING_RATE if aligned else None,
            label_smoothing=FACE_LABEL_SMOOTHING if aligned else DEFAULT_LABEL_SMOOTHING,
            augment=not aligned, seed=self.seed, verbose=verbose)


def train_cnn(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
              config: CNNConfig = CNNConfig(), *,
              manifest_path: str | os.PathLike | None = None,
              cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train a CNN (or fine-tune a saved one) on a labelled folder, then score it.

    The network trains on the ``train`` part of the split, early-stops and picks its
    best epoch on ``val``, and is scored once on ``test``; see the module docstring for
    the files written. Training uses the GPU when TensorFlow sees one, and the
    ``tf.distribute`` strategy of :func:`models.cnn.distribution_strategy` (several
    GPUs, or several workers with ``TF_CONFIG``).

    Parameters
    ----------
    data_dir : path-like
        Folder of UTKFace-named images.
    out_dir : path-like
        Results folder; it must be empty or absent unless ``overwrite``.
    config : CNNConfig
        The network and its training.
    manifest_path : path-like, optional
        Split manifest, created (split seed 0, 80/10/10) if absent; defaults to
        ``out_dir/split.json``. Pass the project's shared manifest to compare models.
    cache_dir : path-like, optional
        Feature cache folder for the teacher's descriptors (computed once per face).
    overwrite : bool
        Replace the results in a non-empty ``out_dir``.
    progress : bool
        Show progress bars while loading and print one line per epoch.

    Returns
    -------
    dict
        The content of ``cnn_summary.json``: ``model_path``, ``architecture``,
        ``tasks``, ``size``, ``color``, ``counts`` (faces per part), ``load_failures``,
        ``strategy`` (``tf.distribute`` class name and replicas), ``epochs_run``,
        ``best_epoch``, ``train_seconds``, ``train_images_per_second``
        (training faces x epochs / training seconds, validation passes included),
        ``history``, ``validation`` and ``test`` (headline figures per task, the
        network with its prediction views, as saved), ``test_faces_sha256``
        (:func:`pipelines.splits.names_sha256` of the test faces scored) and, when
        fine-tuning, ``init_from`` and ``test_before``; with ``distill``, ``distill``
        (teacher, weight, faces without a descriptor, seconds to compute them or read
        them from the cache).

    Raises
    ------
    pipelines.reports.OutputExistsError
        If ``out_dir`` holds files and ``overwrite`` is false.
    ValueError
        For inconsistent settings (unknown architecture or task, ``freeze_trunk_epochs``
        without ``init_from`` or above ``epochs``, size or colour unlike the saved
        network's).
    ImportError
        When distilling without dlib or its models.
    """
    if config.distill:
        _check_teacher()   # without dlib, fail before anything is loaded or written
    precision = check_precision(config.precision)
    strategy = distribution_strategy()
    with strategy.scope():
        initial = _initial_network(config)
        network = set_precision(initial, precision, OUTPUT_LAYERS)
    out = prepare_output_dir(out_dir, overwrite)
    predictor = CNNPredictor(initial)
    faces, failures = _load_split(data_dir, manifest_path or out / SPLIT_FILE, predictor,
                                  config, progress)
    summary: dict[str, Any] = {
        "architecture": network.name, "tasks": list(predictor.tasks),
        "size": list(predictor.size), "color": predictor.color, "precision": precision,
        "views": {"mirror": predictor.mirror, "jitter": predictor.jitter},
        "balance": config.balance,
        "counts": {part: len(faces[part].images) for part in PARTS}, "load_failures": failures,
        "strategy": {"name": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync}}
    if config.init_from is not None:
        summary["init_from"] = os.fspath(config.init_from)
        summary["test_before"] = _headlines(evaluate(predictor, faces["test"]))
        logger.info("before fine-tuning, on the test split: %s", summary["test_before"])
    history = _train(network, faces, config, out, summary, cache_dir, progress)
    predictor = CNNPredictor(set_precision(network, "float32"))
    predictor.save(out / CNN_MODEL_FILE)
    plot_history(history, out / CURVES_FILE)
    return _score(predictor, faces, out, summary)


def _load_split(data_dir: str | os.PathLike, manifest_path: str | os.PathLike,
                predictor: CNNPredictor, config: CNNConfig,
                progress: bool) -> tuple[dict[str, Faces], int]:
    """The faces of every part of the split, decoded as the network takes them, and how
    many files could not be read."""
    index = index_folder(data_dir)
    parts = load_or_create_split(index, manifest_path).apply(index)
    parts["train"] = _sample(parts["train"], config.max_train, config.seed)
    faces = {part: load_faces(parts[part], predictor.size, predictor.color, config.n_jobs,
                              progress) for part in PARTS}
    return faces, sum(len(parts[part]) - len(faces[part].images) for part in PARTS)


def _train(network, faces: dict[str, Faces], config: CNNConfig, out: Path,
           summary: dict[str, Any], cache_dir: str | os.PathLike | None,
           progress: bool) -> dict[str, list[float]]:
    """Train ``network`` in place (distilling, or on cached activations, as the config
    says), add the training's figures to ``summary``; return the history."""
    aligned = is_face_model(network)
    descriptors = None
    if config.distill:
        started = time.perf_counter()
        teacher, missing = teacher_descriptors(
            {part: faces[part] for part in ("train", "val")}, config.n_jobs, cache_dir,
            progress)
        descriptors = (teacher["train"], teacher["val"])
        summary["distill"] = {"teacher": "dlib", "weight": DEFAULT_DESCRIPTOR_WEIGHT,
                              "faces_without_descriptor": missing,
                              "seconds": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    trained = network
    tasks = network_tasks(network)
    train = (faces["train"].images, faces["train"].labels(tasks))
    val = (faces["val"].images, faces["val"].labels(tasks))
    weights = None
    if config.balance != "none":
        weights = {task: balance_weights(config.balance, task, faces["train"].index)
                   for task in tasks}
    if aligned:
        trained, train, val = top_training_data(
            network, (aligned_chips(train[0], progress), train[1]),
            (aligned_chips(val[0], progress), val[1]), progress=progress)
        if weights is not None:
            weights = {task: with_mirror_rows(values) for task, values in weights.items()}
        summary["activations_seconds"] = round(time.perf_counter() - started, 1)
        logger.info("aligned the faces and cached the frozen trunk's activations in %.0f s",
                    summary["activations_seconds"])
    history = fit_network(trained, train, val,
                          config.schedule(aligned, verbose=2 if progress else 0),
                          checkpoint_path=out / CNN_CHECKPOINT_FILE, descriptors=descriptors,
                          sample_weight=weights)
    seconds = time.perf_counter() - started
    (out / CNN_CHECKPOINT_FILE).unlink()
    summary.update({
        "epochs_run": len(history["loss"]),
        "best_epoch": int(np.argmin(history.get("val_task_loss", history["val_loss"]))) + 1,
        "train_seconds": round(seconds, 1),
        "train_images_per_second": round(len(faces["train"].images) * len(history["loss"])
                                         / seconds, 1),
        "history": history})
    return history


def _score(predictor: CNNPredictor, faces: dict[str, Faces], out: Path,
           summary: dict[str, Any]) -> dict[str, Any]:
    """Score the saved network on validation and test, write the reports and the
    summary; return the summary."""
    validation = _headlines(evaluate(predictor, faces["val"]))
    scores = evaluate(predictor, faces["test"])
    for task, (metrics, predicted) in scores.items():
        write_task_report(out, task, metrics, faces["test"].index.labels(task), predicted,
                          faces["test"].index.file_names)
    summary = {
        **summary, "model_path": str(out / CNN_MODEL_FILE),
        "model_sha256": file_sha256(out / CNN_MODEL_FILE), "validation": validation,
        "test": _headlines(scores),
        "test_faces_sha256": names_sha256(faces["test"].index.file_names)}
    atomic_write_json(out / CNN_SUMMARY_FILE, summary)
    logger.info("trained %s in %.0f s; validation: %s; test: %s", summary["architecture"],
                summary["train_seconds"], validation, summary["test"])
    return summary


def _headlines(scores: dict[str, tuple[dict[str, Any], np.ndarray]]) -> dict[str, dict]:
    return {task: headline(task, metrics) for task, (metrics, _) in scores.items()}
