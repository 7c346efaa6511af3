"""Training learns from the right labels: a small run on real faces beats chance by a wide
margin and falls to chance when the labels are shuffled, and faces dropped on the way
(unreadable files) leave every other face with its own label."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.classical import TrainConfig, run_classical, train_tasks
from pipelines.dataset import DatasetIndex, default_data_dir, index_folder, parse_utkface_name
from pipelines.feature_blocks import FeatureSpec
from pipelines.reports import predictions_path, read_predictions_csv
from tests.conftest import link_faces

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")
SIZES = {"train": 400, "val": 100, "test": 300}
CONFIG = TrainConfig(features=(FeatureSpec("hog", (64, 64), "gray", 40),), model="svm",
                     tasks=("gender",), n_jobs=1, seed=0)


@pytest.fixture(scope="module")
def parts() -> dict[str, DatasetIndex]:
    """800 real faces drawn with a seed, cut into train, validation and test."""
    index = index_folder(DATA)
    chosen = np.random.default_rng(0).choice(len(index), sum(SIZES.values()), replace=False)
    cuts = np.cumsum(list(SIZES.values()))[:-1]
    return {part: index.subset(rows) for part, rows in zip(SIZES, np.split(chosen, cuts))}


def _shuffled(faces: DatasetIndex, seed: int) -> DatasetIndex:
    order = np.random.default_rng(seed).permutation(len(faces))
    return dataclasses.replace(faces, gender=faces.gender[order])


def test_real_faces_beat_chance_and_shuffled_labels_do_not(parts) -> None:
    majority = max(np.mean(parts["test"].gender), 1 - np.mean(parts["test"].gender))
    (result,) = train_tasks(parts, CONFIG, progress=False)
    assert result.test_metrics["overall"]["accuracy"] > majority + 0.2
    shuffled = {part: _shuffled(faces, seed) if part != "test" else faces
                for seed, (part, faces) in enumerate(parts.items())}
    (chance,) = train_tasks(shuffled, CONFIG, progress=False)
    assert abs(chance.test_metrics["overall"]["accuracy"] - 0.5) < 0.1


def test_dropped_faces_keep_every_label_aligned(parts, tmp_path) -> None:
    faces = link_faces(tmp_path / "faces", [path for part in parts.values()
                                            for path in part.paths[:60]])
    # three more training and test faces, as new files (not links to the data) with
    # valid UTKFace names that do not hold images
    broken = [faces / name for name in (parts["train"].file_names[60:63]
                                        + parts["test"].file_names[60:63])]
    for path in broken:
        assert not path.exists()
        path.write_bytes(b"not a jpeg")
    config = dataclasses.replace(CONFIG, tasks=("gender", "ethnicity", "age"))
    run_classical(faces, config, split_path=tmp_path / "split.json", out_dir=tmp_path / "run",
                  progress=False)
    for task in config.tasks:
        files, true, _ = read_predictions_csv(predictions_path(tmp_path / "run", task))
        assert not {path.name for path in broken} & set(files)
        expected = [getattr(parse_utkface_name(name), task) for name in files]
        np.testing.assert_array_equal(true, expected)


@pytest.mark.parametrize("model, params", [("svm", {}), ("linear-svm", {}),
                                           ("xgboost", {"n_estimators": 20}), ("mlp", {})])
def test_every_model_fits_with_balanced_weights(parts, model, params, tmp_path_factory) -> None:
    cache = tmp_path_factory.getbasetemp() / "balance-cache"
    config = dataclasses.replace(CONFIG, model=model, params=params, tasks=("gender", "age"),
                                 balance="group")
    results = train_tasks(parts, config, cache_dir=cache, progress=False)
    gender, age = (result.test_metrics["overall"] for result in results)
    assert gender["accuracy"] > 0.6 and age["mae"] < 20
