"""pipelines.significance on small cases worked by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from pipelines.significance import bootstrap_interval, compare, face_scores, mcnemar_p


def test_face_scores() -> None:
    np.testing.assert_array_equal(face_scores("gender", [0, 1, 1], [0, 0, 1]), [1, 0, 1])
    np.testing.assert_allclose(face_scores("age", [20, 30], [25.5, 28]), [5.5, 2.0])
    with pytest.raises(ValueError, match="labels but"):
        face_scores("gender", [0, 1], [0])


def test_mcnemar_counts_only_the_faces_where_the_models_disagree() -> None:
    # A right alone on 8 faces, B right alone on 2; 90 faces where they agree
    a = np.r_[np.ones(8), np.zeros(2), np.ones(45), np.zeros(45)].astype(bool)
    b = np.r_[np.zeros(8), np.ones(2), np.ones(45), np.zeros(45)].astype(bool)
    # exact two-sided: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * 56 / 1024
    assert mcnemar_p(a, b) == pytest.approx(2 * binom.cdf(2, 10, 0.5))
    assert mcnemar_p(a, b) == pytest.approx(112 / 1024)
    assert mcnemar_p(a, a) == 1.0


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_faces() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.random(100) < 0.9, rng.random(10_000) < 0.9
    low, high = bootstrap_interval(small)
    assert low < small.mean() < high
    # the normal approximation: +-1.96 sqrt(p (1 - p) / n)
    half = 1.96 * np.sqrt(0.9 * 0.1 / 10_000)
    low, high = bootstrap_interval(large)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_interval(large) == bootstrap_interval(large)       # seeded
    assert bootstrap_interval(np.ones(5)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval([1.0])


def test_compare_accuracy_and_mae() -> None:
    y = np.zeros(200, int)
    a, b = y.copy(), y.copy()
    b[:30] = 1                                   # B wrong on 30 faces where A is right
    result = compare("gender", y, a, b)
    assert result["difference"] == pytest.approx(0.15)
    assert result["significant"] and result["p_mcnemar"] < 1e-6
    ages = np.arange(200, dtype=float)
    result = compare("age", ages, ages + 1.0, ages + 3.0)        # A 2 years better, always
    assert result["difference"] == pytest.approx(-2.0)
    assert result["difference_ci95"] == [-2.0, -2.0] and result["significant"]
    noise = np.random.default_rng(1).normal(0, 1, 200)
    result = compare("age", ages, ages + noise, ages - noise)    # the same errors
    assert result["difference"] == pytest.approx(0.0)
    assert not result["significant"]
