"""Scores of predictions: the one place metrics are computed, for every model.

Classification tasks (gender, ethnicity, age_group) get accuracy, macro and per-class
precision, recall and F1, and a confusion matrix; age regression gets the mean
absolute error, the root mean squared error and the share of predictions within
5 years. :func:`evaluate_task` adds the same metrics per ethnicity, per gender and
per age group (fairlearn's ``MetricFrame``), with the largest gap between groups and
the worst group, so that weak spots (children, the elderly, rare ethnicities) show.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (accuracy_score, confusion_matrix, mean_absolute_error,
                             precision_recall_fscore_support)

from models.labels import AGE_GROUP_NAMES, ETHNICITY_NAMES, GENDER_NAMES, TASKS, age_group

#: Class names of each classification task; ``age`` is a regression and has none.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "gender": GENDER_NAMES,
    "ethnicity": ETHNICITY_NAMES,
    "age_group": AGE_GROUP_NAMES,
}
#: Predictions of age within this many years count as close (``within_5``).
CLOSE_YEARS = 5.0


def class_names(task: str) -> tuple[str, ...] | None:
    """Class names of a classification task, ``None`` for the ``age`` regression.

    Raises
    ------
    ValueError
        For an unknown task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return CLASS_NAMES.get(task)


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and the confusion matrix of class predictions.

    Parameters
    ----------
    y_true, y_pred : array_like of int
        True and predicted class indices into ``class_names``.
    class_names : sequence of str
        Name of each class; every class is reported, present or not.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro``
        (macro averages over the classes present in ``y_true``), ``per_class``
        (name -> ``precision``, ``recall``, ``f1``, ``support``), ``class_names`` and
        ``confusion_matrix`` (rows true class, columns predicted class). Precision of a
        class never predicted counts as 0.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    labels = np.arange(len(class_names))
    outside = np.setdiff1d(np.concatenate([y_true, y_pred]), labels)
    if outside.size:
        raise ValueError(f"class indices {outside.tolist()} are outside 0..{len(labels) - 1}")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    present = support > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f),
                             "support": int(s)}
                      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """Errors of age predictions in years.

    Returns
    -------
    dict
        ``n``, ``mae``, ``rmse``, ``within_5`` (share of absolute errors <= 5 years)
        and ``bias`` (mean of prediction minus truth).
    """
    y_true, y_pred = _check_pair(y_true, y_pred, dtype=np.float64)
    error = y_pred - y_true
    return {
        "n": int(len(y_true)),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(np.square(error)))),
        "within_5": float(np.mean(np.abs(error) <= CLOSE_YEARS)),
        "bias": float(np.mean(error)),
    }


def evaluate_task(task: str, y_true: ArrayLike, y_pred: ArrayLike, *, gender: ArrayLike,
                  ethnicity: ArrayLike, age: ArrayLike) -> dict[str, Any]:
    """Overall metrics of one task, the same metrics per demographic group, and the gaps.

    Groups are scored with fairlearn's ``MetricFrame`` (per ethnicity, gender and age
    group of the true labels).

    Parameters
    ----------
    task : {"gender", "ethnicity", "age", "age_group"}
        The task; ``age`` is scored with :func:`regression_metrics`, the others with
        :func:`classification_metrics` over the task's class names.
    y_true, y_pred : array_like
        Labels and predictions of the same faces.
    gender, ethnicity, age : array_like of int
        True gender and ethnicity codes and age in years of those faces, used to group.

    Returns
    -------
    dict
        ``task``, ``overall`` (metrics of all faces), ``by_group``
        (``{"ethnicity" | "gender" | "age_group": {group name: metrics}}``, groups
        without faces left out) and ``fairness``: per grouping, the task's headline
        figure (``metric``: accuracy, or MAE for age) ``overall``, its largest difference
        between groups (``gap``), the ``worst`` group and its value; for gender, the
        equalized-odds and demographic-parity differences between ethnicities; for a
        classification, the class with the lowest recall (``worst_class``).
    """
    from fairlearn.metrics import (MetricFrame, demographic_parity_difference,
                                   equalized_odds_difference)

    names = class_names(task)
    y_true, y_pred = _check_pair(y_true, y_pred, dtype=np.float64 if names is None else None)

    def score(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
        if names is None:
            return regression_metrics(truth, predicted)
        return classification_metrics(truth, predicted, names)

    key = "mae" if names is None else "accuracy"
    headline_metric = mean_absolute_error if names is None else accuracy_score
    groups = {"ethnicity": _group_names(ethnicity, ETHNICITY_NAMES, y_true.shape, "ethnicity"),
              "gender": _group_names(gender, GENDER_NAMES, y_true.shape, "gender"),
              "age_group": _group_names(age_group(age), AGE_GROUP_NAMES, y_true.shape,
                                        "age_group")}
    by_group, fairness = {}, {}
    for grouping, (labels, order) in groups.items():
        frame = MetricFrame(metrics={"all": score, key: headline_metric}, y_true=y_true,
                            y_pred=y_pred, sensitive_features=labels)
        found = [name for name in order if name in frame.by_group.index]
        by_group[grouping] = {name: frame.by_group.loc[name, "all"] for name in found}
        values = frame.by_group[key]
        worst = str(values.idxmax() if names is None else values.idxmin())
        fairness[grouping] = {"metric": key, "overall": float(frame.overall[key]),
                              "gap": float(frame.difference()[key]) if len(found) > 1 else None,
                              "worst": worst if len(found) > 1 else None,
                              "worst_value": float(values[worst])}
    overall = frame.overall["all"]     # MetricFrame scored every face too
    if task == "gender":
        ethnicities = groups["ethnicity"][0]
        fairness["equalized_odds_difference_ethnicity"] = float(
            equalized_odds_difference(y_true, y_pred, sensitive_features=ethnicities))
        fairness["demographic_parity_difference_ethnicity"] = float(
            demographic_parity_difference(y_true, y_pred, sensitive_features=ethnicities))
    if names is not None:
        present = {name: figures["recall"] for name, figures in overall["per_class"].items()
                   if figures["support"]}
        worst_class = min(present, key=present.get)
        fairness["worst_class"] = {"class": worst_class, "recall": present[worst_class]}
    return {"task": task, "overall": overall, "by_group": by_group, "fairness": fairness}


def _group_names(codes: ArrayLike, names: Sequence[str], shape: tuple[int, ...],
                 grouping: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group names of the faces (for fairlearn's sensitive features), and their order."""
    codes = np.asarray(codes)
    if codes.shape != shape:
        raise ValueError(f"{grouping} has shape {codes.shape}, expected {shape}")
    return np.asarray(names, dtype=object)[codes], tuple(names)


def headline(task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The figures a summary table shows for one task's :func:`evaluate_task` result.

    Accuracy and macro F1 for a classification, MAE, RMSE and ``within_5`` for age.
    """
    overall = metrics["overall"]
    keys = ("mae", "rmse", "within_5") if class_names(task) is None else ("accuracy", "f1_macro")
    return {key: overall[key] for key in keys}


def group_gap(task: str, metrics: dict[str, Any],
              grouping: str) -> tuple[float, str] | tuple[None, None]:
    """Largest difference of a task's headline figure between the groups of one grouping.

    The figure is accuracy for a classification and MAE for age, as
    :func:`evaluate_task` reports it under ``fairness``.

    Returns
    -------
    (float, str) or (None, None)
        The gap (best group's value minus worst group's, so never negative) and the
        worst group's name (lowest accuracy or highest MAE); None, None with fewer
        than two groups.
    """
    found = metrics["fairness"][grouping]
    return (found["gap"], found["worst"]) if found["gap"] is not None else (None, None)


def _check_pair(y_true: ArrayLike, y_pred: ArrayLike,
                dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=dtype), np.asarray(y_pred, dtype=dtype)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be 1-d of one length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions to score")
    return y_true, y_pred
