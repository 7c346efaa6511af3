"""Writing results: atomic files, per-task metric reports with plots, a summary table.

Every file is written to a temporary name in its destination folder and moved into
place with :func:`os.replace`, so a crash or Ctrl-C never leaves a half-written file
under the final name: the previous file (if any) or nothing remains.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from models.safety import file_sha256, metadata_path
from pipelines.metrics import class_names

logger = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """The output folder already holds results and overwriting was not asked for."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    For writers that want a file name (``joblib.dump``, ``Figure.savefig``). If the
    block raises (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left untouched. Missing parent folders are created.

    Examples
    --------
    >>> with atomic_path("model.joblib") as temp:      # doctest: +SKIP
    ...     joblib.dump(model, temp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix: some writers choose the format from it
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.",
                                         suffix=f".tmp{target.suffix}")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes owner-only files
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); return the path."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline) atomically; return the path."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_artifact(path: str | os.PathLike, write: Callable[[Path], None],
                  metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Write a model file atomically, then its metadata JSON with the file's SHA-256.

    Parameters
    ----------
    path : path-like
        Destination, e.g. ``out/gender_model.joblib``.
    write : callable
        Writes the model to the path it is given (a temporary name with the same
        suffix), e.g. ``lambda temp: joblib.dump(model, temp)``.
    metadata : mapping
        Facts to record; ``file`` (the model's file name) and ``sha256`` are added.

    Returns
    -------
    dict
        The metadata written to :func:`models.safety.metadata_path` of ``path``,
        which :func:`models.safety.load_model` checks before loading.
    """
    path = Path(path)
    with atomic_path(path) as temp:
        write(temp)
        digest = file_sha256(temp)
    record = {**metadata, "file": path.name, "sha256": digest}
    atomic_write_json(metadata_path(path), record)
    return record


def prepare_output_dir(out_dir: str | os.PathLike, overwrite: bool = False,
                       keep: Sequence[str] = ()) -> Path:
    """Create the output folder, refusing one that already holds files.

    Parameters
    ----------
    out_dir : path-like
        Results folder.
    overwrite : bool
        Allow a folder with files; they are replaced one by one as new results are
        written (files of an earlier run that this run does not write are left).
    keep : sequence of str
        Names of entries that do not count as results (e.g. a folder of inputs).

    Raises
    ------
    OutputExistsError
        If the folder holds files and ``overwrite`` is false.
    NotADirectoryError
        If ``out_dir`` is a file.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {path} is a file, not a folder")
    if path.is_dir() and not overwrite:
        existing = sorted(entry.name for entry in path.iterdir() if entry.name not in keep)
        if existing:
            raise OutputExistsError(
                f"{path} already holds results ({', '.join(existing[:5])}"
                f"{', ...' if len(existing) > 5 else ''}); pass --overwrite to replace them "
                f"or choose another output folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def predictions_path(out_dir: str | os.PathLike, task: str) -> Path:
    """The file of a task's per-face test predictions in a run folder."""
    return Path(out_dir) / f"{task}_predictions.csv"


def write_predictions_csv(path: str | os.PathLike, files: Sequence[str], y_true: ArrayLike,
                          y_pred: ArrayLike) -> Path:
    """Write per-face predictions, ``file,true,predicted`` (class codes or years), atomically."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(files) == len(y_true) == len(y_pred):
        raise ValueError(f"{len(files)} file names for {len(y_true)} labels and "
                         f"{len(y_pred)} predictions")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "true", "predicted"])
    writer.writerows(zip(files, y_true.tolist(), y_pred.tolist()))
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def read_predictions_csv(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The file names, labels and predictions of :func:`write_predictions_csv`.

    Raises
    ------
    ValueError
        If the file lacks the ``file,true,predicted`` header or a value is not a number
        (the message names the file and the line).
    """
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0] != ["file", "true", "predicted"]:
        raise ValueError(f"{path}: expected the header file,true,predicted")
    files, true, predicted = [], [], []
    for number, row in enumerate(rows[1:], start=2):
        try:
            name, y, p = row
            true.append(float(y))
            predicted.append(float(p))
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected a file name and two "
                             f"numbers, got {row}") from None
        files.append(name)
    return files, np.asarray(true), np.asarray(predicted)


def write_task_report(out_dir: str | os.PathLike, task: str, metrics: Mapping[str, Any],
                      y_true: ArrayLike, y_pred: ArrayLike,
                      files: Sequence[str] | None = None) -> list[Path]:
    """Write one task's metrics, plots and (given ``files``) per-face predictions into
    ``out_dir``, atomically.

    Parameters
    ----------
    out_dir : path-like
        Results folder (created if missing).
    task : str
        Task name; files are named after it.
    metrics : mapping
        The task's :func:`pipelines.metrics.evaluate_task` result; a classification's
        plot shows its ``overall`` confusion matrix.
    y_true, y_pred : array_like
        Labels and predictions the metrics were computed from (the age plot uses them).
    files : sequence of str, optional
        The faces' file names, in the order of ``y_true``: the predictions are written
        to :func:`predictions_path` (what paired comparisons of runs read).

    Returns
    -------
    list of Path
        ``<task>_metrics.json``, then ``<task>_confusion.png`` for a classification
        or ``<task>_error.png`` (error against true age) for age, then the predictions.
    """
    out_dir = Path(out_dir)
    written = [atomic_write_json(out_dir / f"{task}_metrics.json", metrics)]
    names = class_names(task)
    if names is None:
        figure = plot_age_errors(y_true, y_pred)
        name = f"{task}_error.png"
    else:
        figure = plot_confusion_matrix(metrics["overall"]["confusion_matrix"], names,
                                       title=task)
        name = f"{task}_confusion.png"
    with atomic_path(out_dir / name) as temp:
        figure.savefig(temp, format="png", dpi=120)
    written.append(out_dir / name)
    if files is not None:
        written.append(write_predictions_csv(predictions_path(out_dir, task), files, y_true,
                                             y_pred))
    logger.info("wrote %s", ", ".join(str(path) for path in written))
    return written


def plot_confusion_matrix(matrix: ArrayLike, names: Sequence[str], title: str = ""):
    """Confusion matrix figure: counts in the cells, colour by share of the true class.

    Returns
    -------
    matplotlib.figure.Figure
        A figure not registered with pyplot (no display needed).
    """
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.55 * len(names)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, str(count), ha="center", va="center", fontsize=8,
                  color="white" if shares[row, col] > 0.5 else "black")
    axes.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted",
             ylabel="true", title=title)
    axes.set_xticklabels(names, rotation=45, ha="right")
    axes.set_yticklabels(names)
    figure.colorbar(image, ax=axes, label="share of the true class")
    return figure


def plot_age_errors(y_true: ArrayLike, y_pred: ArrayLike, bin_years: int = 5):
    """Age error against true age: each face's signed error, and the MAE per age bin.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    y_true = np.asarray(y_true, dtype=np.float64)
    error = np.asarray(y_pred, dtype=np.float64) - y_true
    bins = (y_true // bin_years).astype(np.int64)
    centres, mae = [], []
    for value in np.unique(bins):
        centres.append(value * bin_years + bin_years / 2)
        mae.append(np.mean(np.abs(error[bins == value])))
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.scatter(y_true, error, s=4, alpha=0.25, color="tab:blue", label="prediction - truth")
    axes.plot(centres, mae, color="tab:red", marker="o", ms=3,
              label=f"mean absolute error per {bin_years} years")
    axes.axhline(0, color="black", lw=0.8)
    axes.set(xlabel="true age (years)", ylabel="error (years)",
             title=f"age error (MAE {np.mean(np.abs(error)):.2f})")
    axes.legend(loc="upper left")
    return figure


def result_row(task: str, model: str, n_train: int, validation: Mapping[str, float],
               test: Mapping[str, float]) -> dict[str, Any]:
    """One task's line of a summary table: training faces, validation score, test figures.

    ``validation`` holds ``accuracy`` or ``mae``, ``test`` the
    :func:`pipelines.metrics.headline` figures; the keys a task lacks stay empty (``None``).
    """
    return {"task": task, "model": model, "n_train": n_train,
            "val_accuracy": validation.get("accuracy"), "val_mae": validation.get("mae"),
            **{f"test_{key}": test.get(key)
               for key in ("accuracy", "f1_macro", "mae", "rmse", "within_5")}}


def format_summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of result rows, columns in order of first appearance.

    Floats are shown with 3 decimals, missing values as ``-``.

    Examples
    --------
    >>> print(format_summary_table([{"task": "gender", "accuracy": 0.9123}]))
    task    accuracy
    ------  --------
    gender     0.912
    """
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, (float, np.floating)):
            return f"{value:.3f}"
        return str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells])
              for i, column in enumerate(columns)]
    numeric = [all(_is_number(row.get(column)) for row in rows) for column in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if right else value.ljust(width)
                         for value, width, right in zip(values, widths, numeric)).rstrip()

    header = line(columns)
    rule = "  ".join("-" * width for width in widths)
    return "\n".join([header, rule, *(line(values) for values in cells)])


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float, np.number))
                             and not isinstance(value, bool))
