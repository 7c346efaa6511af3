"""Mitigating group gaps while training: sample weights that balance classes or groups.

``balance="class"`` gives every class of the task (every age group, for age) the same
total weight; ``balance="class-sqrt"`` weighs each face by the inverse square root of
its class's count, so a class's total weight grows with the square root of its size (a
milder step towards balance); ``balance="group"`` gives every demographic group of the
training faces, ethnicity x gender x age group, the same total weight, so that the rare
groups (older faces, "Others") count as much as the common ones. Weights average 1 over
the rows fitted; ``"none"`` fits unweighted. The per-group figures that judge the
result come from :func:`pipelines.metrics.evaluate_task`.
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight

from models.labels import AGE_GROUP_NAMES, GENDER_NAMES
from pipelines.dataset import DatasetIndex
from pipelines.metrics import class_names

BALANCE_MODES: tuple[str, ...] = ("none", "class", "class-sqrt", "group")
#: Power of the fully balanced weight each mode uses (1: every key weighs alike).
_BALANCE_POWER = {"class": 1.0, "class-sqrt": 0.5, "group": 1.0}


def balance_keys(mode: str, task: str, faces: DatasetIndex) -> np.ndarray | None:
    """What each face is balanced on: its class (age group for age) or its group code
    (ethnicity x gender x age group); None for ``"none"``.

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {mode!r}")
    if mode == "none":
        return None
    if mode in ("class", "class-sqrt"):
        return faces.labels(task if class_names(task) is not None else "age_group")
    return ((faces.ethnicity * len(GENDER_NAMES) + faces.gender) * len(AGE_GROUP_NAMES)
            + faces.labels("age_group"))


def balanced_weights(keys: np.ndarray | None, power: float = 1.0) -> np.ndarray | None:
    """Per-row weights ``(n / (k * n_key)) ** power``, rescaled to average 1: with
    ``power=1`` every key present gets the same total weight."""
    if keys is None:
        return None
    weights = compute_sample_weight("balanced", np.asarray(keys)) ** power
    return weights / weights.mean()


def balance_weights(mode: str, task: str, faces: DatasetIndex,
                    rows: np.ndarray | None = None) -> np.ndarray | None:
    """The sample weights of ``mode`` for a task's fit on ``faces`` (``rows`` of them,
    when given); None for ``"none"``.

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    keys = balance_keys(mode, task, faces)
    if keys is None:
        return None
    return balanced_weights(keys if rows is None else keys[rows], _BALANCE_POWER[mode])
