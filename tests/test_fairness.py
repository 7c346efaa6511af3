"""Sample weights that balance classes or demographic groups (pipelines.fairness)."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.dataset import DatasetIndex
from pipelines.fairness import balance_keys, balanced_weights

FACES = DatasetIndex("/nowhere", tuple(f"{i}.jpg" for i in range(8)),
                     age=np.array([1, 25, 25, 25, 30, 70, 71, 25]),
                     gender=np.array([0, 0, 0, 1, 1, 1, 1, 0]),
                     ethnicity=np.array([0, 0, 0, 0, 4, 4, 4, 0]))


def test_class_weights_give_every_class_the_same_total() -> None:
    weights = balanced_weights(balance_keys("class", "gender", FACES))
    assert weights.sum() == pytest.approx(len(FACES))
    # 4 men and 4 women: every face weighs 1
    np.testing.assert_allclose(weights, 1.0)
    weights = balanced_weights(balance_keys("class", "ethnicity", FACES))
    # 5 White faces and 3 "Others": each class totals 4
    assert weights[FACES.ethnicity == 0].sum() == pytest.approx(4)
    assert weights[FACES.ethnicity == 4].sum() == pytest.approx(4)
    # age balances its age groups: 0-2, 20-29 (4 faces), 30-39, 70+ (2 faces)
    weights = balanced_weights(balance_keys("class", "age", FACES))
    np.testing.assert_allclose(weights, [2, 0.5, 0.5, 0.5, 2, 1, 1, 0.5])


def test_group_weights_balance_ethnicity_gender_and_age_group() -> None:
    keys = balance_keys("group", "gender", FACES)
    # groups: White man 0-2; White man 20-29 (x3); White woman 20-29; Others woman 30-39;
    # Others woman 70+ (x2)
    assert len(np.unique(keys)) == 5
    weights = balanced_weights(keys)
    assert weights.sum() == pytest.approx(len(FACES))
    for key in np.unique(keys):
        assert weights[keys == key].sum() == pytest.approx(len(FACES) / 5)


def test_no_balance_and_unknown_modes() -> None:
    assert balanced_weights(balance_keys("none", "age", FACES)) is None
    with pytest.raises(ValueError, match="balance must be one of"):
        balance_keys("ethnic", "age", FACES)
