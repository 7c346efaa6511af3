"""Sample weights that balance classes or demographic groups (pipelines.fairness)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks.fairness import main as fairness_main
from models.labels import ETHNICITY_NAMES
from pipelines.classical import TrainConfig, run_classical
from pipelines.dataset import DatasetIndex, default_data_dir, index_folder, parse_utkface_name
from pipelines.fairness import balance_keys, balance_weights, balanced_weights
from pipelines.feature_blocks import FeatureSpec
from pipelines.reports import predictions_path, read_predictions_csv
from tests.conftest import link_faces

DATA = default_data_dir()

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


def test_square_root_class_weights_grow_with_the_root_of_a_class() -> None:
    weights = balance_weights("class-sqrt", "ethnicity", FACES)
    assert weights.mean() == pytest.approx(1.0)
    # 5 White faces and 3 "Others": each face weighs 1 / sqrt(its class's count), so the
    # classes total sqrt(5) : sqrt(3) (unweighted 5 : 3, class-balanced 1 : 1)
    white, others = weights[FACES.ethnicity == 0], weights[FACES.ethnicity == 4]
    np.testing.assert_allclose(white, white[0])
    assert white[0] / others[0] == pytest.approx(np.sqrt(3 / 5))
    assert white.sum() / others.sum() == pytest.approx(np.sqrt(5 / 3))
    rows = np.array([0, 1, 4])  # 2 White, 1 "Others": weighed among those rows only
    expected = np.array([1 / np.sqrt(2), 1 / np.sqrt(2), 1.0])
    np.testing.assert_allclose(balance_weights("class-sqrt", "ethnicity", FACES, rows),
                               expected / expected.mean())


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


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")
def test_trade_off_table_of_a_run(tmp_path) -> None:
    paths = index_folder(DATA).paths
    faces = link_faces(tmp_path / "faces", paths[:: len(paths) // 150][:150])
    config = TrainConfig(features=(FeatureSpec("pixels", (16, 16), "gray"),),
                         model="xgboost", params={"n_estimators": 10},
                         tasks=("gender", "ethnicity"), n_jobs=1)
    run_classical(faces, config, split_path=tmp_path / "split.json", out_dir=tmp_path / "run",
                  progress=False)
    assert fairness_main([f"tiny={tmp_path / 'run'}", "--data", str(faces), "--split",
                          str(tmp_path / "split.json"), "--cache-dir", str(tmp_path / "cache"),
                          "--out", str(tmp_path / "fair"), "--quiet"]) == 0
    with open(tmp_path / "fair.csv", newline="") as stream:
        rows = {row["part"]: row for row in csv.DictReader(stream)}
    assert set(rows) == {"validation", "test"}
    gender = json.loads((tmp_path / "run" / "gender_metrics.json").read_text())
    test = rows["test"]
    assert float(test["gender_accuracy"]) == pytest.approx(gender["overall"]["accuracy"])
    worst = gender["fairness"]["ethnicity"]
    assert test["gender_worst_ethnicity"] == worst["worst"]
    assert float(test["gender_gap"]) == pytest.approx(gender["overall"]["accuracy"]
                                                      - worst["worst_value"])
    # among faces of 20 and over, by hand from the run's per-face predictions
    files, true, predicted = read_predictions_csv(predictions_path(tmp_path / "run", "gender"))
    parsed = [parse_utkface_name(name) for name in files]
    adult = np.array([face.age >= 20 for face in parsed])
    groups = np.array([face.ethnicity for face in parsed])
    right = true == predicted
    assert float(test["gender_adult_accuracy"]) == pytest.approx(right[adult].mean())
    by_group = {ETHNICITY_NAMES[g]: right[adult & (groups == g)].mean()
                for g in np.unique(groups[adult])}
    assert test["gender_adult_worst_ethnicity"] == min(by_group, key=by_group.get)
    assert float(test["gender_adult_worst_accuracy"]) == pytest.approx(min(by_group.values()))
    ethnicity = json.loads((tmp_path / "run" / "ethnicity_metrics.json").read_text())
    assert float(test["others_recall"]) == pytest.approx(
        ethnicity["overall"]["per_class"]["Others"]["recall"])
    # validation: the saved model on the validation faces, as the run summary has it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    val_accuracy = next(row["val_accuracy"] for row in summary["rows"] if row["task"] == "gender")
    assert float(rows["validation"]["gender_accuracy"]) == pytest.approx(val_accuracy)
    assert "| `tiny` | test |" in (tmp_path / "fair.md").read_text()
    assert (tmp_path / "fair.png").read_bytes()[:4] == b"\x89PNG"
