"""Label definitions for UTKFace: the single source of truth for names and age groups.

UTKFace file names encode ``age_gender_race_datetime``; the integer codes map to the
names below (gender 0 is male, race 0 is White, and so on).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

GENDER_NAMES: tuple[str, ...] = ("male", "female")
ETHNICITY_NAMES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
AGE_MIN, AGE_MAX = 0, 116

#: Lower bound (inclusive) of each age group; the last group is open-ended.
AGE_GROUP_EDGES: tuple[int, ...] = (0, 3, 10, 20, 30, 40, 50, 60, 70)
AGE_GROUP_NAMES: tuple[str, ...] = (
    "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+",
)

#: Prediction tasks a :class:`pipelines.dataset.DatasetIndex` can return labels for.
TASKS: tuple[str, ...] = ("gender", "ethnicity", "age", "age_group")


def age_group(ages: ArrayLike) -> np.ndarray:
    """Map ages in years to age-group codes (indices into ``AGE_GROUP_NAMES``).

    Parameters
    ----------
    ages : array_like
        Age or ages in years, ``>= 0``. Non-integer ages (e.g. regression outputs)
        fall in the group of their floor: 2.9 is in "0-2". Ages above ``AGE_MAX``
        fall in the last, open-ended group.

    Returns
    -------
    numpy.ndarray
        int64 group codes, same shape as `ages` (0-d for a scalar).

    Raises
    ------
    ValueError
        If any age is negative or NaN.
    """
    values = np.asarray(ages, dtype=np.float64)
    if np.isnan(values).any() or (values < 0).any():
        raise ValueError("ages must be >= 0 and not NaN")
    groups = np.searchsorted(AGE_GROUP_EDGES, values, side="right") - 1
    return np.asarray(groups, dtype=np.int64)
