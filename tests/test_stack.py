"""models.stack: combiners over member outputs, on synthetic members with known noise."""
from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression

from models.stack import StackedFaceModel

N_FACES = 1200


class NoisyMember:
    """A multi-task member that knows each face's labels up to its own noise.

    A "face" is an array whose first value is its number; the member's outputs for
    every face are drawn once, from its seed.
    """

    def __init__(self, gender: np.ndarray, age: np.ndarray, seed: int, flip: float = 0.2,
                 age_noise: float = 6.0, ethnicity: np.ndarray | None = None):
        rng = np.random.default_rng(seed)
        wrong = rng.random(len(gender)) < flip
        # like a real classifier, less sure when it is wrong
        confidence = np.where(wrong, rng.uniform(0.5, 0.8, len(gender)),
                              rng.uniform(0.6, 1.0, len(gender)))
        said = np.where(wrong, 1 - gender, gender)
        self.proba = np.column_stack([np.where(said == 0, confidence, 1 - confidence),
                                      np.where(said == 1, confidence, 1 - confidence)])
        self.age = age + rng.normal(0, age_noise, len(age))
        self.tasks = ("gender", "age")
        self.calls = 0
        if ethnicity is not None:  # five classes, the wrong ones said at random
            said = np.where(rng.random(len(ethnicity)) < flip,
                            rng.integers(0, 5, len(ethnicity)), ethnicity)
            self.ethnicity = np.full((len(ethnicity), 5), 0.1)
            self.ethnicity[np.arange(len(said)), said] = 0.6
            self.tasks += ("ethnicity",)

    def task_outputs(self, X) -> dict[str, np.ndarray]:
        self.calls += 1
        rows = np.array([int(np.asarray(face).flat[0]) for face in X])
        outputs = {"gender": self.proba[rows], "age": self.age[rows]}
        if "ethnicity" in self.tasks:
            outputs["ethnicity"] = self.ethnicity[rows]
        return outputs


@pytest.fixture(scope="module")
def labels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"gender": rng.integers(0, 2, N_FACES), "age": rng.uniform(1, 80, N_FACES)}


def faces(rows) -> list[np.ndarray]:
    return [np.full((2, 2), row, dtype=np.int64) for row in rows]


@pytest.fixture(scope="module")
def stack(labels) -> StackedFaceModel:
    members = {"a": NoisyMember(labels["gender"], labels["age"], seed=1),
               "b": NoisyMember(labels["gender"], labels["age"], seed=2)}
    half = np.arange(N_FACES // 2)
    return StackedFaceModel(members, batch_size=100).fit(
        faces(half), {task: values[half] for task, values in labels.items()})


def test_the_combiner_beats_each_member_on_faces_it_did_not_see(stack, labels) -> None:
    unseen = np.arange(N_FACES // 2, N_FACES)
    outputs = stack.member_outputs(faces(unseen))
    predicted = stack.predict(faces(unseen))
    gender, age = labels["gender"][unseen], labels["age"][unseen]
    members = {name: (np.mean(np.argmax(out["gender"], 1) == gender),
                      np.mean(np.abs(out["age"] - age))) for name, out in outputs.items()}
    accuracy = np.mean(predicted["gender"] == gender)
    mae = np.mean(np.abs(predicted["age"] - age))
    # two members with independent 20 % errors: where they disagree the more confident
    # one is right more often, so the combination gains points
    assert accuracy > max(acc for acc, _ in members.values()) + 0.03
    # two independent errors of 6 years average to about 6 / sqrt(2)
    assert mae < 0.8 * min(err for _, err in members.values())
    assert set(stack.cv_scores_["age"]["combiners"]) == {"linear", "median-linear", "boosted"}
    assert stack.cv_scores_["gender"]["combiners"]["logistic"] > 0.8
    assert stack.inputs_ == {"gender": ["a", "b"], "age": ["a", "b"]}


def test_probabilities_are_a_distribution_and_predict_is_their_argmax(stack) -> None:
    proba = stack.predict_proba(faces(range(50)), task="gender")
    assert proba.shape == (50, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(stack.predict(faces(range(50)), task="gender"),
                                  np.argmax(proba, axis=1))
    assert (stack.predict(faces(range(50)), task="age") >= 0).all()
    with pytest.raises(ValueError, match="regression"):
        stack.predict_proba(faces(range(3)), task="age")
    with pytest.raises(ValueError, match="not 'ethnicity'"):
        stack.predict(faces(range(3)), task="ethnicity")


def test_members_are_called_once_per_batch(labels) -> None:
    member = NoisyMember(labels["gender"], labels["age"], seed=3)
    StackedFaceModel({"m": member}, batch_size=64).member_outputs(faces(range(200)))
    assert member.calls == 4


def test_joblib_round_trip_predicts_the_same(stack, tmp_path) -> None:
    joblib.dump(stack, tmp_path / "stack.joblib")
    loaded = joblib.load(tmp_path / "stack.joblib")
    some = faces(range(100, 160))
    for task in ("gender", "age"):
        np.testing.assert_array_equal(loaded.predict(some, task=task),
                                      stack.predict(some, task=task))


def test_equalized_odds_post_processing_saves_with_the_stack(labels, tmp_path) -> None:
    ethnicity = np.random.default_rng(5).integers(0, 5, N_FACES)
    members = {name: NoisyMember(labels["gender"], labels["age"], seed=seed, ethnicity=ethnicity)
               for name, seed in (("a", 1), ("b", 2))}
    half = np.arange(N_FACES // 2)
    y = {"gender": labels["gender"][half], "ethnicity": ethnicity[half]}
    model = StackedFaceModel(members, postprocess="equalized-odds").fit(faces(half), y)
    assert set(model.postprocessor_.interpolated_thresholder_.interpolation_dict) == set(range(5))
    figures = model.cv_scores_["gender"]["equalized_odds"]
    for when in ("before", "after"):
        assert 0.6 < figures[when]["worst_ethnicity_accuracy"] <= figures[when]["accuracy"] < 1
    unseen = faces(range(N_FACES // 2, N_FACES))
    proba = model.predict_proba(unseen, task="gender")
    assert set(np.unique(proba)) == {0.0, 1.0}  # the post-processed labels
    np.testing.assert_array_equal(proba.sum(axis=1), 1.0)
    assert np.mean(model.predict(unseen, task="gender") == labels["gender"][N_FACES // 2:]) > 0.8
    joblib.dump(model, tmp_path / "stack.joblib")
    loaded = joblib.load(tmp_path / "stack.joblib")
    for task in ("gender", "ethnicity"):
        np.testing.assert_array_equal(loaded.predict(unseen, task=task),
                                      model.predict(unseen, task=task))
    with pytest.raises(ValueError, match="needs the gender and ethnicity labels"):
        StackedFaceModel(members, postprocess="equalized-odds").fit(
            faces(half), {"gender": y["gender"]})
    with pytest.raises(ValueError, match="postprocess must be one of"):
        StackedFaceModel(members, postprocess="parity").fit(faces(half), y)


def test_sample_weights_steer_the_combiners(stack, labels) -> None:
    members = {name: NoisyMember(labels["gender"], labels["age"], seed=seed)
               for name, seed in (("a", 1), ("b", 2))}
    half = np.arange(N_FACES // 2)
    y = {task: values[half] for task, values in labels.items()}
    outputs = stack.member_outputs(faces(half))
    ones = StackedFaceModel(members).fit_outputs(outputs, y, {"gender": np.ones(len(half))})
    np.testing.assert_allclose(ones.combiners_["gender"].best_estimator_.coef_,
                               stack.combiners_["gender"].best_estimator_.coef_)
    assert ones.cv_scores_["gender"]["weighted"] and not stack.cv_scores_["gender"]["weighted"]
    # weigh up the faces that member a gets right and b wrong: the combiner leans on a
    said = {name: np.argmax(out["gender"], axis=1) for name, out in outputs.items()}
    a_only = (said["a"] == y["gender"]) & (said["b"] != y["gender"])
    leaning = StackedFaceModel(members).fit_outputs(
        outputs, y, {"gender": np.where(a_only, 10.0, 1.0)})

    def lean(model: StackedFaceModel) -> float:  # weight of a's log-odds over b's
        coef = model.combiners_["gender"].best_estimator_.coef_[0]
        return (coef[1] - coef[0]) / (coef[3] - coef[2])

    assert lean(leaning) > 1.5 * lean(stack)
    with pytest.raises(ValueError, match="10 age sample weights for 600 labels"):
        StackedFaceModel(members).fit_outputs(outputs, y, {"age": np.ones(10)})


def test_a_member_that_cannot_judge_a_face_is_replaced_by_the_others_mean(stack) -> None:
    outputs = stack.member_outputs(faces(range(10)))
    holed = {name: {task: values.copy() for task, values in out.items()}
             for name, out in outputs.items()}
    holed["a"]["gender"][3] = np.nan
    holed["a"]["age"][3] = np.nan
    filled = {name: {task: values.copy() for task, values in out.items()}
              for name, out in outputs.items()}
    filled["a"]["gender"][3] = outputs["b"]["gender"][3]
    filled["a"]["age"][3] = outputs["b"]["age"][3]
    for task in ("gender", "age"):
        np.testing.assert_array_equal(stack.combine(holed)[task], stack.combine(filled)[task])
    holed["b"]["gender"][3] = np.nan
    with pytest.raises(ValueError, match=r"positions \[3\] for gender"):
        stack.combine(holed)


def test_labels_that_do_not_fit_are_refused(labels) -> None:
    member = NoisyMember(labels["gender"], labels["age"], seed=4)
    model = StackedFaceModel({"m": member})
    with pytest.raises(ValueError, match="no member predicts 'ethnicity'"):
        model.fit(faces(range(40)), {"ethnicity": np.zeros(40, int)})
    with pytest.raises(ValueError, match="30 gender labels, but member 'm' has 40"):
        model.fit_outputs(model.member_outputs(faces(range(40))),
                          {"gender": labels["gender"][:30]})
    with pytest.raises(ValueError, match="a class has a single face"):
        model.fit(faces(range(40)), {"gender": np.r_[np.zeros(39, int), 1]})


FEATURE_CALLS: list[int] = []


def _features(X) -> np.ndarray:
    """Face number and a NaN row for face 5 (a face the member cannot describe)."""
    FEATURE_CALLS.append(len(X))
    rows = np.array([[float(np.asarray(face).flat[0])] for face in X])
    rows[rows[:, 0] == 5] = np.nan
    return rows


def test_pipeline_members_share_their_feature_step_and_skip_nan_rows() -> None:
    x = np.arange(40, dtype=float)[:, None]
    gender = (x[:, 0] % 2).astype(int)

    def pipeline(model, y):
        return Pipeline([("features", FunctionTransformer(_features)),
                         ("model", model.fit(x, y))])

    members = {"classes": {"gender": pipeline(LogisticRegression(), gender)},
               "ages": {"age": pipeline(LinearRegression(), 2 * x[:, 0])}}
    FEATURE_CALLS.clear()
    outputs = StackedFaceModel(members, batch_size=8).member_outputs(faces(range(16)))
    assert FEATURE_CALLS == [8, 8]            # one extraction per batch for both members
    assert np.isnan(outputs["classes"]["gender"][5]).all()
    assert np.isnan(outputs["ages"]["age"][5])
    np.testing.assert_allclose(outputs["ages"]["age"][[0, 1, 15]], [0.0, 2.0, 30.0], atol=1e-9)
    assert outputs["classes"]["gender"].shape == (16, 2)
    assert not np.isnan(np.delete(outputs["classes"]["gender"], 5, axis=0)).any()


def _squares(X) -> np.ndarray:
    return _features(X) ** 2


def test_blocks_shared_by_feature_unions_are_extracted_once_per_batch() -> None:
    x = np.arange(40, dtype=float)[:, None]
    gender = (x[:, 0] % 2).astype(int)
    shared = FunctionTransformer(_features)
    both = FeatureUnion([("number", shared), ("square", FunctionTransformer(_squares))])
    members = {
        "both": {"gender": Pipeline([("features", both), ("model", LogisticRegression().fit(
            np.hstack([x, x ** 2]), gender))])},
        "one": {"age": Pipeline([("features", FeatureUnion([("number", shared)])),
                                 ("model", LinearRegression().fit(x, 2 * x[:, 0]))])}}
    FEATURE_CALLS.clear()
    some = faces(range(16))
    outputs = StackedFaceModel(members, batch_size=8).member_outputs(some)
    # per batch: the shared block once, and once more inside the squares
    assert FEATURE_CALLS == [8, 8, 8, 8]
    kept = np.delete(np.arange(16), 5)
    some_kept = [some[row] for row in kept]
    np.testing.assert_allclose(outputs["both"]["gender"][kept],
                               members["both"]["gender"].predict_proba(some_kept))
    np.testing.assert_allclose(outputs["one"]["age"][kept],
                               members["one"]["age"].predict(some_kept))
    assert np.isnan(outputs["both"]["gender"][5]).all() and np.isnan(outputs["one"]["age"][5])


def test_image_loaders_shared_by_feature_blocks_read_each_face_once(tmp_path,
                                                                      monkeypatch) -> None:
    from PIL import Image

    import features.loader
    from features.hog import HOGFeatures
    from features.loader import ImageLoader
    from features.pixels import PixelFeatures

    rng = np.random.default_rng(0)
    paths = []
    for row in range(6):
        paths.append(tmp_path / f"face{row}.png")
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    reads, load_image = [], features.loader.load_image
    monkeypatch.setattr(features.loader, "load_image",
                        lambda path, *args: reads.append(path) or load_image(path, *args))

    def block(size, extractor) -> Pipeline:
        return Pipeline([("load", ImageLoader(size, "gray")), ("extract", extractor)])

    def member(blocks, task) -> dict[str, Pipeline]:
        union = FeatureUnion([(f"b{i}", part) for i, part in enumerate(blocks)])
        X = union.transform(paths)
        y = np.arange(6) % 2 if task == "gender" else np.arange(6.0)
        model = LogisticRegression() if task == "gender" else LinearRegression()
        return {task: Pipeline([("features", union), ("model", model.fit(X, y))])}

    members = {  # two blocks on 32x32 faces (one in both members), one on 16x16 faces
        "a": member([block((32, 32), HOGFeatures()), block((16, 16), PixelFeatures())], "gender"),
        "b": member([block((32, 32), HOGFeatures(pixels_per_cell=(4, 4))),
                     block((32, 32), HOGFeatures())], "age")}
    reads.clear()
    outputs = StackedFaceModel(members, batch_size=3).member_outputs(paths)
    assert sorted(map(str, reads)) == sorted(map(str, paths * 2))  # once per loader size
    # the same outputs as each pipeline's own (whose float32 features give float32 ages)
    np.testing.assert_allclose(outputs["a"]["gender"], members["a"]["gender"].predict_proba(paths))
    np.testing.assert_allclose(outputs["b"]["age"], members["b"]["age"].predict(paths), atol=1e-5)


def test_a_block_that_starts_with_passthrough_is_transformed_whole() -> None:
    x = np.arange(12, dtype=float)[:, None]
    block = Pipeline([("skip", "passthrough"), ("features", FunctionTransformer(_features))])
    member = {"age": Pipeline([("features", FeatureUnion([("block", block)])),
                               ("model", LinearRegression().fit(x, 3 * x[:, 0]))])}
    outputs = StackedFaceModel({"one": member}, batch_size=4).member_outputs(faces(range(12)))
    kept = np.delete(np.arange(12), 5)
    np.testing.assert_allclose(outputs["one"]["age"][kept], 3.0 * kept, atol=1e-9)
    assert np.isnan(outputs["one"]["age"][5])
