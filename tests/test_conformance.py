"""scikit-learn's estimator checks on the stateless image extractors.

The extractors take batches of images (3-D or 4-D arrays). The checks below that feed
tabular 2-D data to ``transform`` fail on purpose (an extractor refuses what is not a
batch of images), as does the one that expects ``transform`` to hold its input to the
shape ``fit`` saw (an extractor takes images of any size); the rest pass: cloning,
parameters, tags, ``n_features_in_``, and refusing NaN, infinite, empty, 1-D, complex
and sparse input.
"""
from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from features.embeddings import DlibFaceDescriptor
from features.gabor import GaborFeatures
from features.hog import HOGFeatures
from features.lbp import LBPFeatures
from features.pixels import PixelFeatures

_TABULAR = "feeds 2-D tabular data to transform, which takes a batch of images"
IMAGE_INPUT_CHECKS = {name: _TABULAR for name in (
    "check_dict_unchanged", "check_dtype_object", "check_estimators_dtypes",
    "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit_idempotent",
    "check_fit_score_takes_y", "check_methods_sample_order_invariance",
    "check_methods_subset_invariance", "check_pipeline_consistency",
    "check_transformer_data_not_an_array", "check_transformer_general",
    "check_transformer_preserve_dtypes", "check_transformers_unfitted_stateless")}
IMAGE_INPUT_CHECKS["check_n_features_in_after_fitting"] = (
    "expects transform to refuse another width than fit saw; an extractor takes images of "
    "any size")


@parametrize_with_checks(
    [PixelFeatures(), HOGFeatures(), LBPFeatures(), GaborFeatures(), DlibFaceDescriptor()],
    expected_failed_checks=lambda estimator: IMAGE_INPUT_CHECKS)
def test_extractor_conforms_to_scikit_learn(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("bad, message", [
    ([[[1.0, float("nan")]]], "NaN"),
    ([[[1.0, float("inf")]]], "infinity"),
    ([1.0, 2.0], "Expected 2D array"),
    ([[[1 + 2j]]], "Complex data not supported"),
])
def test_extractors_refuse_bad_input_in_fit_and_transform(bad, message) -> None:
    for extractor in (PixelFeatures(), HOGFeatures()):
        for method in (extractor.fit, extractor.transform):
            with pytest.raises(ValueError, match=message):
                method(bad)
