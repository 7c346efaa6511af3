"""End to end: ``python -m pipelines.run`` on a small sample of real faces, then the
saved pipelines used as a user would (paths, arrays, a bad file, a fresh process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features.io import ImageLoadError
from models.labels import AGE_GROUP_NAMES, GENDER_NAMES, TASKS
from models.safety import ChecksumError, file_sha256, load_model
from pipelines.dataset import default_data_dir
from pipelines.feature_blocks import DEFAULT_FEATURES, FeatureSpec
from pipelines.run import main
from pipelines.splits import Split
from tests.conftest import link_random_faces

DATA = default_data_dir()
SAMPLE = 150
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder of links to 150 random faces (no image is copied), and room for results."""
    root = tmp_path_factory.mktemp("run")
    link_random_faces(root / "faces", DATA, SAMPLE, seed=0)
    return root


def run_cli(workdir: Path, out: str, *extra: str) -> int:
    return main(["--data", str(workdir / "faces"), "--split", str(workdir / "split.json"),
                 "--cache-dir", str(workdir / "cache"), "--out", str(workdir / out),
                 "--n-jobs", "1", "--quiet", *extra])


@pytest.fixture(scope="module")
def run(workdir: Path) -> Path:
    """The default pipeline, all tasks, on the sample."""
    assert run_cli(workdir, "default") == 0
    return workdir / "default"


@pytest.fixture(scope="module")
def test_paths(workdir: Path, run: Path) -> list[str]:
    split = Split.load(workdir / "split.json")
    return [str(workdir / "faces" / name) for name in split.test]


def test_every_task_is_written(run: Path, workdir: Path) -> None:
    split = Split.load(workdir / "split.json")
    for task in TASKS:
        metadata = json.loads((run / f"{task}_model.json").read_text())
        assert metadata["sha256"] == file_sha256(run / f"{task}_model.joblib")
        assert metadata["task"] == task
        assert metadata["split"]["sha256"] == split.sha256
        assert [f["spec"] for f in metadata["features"]] == [str(spec)
                                                           for spec in DEFAULT_FEATURES]
        assert metadata["versions"]["scikit-learn"]
        metrics = json.loads((run / f"{task}_metrics.json").read_text())
        assert metrics["overall"]["n"] == len(split.test)
        assert set(metrics["by_group"]) == {"ethnicity", "gender", "age_group"}
        plot = run / (f"{task}_error.png" if task == "age" else f"{task}_confusion.png")
        assert plot.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "gender_model.json").read_text())["label_names"] == \
        list(GENDER_NAMES)
    assert json.loads((run / "age_model.json").read_text())["label_names"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert [row["task"] for row in summary["rows"]] == list(TASKS)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]     # no temp files left


def test_predictions_reproduce_the_test_metrics(run: Path, workdir: Path,
                                                test_paths: list[str]) -> None:
    split = Split.load(workdir / "split.json")
    ages = np.array([int(name.split("_")[0]) for name in split.test])
    model = load_model(run / "age_model.joblib")
    predicted = model.predict(test_paths)
    assert predicted.dtype.kind == "f"
    metrics = json.loads((run / "age_metrics.json").read_text())
    assert np.mean(np.abs(predicted - ages)) == pytest.approx(metrics["overall"]["mae"])


def test_predict_from_paths_and_arrays(run: Path, test_paths: list[str]) -> None:
    model = load_model(run / "gender_model.joblib")
    assert [name for name, _ in model.steps] == ["features", "reduce", "model"]
    from_paths = model.predict(test_paths)
    assert set(from_paths) <= {0, 1}
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in test_paths]
    np.testing.assert_array_equal(model.predict(arrays), from_paths)
    np.testing.assert_array_equal(model.predict(np.stack(arrays)), from_paths)
    proba = model.predict_proba(test_paths)
    assert proba.shape == (len(test_paths), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    assert model.predict(test_paths[0]).shape == (1,)


def test_bad_file_raises_a_clear_error(run: Path, test_paths: list[str],
                                       tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    model = load_model(run / "ethnicity_model.joblib")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        model.predict([test_paths[0], str(broken), test_paths[1]])
    with pytest.raises(ImageLoadError, match="no such file"):
        model.predict([str(tmp_path / "missing.jpg")])


def test_round_trip_in_a_fresh_process(run: Path, test_paths: list[str]) -> None:
    code = (
        "import json, sys\n"
        "from models.safety import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "print(json.dumps([model.predict(sys.argv[2:]).tolist(),\n"
        "                  'tensorflow' in sys.modules]))\n")
    result = subprocess.run([sys.executable, "-c", code, str(run / "age_group_model.joblib"),
                             *test_paths], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    predicted, imported_tensorflow = json.loads(result.stdout)
    expected = load_model(run / "age_group_model.joblib").predict(test_paths)
    assert predicted == expected.tolist()
    assert set(predicted) <= set(range(len(AGE_GROUP_NAMES)))
    assert not imported_tensorflow


def test_tampered_model_is_refused(run: Path, tmp_path: Path) -> None:
    for name in ("gender_model.joblib", "gender_model.json"):
        (tmp_path / name).write_bytes((run / name).read_bytes())
    with open(tmp_path / "gender_model.joblib", "ab") as stream:
        stream.write(b"appended")
    with pytest.raises(ChecksumError, match="mismatch"):
        load_model(tmp_path / "gender_model.joblib")


def test_existing_results_need_overwrite(run: Path, workdir: Path, capsys) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert run_cli(workdir, "default", "--tasks", "gender") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_overwrite_and_other_models(workdir: Path, capsys) -> None:
    out = workdir / "xgb"
    out.mkdir()
    (out / "old.txt").write_text("earlier results")
    assert run_cli(workdir, "xgb", "--overwrite", "--model", "xgboost", "--tasks", "age_group",
                   "gender", "--param", "n_estimators=10", "--param", "max_depth=2") == 0
    table = capsys.readouterr().out
    assert "age_group" in table and "gender" in table and "xgboost" in table
    model = load_model(out / "age_group_model.joblib")
    assert model.predict_proba([str(next((workdir / "faces").iterdir()))]).shape[0] == 1
    assert json.loads((out / "gender_model.json").read_text())["params"] == {
        "n_estimators": 10, "max_depth": 2}

    assert run_cli(workdir, "linear", "--model", "linear-svm", "--tasks", "age",
                   "--features", "hog:64:gray:20", "--search", "--flip") == 0
    metadata = json.loads((workdir / "linear" / "age_model.json").read_text())
    assert len(metadata["candidates"]) == 3
    assert metadata["features"][0]["size"] == [64, 64]
    assert metadata["flip_augmentation"]
    assert metadata["n_train"] == 2 * len(Split.load(workdir / "split.json").train)


def test_help_explains_every_argument(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--features", "--model", "--tasks", "--split", "--out",
                   "--n-jobs", "--seed", "--overwrite", "--cache-dir", "--search", "--flip"):
        assert option in text


def test_bad_arguments(workdir: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--features", "sift:128"])
    assert "unknown extractor" in capsys.readouterr().err
    assert main(["--data", str(workdir / "nowhere"), "--out", str(workdir / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_validation_scores_of_a_saved_run(run: Path, workdir: Path) -> None:
    from benchmarks.validation_scores import validation_scores

    split = Split.load(workdir / "split.json")
    age = validation_scores(run, "age", cache_dir=workdir / "cache")
    recorded = json.loads((run / "age_model.json").read_text())["validation"]
    assert age["faces"] == len(split.val)
    # the same predictions up to float32 rounding, which BLAS may change in the last bits
    # with the shape of the matrices it multiplies
    assert age["mae"] == pytest.approx(recorded["mae"], rel=1e-6)
    gender = validation_scores(run, "gender", cache_dir=workdir / "cache")
    assert 0 <= gender["accuracy"] <= 1 and gender["log_loss"] > 0


def test_cross_validation_of_feature_blocks(run: Path, workdir: Path, capsys) -> None:
    from benchmarks.cross_validate import cross_validate, format_table, main as cv_main
    from pipelines.classical import TrainConfig

    split = Split.load(workdir / "split.json")
    blocks = [FeatureSpec.parse("hog:32:gray:10"), FeatureSpec.parse("pixels:16:gray:10")]
    config = TrainConfig(features=tuple(blocks), tasks=("gender", "age"))
    rows = cross_validate(workdir / "faces", [blocks, blocks, blocks[:1]], config,
                          folds=3, split_path=workdir / "split.json",
                          cache_dir=workdir / "cache", progress=False)
    assert [(row["task"], row["metric"]) for row in rows] == [
        ("gender", "accuracy"), ("age", "mae")] * 3
    for row in rows:  # every training and validation face scored once, no test face
        assert row["faces"] == len(split.train) + len(split.val) and len(row["folds"]) == 3
        assert row["mean"] == pytest.approx(np.mean(row["folds"]))
    assert rows[0]["folds"] == rows[2]["folds"]  # same blocks, same folds: paired
    assert 0.3 < rows[0]["mean"] <= 1 and 0 < rows[1]["mean"] < 40
    table = format_table(rows).splitlines()
    assert len(table) == 7 and "+0.0000" in table[2] and "0/3" in table[2]
    assert cv_main(["--features", "hog:32", "--folds", "1", "--data", str(workdir / "faces")]) == 2
    assert "at least 2 folds" in capsys.readouterr().err


class _RecordingRegressor:
    """Predicts the mean of the targets it was fitted on, and keeps what it saw."""

    def fit(self, X, y):
        self.X_, self.y_ = np.asarray(X), np.asarray(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.y_.mean())


@pytest.mark.parametrize("flip", [False, True])
def test_cross_validation_fold_fits_on_mirror_images_with_flip(flip: bool, monkeypatch) -> None:
    import benchmarks.cross_validate as cv

    model = _RecordingRegressor()
    monkeypatch.setattr(cv, "clone", lambda estimator: model)
    rng = np.random.default_rng(0)
    both = rng.normal(size=(10, 6))   # rows [face (3 columns) | mirror image (3 columns)]
    y = rng.uniform(1, 80, size=10)
    train, held_out = np.arange(7), np.arange(7, 10)
    mae = cv._fold_score(object(), both, y, train, held_out, regressor=True, flip=flip)
    expected_X = np.vstack([both[train, :3], both[train, 3:]]) if flip else both[train, :3]
    np.testing.assert_array_equal(model.X_, expected_X)
    np.testing.assert_array_equal(model.y_, np.tile(y[train], 2 if flip else 1))
    assert mae == pytest.approx(np.mean(np.abs(y[train].mean() - y[held_out])))
