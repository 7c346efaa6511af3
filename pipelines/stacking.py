"""The stacked model: trained run folders in, one saved model for every task out.

``python -m pipelines.run --model stack`` (see :mod:`pipelines.run`) trains the member
runs of :data:`DEFAULT_MEMBERS` that are missing, then calls :func:`run_stack`: every
member judges the validation and test faces (outputs cached per member file and face
set), a :class:`models.stack.StackedFaceModel` fits its combiners on the **validation**
faces only, members and stack are scored on the test faces (95 % bootstrap intervals,
and the stack against each member: :mod:`pipelines.significance`), and the stack is saved as
one ``stack_model.joblib`` (checksummed metadata beside it) that
:mod:`pipelines.predict` and ``joblib.load(...).predict(paths)`` use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import joblib
import numpy as np

from models.safety import file_sha256, read_metadata
from models.stack import StackedFaceModel, is_multitask, labels_of, member_tasks
from pipelines.artifacts import CNN_SUMMARY_FILE, PACKAGE, STACK_FILE, SUMMARY_FILE, versions
from pipelines.dataset import DatasetIndex, index_folder
from pipelines.fairness import balance_weights
from pipelines.metrics import evaluate_task, headline
from pipelines.predictor import ModelError, load_model_file, model_files
from pipelines.reports import (atomic_path, atomic_write_json, prepare_output_dir, result_row,
                               save_artifact, write_task_report)
from pipelines.significance import bootstrap_interval, compare, face_scores
from pipelines.splits import load_or_create_split, names_sha256

logger = logging.getLogger(__name__)

#: Tasks the stack combines; age groups come from the predicted age.
STACK_TASKS: tuple[str, ...] = ("gender", "ethnicity", "age")
MEMBERS_DIR = "members"
#: Task -> balance mode of its combiner's fit by default (:mod:`pipelines.fairness`):
#: square-root class weights raise the recall of the rare ethnicities ("Others") at a
#: small cost in accuracy (chosen on the validation faces: docs/fairness.md).
DEFAULT_STACK_BALANCE: dict[str, str] = {"ethnicity": "class-sqrt"}

#: Member name -> ``pipelines.run`` arguments that train it (``--out`` and the data,
#: split, cache and seed options are added).
DEFAULT_MEMBERS: dict[str, tuple[str, ...]] = {
    "dlib-gender": ("--features", "dlib:200:rgb", "hog:128:gray:250", "hog:64:gray:100",
                    "lbp:128:gray:50", "pixels:16:rgb:50", "--tasks", "gender"),
    "dlib-ethnicity": ("--features", "dlib:200:rgb", "--tasks", "ethnicity",
                       "--param", "C=3"),
    "dlib-age": ("--features", "dlib:200:rgb", "--tasks", "age", "--param", "C=10",
                 "--param", "epsilon=0.5"),
    "classical": ("--tasks", *STACK_TASKS),
    "cnn": ("--model", "cnn"),
    "face-resnet": ("--model", "cnn", "--architecture", "face-resnet"),
}


def has_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a trained run (a model file :mod:`pipelines.predictor` reads)."""
    try:
        model_files(folder)
    except ModelError:
        return False
    return Path(folder).is_dir()


def _checked_keras(path: Path) -> str:
    """SHA-256 of a CNN member's ``model.keras``, checked against its run summary."""
    digest = file_sha256(path)
    summary_path = path.parent / CNN_SUMMARY_FILE
    try:
        recorded = json.loads(summary_path.read_text(encoding="utf-8")).get("model_sha256")
    except (OSError, ValueError):
        recorded = None
    if recorded is None:
        logger.warning("%s: no model_sha256 in %s, the network is used unchecked", path,
                       summary_path)
    elif recorded != digest:
        raise ModelError(f"{path} has SHA-256 {digest}, but {summary_path} records "
                         f"{recorded}: the file was altered or replaced after training")
    return digest


def load_member(folder: str | os.PathLike) -> tuple[Any, str]:
    """Load a trained run folder as a stack member.

    Returns
    -------
    member, str
        A ``CNNPredictor`` (a CNN run) or a dict task -> ``Pipeline`` (a classical
        run, :data:`STACK_TASKS` only), and the SHA-256 of its model files together.

    Raises
    ------
    pipelines.predictor.ModelError
        For a folder without a model, an unreadable model, or a file whose SHA-256
        differs from the one recorded when it was trained.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"no run folder at {folder}")
    models: dict[str, Any] = {}
    digest = hashlib.sha256()
    for file in model_files(folder):
        loaded = {task: model for task, model in load_model_file(file).items()
                  if task in STACK_TASKS and task not in models}
        if loaded:
            # a .joblib's SHA-256 was checked against its metadata by load_model_file
            digest.update((_checked_keras(file) if file.suffix == ".keras"
                           else read_metadata(file)["sha256"]).encode())
            models.update(loaded)
    if not models:
        raise ModelError(f"{folder} predicts none of {STACK_TASKS}")
    networks = {id(model): model for model in models.values() if is_multitask(model)}
    if not networks:
        return models, digest.hexdigest()
    if len(networks) > 1 or len(set(map(id, models.values()))) > 1:
        raise ModelError(f"{folder} holds several models (a CNN or stack and others): give "
                         f"each as its own member")
    return next(iter(networks.values())), digest.hexdigest()


def _outputs_path(cache_dir: Path, name: str, member_sha: str, faces: DatasetIndex) -> Path:
    key = hashlib.sha256(f"{member_sha}\n{names_sha256(faces.file_names)}\n"
                         f"{Path(faces.folder).resolve()}".encode()).hexdigest()
    return cache_dir / f"{name}-{key[:20]}.npz"


def member_outputs(members: Mapping[str, tuple[Any, str]], faces: DatasetIndex, *,
                   cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Every member's outputs for a set of faces, read from or written to the cache.

    Parameters
    ----------
    members : mapping
        Name -> (member, SHA-256 of its files), as :func:`load_member` gives.
    faces : DatasetIndex
        The faces.
    cache_dir : path-like, optional
        Folder of cached outputs (``<member>-<key>.npz``, the key from the member's
        files and the faces); None computes everything.
    progress : bool
        Progress bars.

    Returns
    -------
    dict
        Member name -> task -> outputs (see ``StackedFaceModel.member_outputs``).
    """
    found: dict[str, dict[str, np.ndarray]] = {}
    paths = {name: _outputs_path(Path(cache_dir), name, sha, faces) if cache_dir else None
             for name, (_, sha) in members.items()}
    for name, path in paths.items():
        if path is not None and path.is_file():
            with np.load(path) as stored:
                found[name] = {task: stored[task] for task in stored.files}
            logger.info("outputs of %s on %d faces read from %s", name, len(faces), path)
    missing = {name: member for name, (member, _) in members.items() if name not in found}
    if missing:
        computed = StackedFaceModel(missing).member_outputs(list(faces.paths), STACK_TASKS,
                                                            progress)
        for name, outputs in computed.items():
            found[name] = outputs
            if paths[name] is not None:
                paths[name].parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(paths[name]) as temp:
                    with open(temp, "wb") as stream:
                        np.savez(stream, **outputs)
    return {name: found[name] for name in members}


def judged_rows(outputs: np.ndarray) -> np.ndarray:
    """Rows a member judged (no NaN)."""
    return ~np.isnan(outputs.reshape(len(outputs), -1)).any(axis=1)


def _figure(task: str, y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy or MAE with its bootstrap interval."""
    scores = face_scores(task, y_true, predicted)
    key = "mae" if task == "age" else "accuracy"
    return {key: float(scores.mean()), "ci95": list(bootstrap_interval(scores))}


def score_task(task: str, stack_outputs: np.ndarray,
               member_outputs: Mapping[str, Mapping[str, np.ndarray]],
               faces: DatasetIndex) -> dict[str, dict[str, Any]]:
    """The stack's and each member's figure on ``faces``, and the stack against each member.

    A member is scored on the faces it judged, and compared with the stack on those.

    Returns
    -------
    dict
        ``"stack"`` -> figure with ``ci95``; member name -> figure with ``ci95`` and
        ``vs_stack`` (:func:`pipelines.significance.compare`, the stack as model A).
    """
    y_true = faces.labels(task)
    stack = labels_of(task, stack_outputs)
    scores = {"stack": _figure(task, y_true, stack)}
    for name, outputs in member_outputs.items():
        judged = judged_rows(outputs[task])
        member = labels_of(task, outputs[task][judged])
        scores[name] = {**_figure(task, y_true[judged], member),
                        "vs_stack": compare(task, y_true[judged], stack[judged], member)}
    return scores


def _table_row(task: str, model: str, validation: Mapping[str, float],
               test: Mapping[str, Any], n_train: int | None = None) -> dict[str, Any]:
    """A summary-table row with the test interval and, for a member, the paired test."""
    row = result_row(task, model, n_train, validation, test)
    low, high = test["ci95"]
    row["test_95ci"] = f"{low:.3f}-{high:.3f}"
    versus = test.get("vs_stack")
    if versus is None:
        row["stack_vs_member"] = "-"
    elif "p_mcnemar" in versus:
        row["stack_vs_member"] = f"{versus['difference']:+.3f} (p={versus['p_mcnemar']:.2g})"
    else:
        low, high = versus["difference_ci95"]
        row["stack_vs_member"] = f"{versus['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
    return row


def _score_stack(stack: StackedFaceModel, outputs: Mapping[str, Mapping[str, Any]],
                 val: DatasetIndex, test: DatasetIndex,
                 out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score the fitted stack and its members on the test faces, write the stack's
    reports; return the summary rows (members' validation figures beside) and the test
    figures per task (:func:`score_task`)."""
    combined = stack.combine(outputs["test"])
    rows, test_figures = [], {}
    for task in stack.tasks_:
        used = {name: outputs["test"][name] for name in stack.inputs_[task]}
        scores = score_task(task, combined[task], used, test)
        for name in stack.inputs_[task]:
            judged = judged_rows(outputs["val"][name][task])
            validation = _figure(task, val.labels(task)[judged],
                                 labels_of(task, outputs["val"][name][task][judged]))
            rows.append(_table_row(task, name, validation, scores[name]))
        predicted = labels_of(task, combined[task])
        metrics = evaluate_task(task, test.labels(task), predicted, gender=test.gender,
                                ethnicity=test.ethnicity, age=test.age)
        write_task_report(out, task, metrics, test.labels(task), predicted, test.file_names)
        kept = stack.cv_scores_[task]
        validation = {kept["metric"]: kept["combiners"][kept["kept"]]}
        if (kept.get("equalized_odds") or {}).get("after"):
            validation = {"accuracy": kept["equalized_odds"]["after"]["accuracy"]}
        rows.append(_table_row(task, "stack", validation,
                               {**headline(task, metrics), **scores["stack"]}, len(val)))
        test_figures[task] = scores
    return rows, test_figures


def run_stack(data_dir: str | os.PathLike, member_dirs: Mapping[str, str | os.PathLike], *,
              split_path: str | os.PathLike, out_dir: str | os.PathLike,
              cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
              progress: bool = True, seed: int = 0, postprocess: str = "none",
              balance: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Fit the stack of trained runs on the validation faces, score it on the test faces.

    The stack combines the tasks of :data:`STACK_TASKS` that at least one member predicts.

    Parameters
    ----------
    data_dir : path-like
        UTKFace image folder.
    member_dirs : mapping of str to path-like
        Member name -> its run folder (trained on the same split).
    split_path : path-like
        Split manifest.
    out_dir : path-like
        Results folder: ``stack_model.joblib`` and its metadata, per-task metrics and
        plots of the stack, ``summary.json``; a ``members`` folder in it is kept.
    cache_dir : path-like, optional
        Folder of cached member outputs.
    overwrite : bool
        Allow an output folder that already holds results.
    progress : bool
        Progress bars.
    seed : int
        Seed of the combiners' cross-validation folds.
    postprocess : {"none", "equalized-odds"}
        Post-processing of gender (``StackedFaceModel``).
    balance : mapping of str to str, optional
        Task -> balance mode of its combiner's validation faces (one of
        :data:`pipelines.fairness.BALANCE_MODES`); a task not named fits unweighted.
        Default: :data:`DEFAULT_STACK_BALANCE`.

    Returns
    -------
    dict
        The content of ``summary.json``: ``rows`` (per task, each member and the stack),
        ``members``, ``combiners``, ``fitted_on``, ``split``, ``test`` (per task,
        :func:`score_task` on the test faces), ``seconds``, ``versions``.

    Raises
    ------
    pipelines.predictor.ModelError
        For a missing, unreadable or altered member (before anything is written).
    """
    start = time.perf_counter()
    index = index_folder(data_dir)
    split = load_or_create_split(index, split_path, seed=seed)
    parts = split.apply(index)
    members = {name: load_member(folder) for name, folder in member_dirs.items()}
    out = prepare_output_dir(out_dir, overwrite, keep=(MEMBERS_DIR,))
    outputs = {part: member_outputs(members, parts[part], cache_dir=cache_dir,
                                    progress=progress) for part in ("val", "test")}
    val, test = parts["val"], parts["test"]
    stack = StackedFaceModel({name: member for name, (member, _) in members.items()},
                             seed=seed, postprocess=postprocess)
    predicted = {task for member, _ in members.values() for task in member_tasks(member)}
    tasks = [task for task in STACK_TASKS if task in predicted]
    if balance is None:
        balance = DEFAULT_STACK_BALANCE
    balance = {task: mode for task, mode in balance.items() if task in tasks}
    stack.fit_outputs(outputs["val"], {task: val.labels(task) for task in tasks},
                      {task: balance_weights(mode, task, val) for task, mode in balance.items()})
    rows, test_figures = _score_stack(stack, outputs, val, test, out)
    split_info = {"manifest": str(Path(split_path).resolve()), "sha256": split.sha256,
                  **{part: len(faces) for part, faces in parts.items()}}
    fitted_on = {"part": "val", "n": len(val), "faces_sha256": names_sha256(val.file_names)}
    metadata = {
        "format_version": 1, "package_version": versions()[PACKAGE], "kind": "stack",
        "tasks": list(stack.tasks_), "postprocess": postprocess, "balance": balance,
        "members": {name: {"folder": str(member_dirs[name]), "sha256": sha,
                           "tasks": list(member_tasks(member))}
                    for name, (member, sha) in members.items()},
        "combiners": {task: {"inputs": stack.inputs_[task], **stack.cv_scores_[task]}
                      for task in stack.tasks_},
        "fitted_on": fitted_on, "split": split_info,
        "test": test_figures, "n_test": len(test), "versions": versions(),
    }
    save_artifact(out / STACK_FILE, lambda temp: joblib.dump(stack, temp), metadata)
    summary = {"rows": rows, **{key: metadata[key] for key in
                                ("members", "combiners", "fitted_on", "split", "test")},
               "data": str(index.folder), "seconds": round(time.perf_counter() - start, 1),
               "versions": versions()}
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary
