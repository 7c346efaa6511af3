"""Tests for pipelines.metrics and pipelines.reports on hand-made predictions."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.labels import AGE_GROUP_NAMES, ETHNICITY_NAMES, GENDER_NAMES
from pipelines.metrics import (class_names, classification_metrics, evaluate_task, group_gap,
                               headline, regression_metrics)
from pipelines.reports import (OutputExistsError, atomic_path, atomic_write_json,
                               format_summary_table, predictions_path, prepare_output_dir,
                               read_predictions_csv, result_row, write_predictions_csv,
                               write_task_report)

# --- metrics ---------------------------------------------------------------------------


def test_classification_metrics_by_hand() -> None:
    # class a: 3 true, 2 found; class b: 2 true, 1 found; class c: never true, predicted once
    y_true = [0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 2]
    result = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert result["n"] == 5
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 0]]
    a, b, c = (result["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1.0),
                                                           pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert a["f1"] == pytest.approx(0.8)
    assert (c["precision"], c["recall"], c["support"]) == (0.0, 0.0, 0)
    # macro averages run over the classes present in y_true
    assert result["recall_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result["precision_macro"] == pytest.approx((1 + 1 / 2) / 2)
    assert result["f1_macro"] == pytest.approx((0.8 + 0.5) / 2)
    json.dumps(result)


def test_classification_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="one length"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics([], [], ["a", "b"])


def test_within_5_counts_an_error_of_exactly_5_years() -> None:
    result = regression_metrics([10, 10, 10, 10], [15, 5, 15.01, 4.99])
    assert result["within_5"] == pytest.approx(0.5)


def test_group_gap_by_hand() -> None:
    #           White     White   Black    Black    Asian
    ethnicity = [0,        0,      1,       1,       2]
    groups = {"gender": [0, 1, 0, 1, 0], "ethnicity": ethnicity, "age": [20, 30, 40, 50, 60]}
    accuracy = evaluate_task("gender", [0, 1, 0, 1, 0], [0, 1, 1, 1, 1], **groups)
    # accuracy: White 1.0, Black 0.5, Asian 0.0 -> gap 1.0, worst Asian
    assert group_gap("gender", accuracy, "ethnicity") == (pytest.approx(1.0), "Asian")
    ages = evaluate_task("age", [20, 30, 40, 50, 60], [22, 30, 46, 54, 61], **groups)
    # MAE: White (2 + 0) / 2 = 1, Black (6 + 4) / 2 = 5, Asian 1 -> gap 4, worst Black
    assert group_gap("age", ages, "ethnicity") == (pytest.approx(4.0), "Black")
    # MAE by gender: male (2 + 6 + 1) / 3 = 3, female (0 + 4) / 2 = 2 -> worst male
    assert group_gap("age", ages, "gender") == (pytest.approx(1.0), "male")
    single = evaluate_task("age", [20, 30], [20, 31], gender=[0, 0], ethnicity=[0, 0],
                           age=[20, 30])
    assert group_gap("age", single, "ethnicity") == (None, None)


def test_fairness_figures_by_hand() -> None:
    # White: every face right; Black: one man called a woman, one woman called a man
    truth = [0, 0, 1, 1, 0, 0, 1, 1]
    predicted = [0, 0, 1, 1, 1, 0, 0, 1]
    ethnicity = [0, 0, 0, 0, 1, 1, 1, 1]
    metrics = evaluate_task("gender", truth, predicted, gender=truth, ethnicity=ethnicity,
                            age=[25] * 8)
    fairness = metrics["fairness"]
    assert fairness["ethnicity"] == {"metric": "accuracy", "overall": 0.75, "gap": 0.5,
                                     "worst": "Black", "worst_value": 0.5}
    # true-positive rates 1 and 0.5, false-positive rates 0 and 0.5: both differ by 0.5;
    # both groups predict "female" for half of their faces
    assert fairness["equalized_odds_difference_ethnicity"] == pytest.approx(0.5)
    assert fairness["demographic_parity_difference_ethnicity"] == pytest.approx(0.0)
    # recall: male 3/4, female 3/4 -> the first of the tied classes
    assert fairness["worst_class"] == {"class": "male", "recall": 0.75}
    assert fairness["age_group"]["gap"] is None and fairness["age_group"]["worst"] is None
    assert metrics["by_group"]["ethnicity"]["Black"]["accuracy"] == 0.5


def test_regression_metrics_by_hand() -> None:
    result = regression_metrics([10, 20, 30, 40], [12, 20, 24, 50])
    # errors 2, 0, -6, 10
    assert result["mae"] == pytest.approx(4.5)
    assert result["rmse"] == pytest.approx(math.sqrt((4 + 0 + 36 + 100) / 4))
    assert result["within_5"] == pytest.approx(0.5)
    assert result["bias"] == pytest.approx(1.5)
    assert result["n"] == 4


def test_class_names() -> None:
    assert class_names("gender") == GENDER_NAMES
    assert class_names("ethnicity") == ETHNICITY_NAMES
    assert class_names("age_group") == AGE_GROUP_NAMES
    assert class_names("age") is None
    with pytest.raises(ValueError, match="unknown task"):
        class_names("height")


DEMOGRAPHICS = {"gender": np.array([0, 0, 1, 1, 1, 0]),
                "ethnicity": np.array([0, 0, 0, 1, 1, 2]),
                "age": np.array([1, 25, 25, 35, 71, 25])}


def test_evaluate_task_groups_classification() -> None:
    y_true = DEMOGRAPHICS["gender"]
    y_pred = np.array([0, 1, 1, 1, 0, 0])
    result = evaluate_task("gender", y_true, y_pred, **DEMOGRAPHICS)
    assert result["task"] == "gender"
    assert result["overall"]["accuracy"] == pytest.approx(4 / 6)
    by = result["by_group"]
    assert set(by) == {"ethnicity", "gender", "age_group"}
    assert set(by["ethnicity"]) == {"White", "Black", "Asian"}      # no Indian, no Others
    assert by["ethnicity"]["White"]["accuracy"] == pytest.approx(2 / 3)
    assert by["ethnicity"]["Black"]["accuracy"] == pytest.approx(1 / 2)
    assert by["ethnicity"]["Asian"]["n"] == 1
    assert by["gender"]["male"]["accuracy"] == pytest.approx(2 / 3)
    assert set(by["age_group"]) == {"0-2", "20-29", "30-39", "70+"}
    assert by["age_group"]["20-29"]["accuracy"] == pytest.approx(2 / 3)
    assert by["age_group"]["70+"]["accuracy"] == 0.0
    json.dumps(result)


def test_evaluate_task_age_and_age_group() -> None:
    ages = DEMOGRAPHICS["age"]
    predicted = ages + np.array([1.0, -2.0, 6.0, 0.0, -10.0, 3.0])
    result = evaluate_task("age", ages, predicted, **DEMOGRAPHICS)
    assert result["overall"]["mae"] == pytest.approx(22 / 6)
    assert result["by_group"]["age_group"]["70+"]["mae"] == pytest.approx(10.0)
    assert result["by_group"]["gender"]["female"]["mae"] == pytest.approx(16 / 3)
    assert headline("age", result) == {key: result["overall"][key]
                                       for key in ("mae", "rmse", "within_5")}

    groups = evaluate_task("age_group", np.array([0, 3, 3, 4, 8, 3]),
                           np.array([0, 3, 4, 4, 7, 3]), **DEMOGRAPHICS)
    assert groups["overall"]["class_names"] == list(AGE_GROUP_NAMES)
    assert len(groups["overall"]["confusion_matrix"]) == 9
    assert groups["overall"]["accuracy"] == pytest.approx(4 / 6)
    assert set(headline("age_group", groups)) == {"accuracy", "f1_macro"}


def test_evaluate_task_checks_group_shapes() -> None:
    with pytest.raises(ValueError, match="ethnicity has shape"):
        evaluate_task("gender", [0, 1], [0, 1], gender=[0, 1], ethnicity=[0], age=[3, 4])


# --- reports ---------------------------------------------------------------------------


def test_atomic_write_json_round_trip(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "sub" / "a.json", {"x": [1, 2], "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"x": [1, 2], "name": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_crash_during_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as temp:
            temp.write_bytes(b"half of a mod")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_bytes(b"new but incomplete")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_non_serialisable_json_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"mae": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_prepare_output_dir_refuses_results(tmp_path: Path) -> None:
    out = prepare_output_dir(tmp_path / "run")
    assert out.is_dir()
    assert prepare_output_dir(out) == out                 # empty: fine
    (out / "gender_metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, overwrite=True) == out
    with pytest.raises(NotADirectoryError):
        prepare_output_dir(out / "gender_metrics.json")


def test_write_task_report(tmp_path: Path) -> None:
    y_true = DEMOGRAPHICS["ethnicity"]
    y_pred = np.array([0, 1, 0, 1, 1, 2])
    metrics = evaluate_task("ethnicity", y_true, y_pred, **DEMOGRAPHICS)
    written = write_task_report(tmp_path, "ethnicity", metrics, y_true, y_pred)
    assert [p.name for p in written] == ["ethnicity_metrics.json", "ethnicity_confusion.png"]
    assert json.loads(written[0].read_text()) == metrics
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ages = DEMOGRAPHICS["age"]
    metrics = evaluate_task("age", ages, ages + 2.5, **DEMOGRAPHICS)
    written = write_task_report(tmp_path, "age", metrics, ages, ages + 2.5)
    assert [p.name for p in written] == ["age_metrics.json", "age_error.png"]
    assert written[1].stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_task_report_predictions_round_trip(tmp_path: Path) -> None:
    ages = DEMOGRAPHICS["age"]
    names = [f"{age}_0_0_2017.jpg.chip.jpg" for age in range(len(ages))]
    metrics = evaluate_task("age", ages, ages + 2.5, **DEMOGRAPHICS)
    written = write_task_report(tmp_path, "age", metrics, ages, ages + 2.5, names)
    assert written[-1] == predictions_path(tmp_path, "age")
    files, true, predicted = read_predictions_csv(written[-1])
    assert files == names
    np.testing.assert_array_equal(true, ages)
    np.testing.assert_array_equal(predicted, ages + 2.5)
    with pytest.raises(ValueError, match="3 file names for 2 labels"):
        write_predictions_csv(tmp_path / "x.csv", names[:3], [1, 2], [1, 2])
    (tmp_path / "bad.csv").write_text("file,true,predicted\na.jpg,1,x\n")
    with pytest.raises(ValueError, match="bad.csv, line 2"):
        read_predictions_csv(tmp_path / "bad.csv")


def test_format_summary_table() -> None:
    table = format_summary_table([
        {"task": "gender", "model": "svm", "accuracy": 0.91234},
        {"task": "age", "model": "svm", "mae": 6.789, "fit_s": 12},
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["task", "model", "accuracy", "mae", "fit_s"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["gender", "svm", "0.912", "-", "-"]
    assert lines[3].split() == ["age", "svm", "-", "6.789", "12"]
    # numeric columns are right-aligned under their header
    assert lines[2].index("0.912") + 5 == lines[0].index("accuracy") + len("accuracy")


def test_result_rows_of_a_classification_and_a_regression_share_columns() -> None:
    gender = result_row("gender", "svm", 100, {"accuracy": 0.9},
                        {"accuracy": 0.91, "f1_macro": 0.905})
    age = result_row("age", "svm", 100, {"mae": 6.1}, {"mae": 6.2, "rmse": 8.5, "within_5": 0.55})
    assert list(gender) == list(age)
    assert (gender["val_accuracy"], gender["val_mae"], gender["test_mae"]) == (0.9, None, None)
    assert (age["val_mae"], age["test_within_5"], age["test_accuracy"]) == (6.1, 0.55, None)
    table = format_summary_table([gender, age]).splitlines()
    assert table[2].split() == ["gender", "svm", "100", "0.900", "-", "0.910", "0.905", "-", "-",
                                "-"]
