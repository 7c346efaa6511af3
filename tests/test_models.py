"""Tests for models (SVM, XGBoost, factory, reducer), checksummed saving and loading,
and the pieces of pipelines.classical that need no images."""
from __future__ import annotations

import copy
import io
import subprocess
import sys

import joblib
import numpy as np
import pytest

from models.factory import (MODELS, GlobalScaler, Mirrored, MirrorAveraged, PerView,
                            make_estimator, make_reducer)
from models.safety import ChecksumError, file_sha256, load_model, metadata_path
from models.svm import BlasSVC, BlasSVR, make_svm, with_blas_kernels
from models.xgboost_models import EncodedClassifier, make_xgboost
from pipelines.classical import TrainConfig, task_kind, with_probabilities
from pipelines.feature_blocks import FeatureSpec
from pipelines.reports import save_artifact


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 12))
    classes = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.8).astype(int)   # 0, 1, 2
    age = 30 + 10 * X[:, 2] + rng.normal(size=240)
    return X, classes, age


@pytest.mark.parametrize("model", MODELS)
def test_every_model_fits_both_kinds(model: str, data) -> None:
    X, classes, age = data
    classifier = make_estimator(model, "classifier", n_estimators=20) if model == "xgboost" \
        else make_estimator(model, "classifier")
    assert np.mean(classifier.fit(X, classes).predict(X) == classes) > 0.8
    regressor = make_estimator(model, "regressor", n_estimators=20) if model == "xgboost" \
        else make_estimator(model, "regressor")
    assert np.mean(np.abs(regressor.fit(X, age).predict(X) - age)) < 6


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        make_estimator("forest", "classifier")
    with pytest.raises(ValueError, match="unknown kernel"):
        make_svm("classifier", "poly")
    with pytest.raises(ValueError, match="kind"):
        make_svm("ranker")
    with pytest.raises(ValueError, match="kind"):
        make_xgboost("ranker")


def test_svm_parameters() -> None:
    assert make_svm("classifier").C == 10.0
    assert make_svm("regressor", C=3.0).C == 3.0
    assert type(make_svm("regressor", "linear").regressor).__name__ == "LinearSVR"


@pytest.mark.parametrize("n_classes", [2, 5, None])
def test_blas_kernels_give_libsvm_values(n_classes) -> None:
    """The BLAS path reproduces libsvm's decision values and predictions, also inside a
    calibrated, mirror-averaged model, and survives joblib."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    rng = np.random.default_rng(0)
    X, X_new = rng.normal(size=(200, 12)), rng.normal(size=(40, 24))
    if n_classes is None:
        svm = make_svm("regressor").fit(X, rng.normal(size=200))
        model, method = MirrorAveraged(svm), "predict"
    else:
        y = rng.integers(0, n_classes, 200)
        svm = make_svm("classifier").fit(X, y)
        model = MirrorAveraged(CalibratedClassifierCV(FrozenEstimator(svm)).fit(X, y))
        method = "predict_proba"
    fast = with_blas_kernels(copy.deepcopy(model))
    swapped = fast.model if n_classes is None else \
        fast.model.calibrated_classifiers_[0].estimator.estimator
    assert isinstance(swapped, BlasSVR if n_classes is None else BlasSVC)
    np.testing.assert_allclose(getattr(fast, method)(X_new), getattr(model, method)(X_new),
                               rtol=1e-9, atol=1e-12)
    if n_classes is not None:
        np.testing.assert_allclose(swapped.decision_function(X_new[:, :12]),
                                   svm.decision_function(X_new[:, :12]), rtol=1e-9, atol=1e-12)
    buffer = io.BytesIO()
    joblib.dump(fast, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).predict(X_new), fast.predict(X_new))


def test_mlp_defaults_and_overrides() -> None:
    classifier = make_estimator("mlp", "classifier", alpha=0.1, random_state=3)
    assert (classifier.hidden_layer_sizes, classifier.alpha, classifier.random_state) == \
        ((256,), 0.1, 3)
    assert classifier.early_stopping
    assert type(make_estimator("mlp", "regressor")).__name__ == "MLPRegressor"


def test_encoded_classifier_handles_missing_classes(data) -> None:
    X, classes, _ = data
    labels = np.where(classes == 0, 3, classes + 5)           # labels 3, 6, 7: not 0..K-1
    model = make_xgboost("classifier", n_estimators=10).fit(X, labels)
    assert isinstance(model, EncodedClassifier)
    assert model.classes_.tolist() == [3, 6, 7]
    assert set(model.predict(X)) <= {3, 6, 7}
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.predict(X))


def test_reducer_blocks_are_balanced(data) -> None:
    X, _, _ = data
    wide = np.hstack([X[:, :8] * 100, X[:, 8:]])              # very different scales
    reducer = make_reducer([("a", 8, 3), ("b", 4, None)], n_samples=len(X)).fit(wide)
    Z = reducer.transform(wide)
    assert Z.shape == (len(X), 3 + 4)
    # each block's columns have mean variance 1
    assert np.mean(np.var(Z[:, :3], axis=0)) == pytest.approx(1, rel=1e-6)
    assert np.mean(np.var(Z[:, 3:], axis=0)) == pytest.approx(1, rel=1e-6)
    # PCA keeps the decreasing variance of its components (no whitening)
    assert np.all(np.diff(np.var(Z[:, :3], axis=0)) < 0)


def test_reducer_caps_components() -> None:
    reducer = make_reducer([("a", 5, 300)], n_samples=4)
    assert reducer.transformers[0][1].named_steps["pca"].n_components == 4


def test_global_scaler_constant_input() -> None:
    scaler = GlobalScaler().fit(np.ones((5, 2)))
    assert scaler.scale_ == 1.0


def test_feature_spec_parse() -> None:
    spec = FeatureSpec.parse("hog+lbp:128:gray:300")
    assert spec == FeatureSpec("hog+lbp", (128, 128), "gray", 300)
    assert str(spec) == "hog+lbp:128:gray:300"
    assert FeatureSpec.parse("pixels:16x24:rgb") == FeatureSpec("pixels", (16, 24), "rgb", None)
    assert FeatureSpec.parse("lbp") == FeatureSpec("lbp")
    assert str(FeatureSpec("pixels", (16, 24), "rgb")) == "pixels:16x24:rgb:none"
    for bad in ("sift", "hog:big", "hog:128:blue", "hog:128:gray:many", "hog:128:gray:0",
                "hog:1:2:3:4", ""):
        with pytest.raises(ValueError):
            FeatureSpec.parse(bad)


def test_feature_spec_branch_is_stateless() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, 40, 30, 3), dtype=np.uint8)
    features = FeatureSpec("pixels", (8, 8), "gray").branch().transform(images)
    assert features.shape == (2, 64)


def test_mirrored_extractor() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    extractor = FeatureSpec("pixels", (8, 8)).extractor_for()
    flipped = Mirrored(extractor).transform(images).reshape(3, 8, 8)
    np.testing.assert_allclose(flipped, images[:, :, ::-1, 0] / 255, rtol=1e-6)
    assert isinstance(FeatureSpec("hog").branch(mirror=True)[-1], Mirrored)


def test_mirror_averaged_regressor(data) -> None:
    X, _, age = data
    regressor = make_svm("regressor").fit(X, age)
    shifted = X + 0.1
    averaged = MirrorAveraged(regressor).predict(np.hstack([X, shifted]))
    np.testing.assert_allclose(averaged, (regressor.predict(X) + regressor.predict(shifted)) / 2)
    assert not hasattr(MirrorAveraged(regressor), "predict_proba")
    with pytest.raises(ValueError, match="two equal halves"):
        MirrorAveraged(regressor).predict(X[:, :11])


def test_mirror_averaged_classifier(data) -> None:
    X, classes, _ = data
    svm = make_svm("classifier").fit(X, classes)
    same = np.hstack([X, X])
    # both views equal: the average is the model's own judgement
    np.testing.assert_array_equal(MirrorAveraged(svm).predict(same), svm.predict(X))
    calibrated = with_probabilities(svm, X, classes)
    wrapper = MirrorAveraged(calibrated)
    np.testing.assert_array_equal(wrapper.classes_, [0, 1, 2])
    proba = wrapper.predict_proba(np.hstack([X, X[::-1]]))
    np.testing.assert_allclose(proba, (calibrated.predict_proba(X)
                                       + calibrated.predict_proba(X[::-1])) / 2)
    np.testing.assert_array_equal(wrapper.predict(np.hstack([X, X[::-1]])), proba.argmax(axis=1))
    # the wrapped model is used as fitted
    assert wrapper.fit(same, classes * 0).model is calibrated
    np.testing.assert_array_equal(wrapper.predict(same), calibrated.predict(X))


def test_per_view_reducer(data) -> None:
    X, _, _ = data
    reducer = make_reducer([("a", 12, 3)], n_samples=len(X)).fit(X)
    both = PerView(reducer).fit().transform(np.hstack([X, X[::-1]]))
    np.testing.assert_allclose(both, np.hstack([reducer.transform(X),
                                                reducer.transform(X[::-1])]))


def test_train_config_validation() -> None:
    assert TrainConfig().tasks == ("gender", "ethnicity", "age", "age_group")
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="forest")
    with pytest.raises(ValueError, match="tasks"):
        TrainConfig(tasks=("height",))
    with pytest.raises(ValueError, match="tasks"):
        TrainConfig(tasks=())
    with pytest.raises(ValueError, match="feature blocks"):
        TrainConfig(features=(FeatureSpec("hog", n_components=9), FeatureSpec("hog")))
    assert task_kind("age") == "regressor" and task_kind("age_group") == "classifier"


def test_with_probabilities_calibrates_svm(data) -> None:
    X, classes, _ = data
    svm = make_svm("classifier").fit(X[:160], classes[:160])
    assert not hasattr(svm, "predict_proba")
    calibrated = with_probabilities(svm, X[160:], classes[160:])
    proba = calibrated.predict_proba(X[160:])
    assert proba.shape == (80, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    # a class missing from the validation faces: no calibration, the model as it is
    assert with_probabilities(svm, X[160:][classes[160:] != 2],
                              classes[160:][classes[160:] != 2]) is svm
    # a class with 3 validation faces: calibrated in 3 folds; with 1: not calibrated
    rare = np.flatnonzero(classes[160:] == 2)
    for kept, folds in ((3, 3), (1, None)):
        keep = np.setdiff1d(np.arange(80), rare[kept:])
        model = with_probabilities(svm, X[160:][keep], classes[160:][keep])
        assert (model is svm) == (folds is None)
        if folds:
            assert model.cv == folds and model.predict_proba(X[:5]).shape == (5, 3)


# --- checksummed saving and loading ----------------------------------------------------


@pytest.fixture
def saved(tmp_path, data):
    X, classes, _ = data
    model = make_svm("classifier", "linear").fit(X, classes)
    path = tmp_path / "m.joblib"
    record = save_artifact(path, lambda temp: joblib.dump(model, temp), {"task": "demo"})
    return path, record, model


def test_save_and_load_round_trip(saved, data) -> None:
    path, record, model = saved
    assert record["sha256"] == file_sha256(path)
    assert record["file"] == "m.joblib" and record["task"] == "demo"
    assert metadata_path(path).name == "m.json"
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(data[0]), model.predict(data[0]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.joblib", "m.json"]


def test_checksum_mismatch_is_refused(saved) -> None:
    path, record, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch .*m.joblib.*Refusing"):
        load_model(path)


def test_expected_checksum_is_enforced(saved) -> None:
    path, record, _ = saved
    with pytest.raises(ChecksumError, match="mismatch"):
        load_model(path, expected_sha256="0" * 64)
    assert load_model(path, expected_sha256=record["sha256"].upper()) is not None


def test_missing_or_broken_metadata_is_refused(saved) -> None:
    path, _, _ = saved
    metadata_path(path).write_text("{not json")
    with pytest.raises(ChecksumError, match="unreadable"):
        load_model(path)
    metadata_path(path).write_text('{"task": "demo"}')
    with pytest.raises(ChecksumError, match="no sha256"):
        load_model(path)
    metadata_path(path).unlink()
    with pytest.raises(ChecksumError, match="no metadata file"):
        load_model(path)


def test_crash_while_saving_leaves_nothing(tmp_path) -> None:
    def crash(temp):
        temp.write_bytes(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_artifact(tmp_path / "m.joblib", crash, {})
    assert list(tmp_path.iterdir()) == []


def test_classical_modules_do_not_import_tensorflow() -> None:
    code = ("import sys, models.safety, models.factory, pipelines.classical, pipelines.run; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
