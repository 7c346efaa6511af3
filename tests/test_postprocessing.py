"""models.postprocessing: fairlearn's equalized odds on precomputed scores."""
from __future__ import annotations

import joblib
import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference

from models.postprocessing import (PrecomputedScore, equalized_odds_labels,
                                   fit_equalized_odds, score_uniforms)

N_FACES = 20_000


@pytest.fixture(scope="module")
def biased_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of two groups: group 1's are noisier, so a common threshold gives it other
    error rates."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, N_FACES)
    labels = rng.integers(0, 2, N_FACES)
    noise = np.where(groups == 1, 1.5, 0.6)
    score = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, noise))))
    return score, labels, groups


def test_precomputed_score_passes_column_0_through() -> None:
    X = np.array([[0.2, 9.0], [0.7, -1.0]])
    model = PrecomputedScore().fit(X, [0, 1])
    np.testing.assert_array_equal(model.predict(X), [0.2, 0.7])
    np.testing.assert_array_equal(model.classes_, [0, 1])


def test_post_processing_equalizes_the_error_rates(biased_scores) -> None:
    score, labels, groups = biased_scores
    half = N_FACES // 2
    before = (score[half:] > 0.5).astype(int)
    optimizer = fit_equalized_odds(score[:half], labels[:half], groups[:half])
    after = equalized_odds_labels(optimizer, score[half:], groups[half:])
    gap_before = equalized_odds_difference(labels[half:], before,
                                           sensitive_features=groups[half:])
    gap_after = equalized_odds_difference(labels[half:], after, sensitive_features=groups[half:])
    assert gap_before > 0.15
    assert gap_after < 0.03
    # the price: accuracy falls in the group that was better served
    assert np.mean(after == labels[half:]) < np.mean(before == labels[half:])


def test_labels_follow_fairlearns_probabilities_and_ignore_the_batch(biased_scores,
                                                                    tmp_path) -> None:
    score, labels, groups = biased_scores
    optimizer = fit_equalized_odds(score, labels, groups)
    drawn = equalized_odds_labels(optimizer, score, groups)
    positive = optimizer._pmf_predict(score[:, None], sensitive_features=groups)[:, 1]
    for group in (0, 1):
        rows = groups == group
        assert abs(drawn[rows].mean() - positive[rows].mean()) < 0.01
    # a face's label does not depend on the faces predicted with it
    np.testing.assert_array_equal(equalized_odds_labels(optimizer, score[100:200],
                                                        groups[100:200]), drawn[100:200])
    joblib.dump(optimizer, tmp_path / "optimizer.joblib")
    reloaded = joblib.load(tmp_path / "optimizer.joblib")
    np.testing.assert_array_equal(equalized_odds_labels(reloaded, score, groups), drawn)


def test_score_uniforms_are_uniform_and_deterministic() -> None:
    score = np.random.default_rng(1).beta(2, 5, 50_000)
    uniforms = score_uniforms(score)
    assert ((uniforms >= 0) & (uniforms < 1)).all()
    counts, _ = np.histogram(uniforms, bins=10, range=(0, 1))
    np.testing.assert_allclose(counts / len(score), 0.1, atol=0.005)
    np.testing.assert_array_equal(score_uniforms(score[::-1]), uniforms[::-1])


def test_bad_labels_and_unknown_groups_are_refused(biased_scores) -> None:
    score, labels, groups = biased_scores
    with pytest.raises(ValueError, match="binary labels 0 and 1"):
        fit_equalized_odds(score, labels + 1, groups)
    with pytest.raises(ValueError, match="group 2: all 3 of its faces have label 1"):
        fit_equalized_odds(np.r_[score, 0.1, 0.2, 0.3], np.r_[labels, 1, 1, 1],
                           np.r_[groups, 2, 2, 2])
    optimizer = fit_equalized_odds(score, labels, groups)
    with pytest.raises(ValueError, match=r"groups \[7\] were not among"):
        equalized_odds_labels(optimizer, score[:3], [0, 7, 1])
