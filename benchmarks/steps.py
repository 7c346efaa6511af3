"""The benchmark's units of work, each run in a process of its own by :mod:`benchmarks.run`.

A step is one feature extraction (shared by the pipelines of an extractor) or one
pipeline (a classical pipeline with one model per task, or a CNN with one head per
task). :func:`child_main` runs a step in a child process and sends back a JSON-ready
result, or the error that stopped it; a child killed by the system (out of memory)
sends nothing, which the parent reports as such.

What is measured:

- extraction: wall time of extracting every block of the split's faces, and of the
  mirrored validation and test faces (:func:`pipelines.feature_blocks.extract_views`), in
  parallel, with how many of those calls the feature cache answered;
- fit: the chosen model's fit on the extracted features (classical), or the whole
  network's training, all heads and validation passes included (CNN);
- predict throughput: faces per second of the saved model predicting end to end, from
  image files to labels in one process (decoding, features of the face and its mirror
  image, model), on the first ``predict_sample`` test faces, after a warm-up call;
- model size: bytes of the saved file (``<task>_model.joblib``, or the CNN's
  ``model.keras`` shared by its heads).

With a Dask scheduler (``Job.scheduler``) the extraction and XGBoost's fits run on the
cluster's workers (:mod:`pipelines.cluster`), so their times include the cluster's
transfers; prediction is always timed in the step's own process.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from joblib.externals.loky import get_reusable_executor

from benchmarks.config import ClassicalPipeline, CNNPipeline, RunPipeline
from models.factory import MODELS
from pipelines.artifacts import CNN_SUMMARY_FILE, SUMMARY_FILE, task_model_file
from pipelines.classical import TrainConfig, save_results, train_tasks
from pipelines.cluster import check_workers_read, connect
from pipelines.dataset import DatasetIndex, index_of_names
from pipelines.feature_blocks import FeatureSpec, extract_views
from pipelines.metrics import group_gap, headline
from pipelines.reports import predictions_path, prepare_output_dir, read_predictions_csv
from pipelines.run import LOG_FORMAT
from pipelines.splits import PARTS, Split, names_sha256

logger = logging.getLogger(__name__)

_WARM_UP_FACES = 2


@dataclass(frozen=True)
class Job:
    """Where a step reads and writes, and how.

    Attributes
    ----------
    data : Path
        UTKFace image folder.
    split : Path
        Split manifest of the faces to use (the shared one, or its subset).
    cache_dir : Path
        Feature cache folder.
    out : Path
        Folder of the step's models, metrics and plots.
    n_jobs : int
        Processes for extraction and image decoding, threads for fitting.
    seed : int
        Seed of PCA, the models and the CNN.
    predict_sample : int
        Test faces timed for predict throughput.
    progress : bool
        Progress bars.
    scheduler : str, optional
        Dask scheduler address (:func:`pipelines.cluster.scheduler_address`): the
        extraction and XGBoost's fits run on its workers, which must read ``data`` at
        the same path. None: everything runs in the step's process. CNN steps ignore it.
    """

    data: Path
    split: Path
    cache_dir: Path
    out: Path
    n_jobs: int
    seed: int
    predict_sample: int
    progress: bool
    scheduler: str | None = None


def load_parts(job: Job) -> tuple[Split, dict[str, DatasetIndex]]:
    """The split and its train, val and test faces, labelled from their names (the
    parent checked that the folder holds them)."""
    split = Split.load(job.split)
    return split, {part: index_of_names(job.data, getattr(split, part)) for part in PARTS}


def task_figures(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline test figures of a task and its worst-group gaps between ethnicities and
    between genders (:func:`pipelines.metrics.group_gap`)."""
    figures: dict[str, Any] = dict(headline(task, metrics))
    for grouping in ("ethnicity", "gender"):
        figures[f"gap_{grouping}"], figures[f"worst_{grouping}"] = group_gap(task, metrics,
                                                                              grouping)
    figures["n_test"] = metrics["overall"]["n"]
    return figures


def face_predictions(files: Sequence[str], true: Any, predicted: Any) -> dict[str, list]:
    """A task's per-face test predictions as a step record holds them (for the report's
    intervals and paired tests)."""
    return {"files": list(files), "true": np.asarray(true, dtype=float).tolist(),
            "predicted": np.asarray(predicted, dtype=float).tolist()}


def faces_per_second(predict: Callable[[list[str]], Any], paths: Sequence[str]) -> float:
    """Throughput of ``predict`` on ``paths``, after a warm-up call on two of them."""
    paths = list(paths)
    predict(paths[:_WARM_UP_FACES])
    start = time.perf_counter()
    predict(paths)
    return len(paths) / (time.perf_counter() - start)


def _cache_entries(cache_dir: Path) -> int:
    """Results stored in a joblib cache folder (one ``output.pkl`` each)."""
    return sum(1 for _ in cache_dir.rglob("output.pkl")) if cache_dir.is_dir() else 0


def extract_step(specs: tuple[FeatureSpec, ...], job: Job) -> dict[str, Any]:
    """Extract (into the feature cache) every block the pipelines of an extractor need,
    on the workers of ``job.scheduler`` when set (their connection is not timed)."""
    _, parts = load_parts(job)
    before = _cache_entries(job.cache_dir)
    with connect(job.scheduler) as client:
        if client is not None:
            check_workers_read(client, [job.data])
        start = time.perf_counter()
        features, mirrored = extract_views(parts, specs, n_jobs=job.n_jobs,
                                           cache_dir=job.cache_dir, progress=job.progress)
        seconds = time.perf_counter() - start
    calls = 2 * len(specs)      # each block of the faces, and of their mirror images
    return {"extract_s": round(seconds, 2),
            "cached_calls": max(0, calls - (_cache_entries(job.cache_dir) - before)),
            "calls": calls, "n_columns": int(features["train"].X.shape[1]),
            "n_faces": sum(len(found.kept) for found in features.values()),
            "n_mirrored": sum(len(found.kept) for found in mirrored.values())}


def classical_step(pipeline: ClassicalPipeline, job: Job) -> dict[str, Any]:
    """Train, score and save one model per task; measure fit, throughput and size.

    With ``job.scheduler``, XGBoost trains on the cluster's workers and an SVM in this
    process (refused above :data:`pipelines.cluster.SVM_CLUSTER_LIMIT` rows); the saved
    models, and the throughput measured with them, need no cluster.
    """
    split, parts = load_parts(job)
    config = TrainConfig(features=pipeline.features, model=pipeline.model, tasks=pipeline.tasks,
                         params=pipeline.params, n_jobs=job.n_jobs, seed=job.seed)
    with connect(job.scheduler) as client:
        results = train_tasks(parts, config, cache_dir=job.cache_dir, progress=job.progress,
                              client=client)
    out = prepare_output_dir(job.out, overwrite=True)
    save_results(out, results, config, {"manifest": str(job.split), "sha256": split.sha256,
                                        **{part: len(faces) for part, faces in parts.items()}})
    tasks = {}
    for result in results:
        sample = [os.path.join(job.data, name) for name in result.test_files[:job.predict_sample]]
        tasks[result.task] = {
            **task_figures(result.task, result.test_metrics),
            "fit_s": result.fit_seconds,
            "predict_faces_per_s": round(faces_per_second(result.pipeline.predict, sample), 1),
            "model_bytes": (out / task_model_file(result.task)).stat().st_size,
            "n_train": result.n_train, "params": result.params,
            "test_faces_sha256": names_sha256(result.test_files),
            "predictions": face_predictions(result.test_files, result.test_true,
                                            result.test_predicted)}
    return {"tasks": tasks}


def cnn_step(pipeline: CNNPipeline, job: Job) -> dict[str, Any]:
    """Train and score a CNN on its tasks; measure training, throughput and size."""
    from models.cnn import gpu_available, load_model
    from pipelines.cnn_training import CNNConfig, train_cnn

    # both architectures under one recipe, as recorded: without the dlib distillation
    # that pipelines.run adds to the default architecture
    config = CNNConfig(architecture=pipeline.architecture, tasks=pipeline.tasks,
                       size=pipeline.size, color=pipeline.color, epochs=pipeline.epochs,
                       batch_size=pipeline.batch_size, distill=False, seed=job.seed,
                       n_jobs=job.n_jobs)
    summary = train_cnn(job.data, job.out, config, manifest_path=job.split, overwrite=True,
                        progress=job.progress)
    model_path = Path(summary["model_path"])
    sample = [os.path.join(job.data, name)
              for name in Split.load(job.split).test[:job.predict_sample]]
    throughput = faces_per_second(load_model(model_path).predict, sample)
    tasks = {}
    for task in summary["tasks"]:
        metrics = json.loads((Path(job.out) / f"{task}_metrics.json").read_text())
        tasks[task] = {**task_figures(task, metrics), "fit_s": summary["train_seconds"],
                       "predict_faces_per_s": round(throughput, 1),
                       "model_bytes": model_path.stat().st_size,
                       "n_train": summary["counts"]["train"],
                       "test_faces_sha256": summary["test_faces_sha256"],
                       "predictions": face_predictions(*read_predictions_csv(
                           predictions_path(job.out, task)))}
    return {"tasks": tasks, "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "train_images_per_second": summary["train_images_per_second"],
            "device": "GPU" if gpu_available() else "CPU"}


def _summary(out: Path) -> dict[str, Any]:
    """A run folder's summary: ``cnn_summary.json`` of a CNN, else ``summary.json``."""
    for name in (CNN_SUMMARY_FILE, SUMMARY_FILE):
        if (out / name).is_file():
            return json.loads((out / name).read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{out} holds no {SUMMARY_FILE} or {CNN_SUMMARY_FILE}")


def _task_row(summary: dict[str, Any], task: str) -> dict[str, Any]:
    """The summary table row of a task's own model (a stack's combined one)."""
    rows = [row for row in summary.get("rows", ()) if row["task"] == task
            and ("members" not in summary or row["model"] == "stack")]
    return rows[0] if rows else {}


def run_figures(out: Path, tasks: Sequence[str], data: Path,
                predict_sample: int) -> dict[str, Any]:
    """Figures of a ``pipelines.run`` folder per task: test metrics, per-face predictions,
    fit time, throughput and size of the model file that predicts the task.

    Throughput is timed on the first ``predict_sample`` test faces the run scored (a
    descriptor pipeline leaves out the faces dlib finds no face in, which its saved
    model cannot judge either).
    """
    from pipelines.predictor import load_model_file, model_files

    summary = _summary(out)
    scored = {task: read_predictions_csv(predictions_path(out, task)) for task in tasks}
    sample = [os.path.join(data, name) for name in scored[tasks[0]][0][:predict_sample]]
    throughput, sizes, source = {}, {}, {}
    for path in model_files(out):
        models = load_model_file(path)
        model = next(iter(models.values()))
        throughput[path] = faces_per_second(model.predict, sample)
        sizes[path] = path.stat().st_size
        for task in models:
            source.setdefault(task, path)
    figures = {}
    for task in tasks:
        metrics = json.loads((out / f"{task}_metrics.json").read_text(encoding="utf-8"))
        files, true, predicted = scored[task]
        row = _task_row(summary, task)
        path = source[task]
        figures[task] = {
            **task_figures(task, metrics),
            "fit_s": row.get("fit_s", summary.get("train_seconds", summary.get("seconds"))),
            "predict_faces_per_s": round(throughput[path], 1),
            "model_bytes": sizes[path],
            "n_train": row.get("n_train") or summary.get("counts", {}).get("train"),
            "test_faces_sha256": names_sha256(files),
            "predictions": face_predictions(files, true, predicted)}
    return figures


class _Tee(io.TextIOBase):
    """A text stream that writes to another and keeps a copy."""

    def __init__(self, stream) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        """What was written."""
        return self.copy.getvalue()


def run_step(pipeline: RunPipeline, job: Job) -> dict[str, Any]:
    """Run a ``pipelines.run`` command into ``job.out`` and read its figures back."""
    from pipelines.run import main

    args = [*pipeline.arguments(job.out.parent), "--data", str(job.data),
            "--split", str(job.split), "--out", str(job.out), "--overwrite",
            "--cache-dir", str(job.cache_dir), "--n-jobs", str(job.n_jobs),
            "--seed", str(job.seed), *([] if job.progress else ["--quiet"])]
    if job.scheduler and pipeline.model in MODELS:      # classical models use a cluster
        args += ["--scheduler", job.scheduler]
    command = shlex.join(["python", "-m", "pipelines.run", *args])
    logger.info("%s: %s", pipeline.name, command)
    start, errors = time.perf_counter(), _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(errors):
            status = main(args)
    except SystemExit as exit_:      # argparse refused the arguments
        status = exit_.code
    if status:
        said = [line for line in errors.text().splitlines() if "error" in line.lower()]
        raise RuntimeError(f"{command} ended with exit status {status}"
                           + (f": {said[-1]}" if said else ""))
    seconds = time.perf_counter() - start
    summary = _summary(job.out)
    return {"tasks": run_figures(job.out, pipeline.tasks, job.data, job.predict_sample),
            "run_command": command,
            "command_s": round(seconds, 1),
            "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
            "train_images_per_second": summary.get("train_images_per_second")}


STEPS: dict[str, Callable[[Any, Job], dict[str, Any]]] = {
    "extract": extract_step, "classical": classical_step, "cnn": cnn_step, "run": run_step}


def child_main(connection, kind: str, target: Any, job: Job, log_level: int) -> None:
    """Entry point of a step's child process: run it, send ``("done", result)`` or
    ``("failed", message, traceback)`` through ``connection``.

    The child leads a process group of its own, so that the parent can stop it with
    the processes it started (joblib's workers).
    """
    os.setpgrp()
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    try:
        message: tuple = ("done", STEPS[kind](target, job))
    except Exception as error:           # MemoryError included: report it, do not crash
        message = ("failed", f"{type(error).__name__}: {error}", traceback.format_exc())
    connection.send(message)
    connection.close()
    # A multiprocessing child waits at exit for its children, before the atexit hook
    # that stops joblib's idle worker processes would run: stop them now.
    get_reusable_executor().shutdown(wait=True)
