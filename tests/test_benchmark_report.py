"""The benchmark report's intervals and paired tests on a small hand-made case."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.report import COLUMNS, add_significance
from pipelines.significance import bootstrap_interval, mcnemar_p


def _row(name: str, accuracy: float) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(pipeline=name, task="gender", status="done", accuracy=accuracy)
    return row


def test_rows_are_paired_on_the_faces_both_scored() -> None:
    rng = np.random.default_rng(0)
    files = [f"{i}_0_0_2017.jpg.chip.jpg" for i in range(60)]
    true = rng.integers(0, 2, 60)
    best = np.where(rng.random(60) < 0.9, true, 1 - true)
    other = np.where(rng.random(60) < 0.6, true, 1 - true)
    # the other pipeline could not judge its first 5 faces, and lists them in another order
    order = rng.permutation(np.arange(5, 60))
    predictions = {
        ("best", "gender"): {"files": files, "true": true.tolist(), "predicted": best.tolist()},
        ("other", "gender"): {"files": [files[i] for i in order], "true": true[order].tolist(),
                              "predicted": other[order].tolist()},
        }
    rows = [_row("other", float(np.mean(other[5:] == true[5:]))),
            _row("best", float(np.mean(best == true))), _row("not run", 0.99)]
    rows[2]["status"] = "not run"
    add_significance(rows, predictions)
    other_row, best_row, not_run = rows
    assert (best_row["ci95_low"], best_row["ci95_high"]) == bootstrap_interval(
        (best == true).astype(float))
    assert best_row["vs_best_difference"] is None and not_run["ci95_low"] is None
    paired = np.arange(5, 60)
    assert other_row["n_paired"] == 55
    assert other_row["vs_best_difference"] == pytest.approx(
        np.mean(other[paired] == true[paired]) - np.mean(best[paired] == true[paired]))
    assert other_row["vs_best_p"] == mcnemar_p(other[paired] == true[paired],
                                               best[paired] == true[paired])
    assert other_row["vs_best_significant"] == (other_row["vs_best_p"] < 0.05)
    assert other_row["vs_best_ci95_low"] is None


def test_age_rows_get_a_paired_interval_of_the_mae_difference() -> None:
    files = [f"{i}_0_0_2017.jpg.chip.jpg" for i in range(40)]
    true = np.arange(40.0)
    predictions = {("a", "age"): {"files": files, "true": true.tolist(),
                                  "predicted": (true + 1).tolist()},
                   ("b", "age"): {"files": files, "true": true.tolist(),
                                  "predicted": (true + 3).tolist()}}
    rows = [dict.fromkeys(COLUMNS) | {"pipeline": name, "task": "age", "status": "done",
                                      "mae": mae} for name, mae in (("b", 3.0), ("a", 1.0))]
    add_significance(rows, predictions)
    assert rows[0]["vs_best_difference"] == pytest.approx(2.0)
    assert rows[0]["vs_best_ci95_low"] == rows[0]["vs_best_ci95_high"] == pytest.approx(2.0)
    assert rows[0]["vs_best_significant"] and rows[0]["vs_best_p"] is None
    assert (rows[1]["ci95_low"], rows[1]["ci95_high"]) == (1.0, 1.0)
