"""benchmarks.detection: the faces found in photos scored against their crops."""
from __future__ import annotations

import pytest

from benchmarks.detection import markdown, photo_against_crop
from models.labels import ETHNICITY_NAMES, GENDER_NAMES
from pipelines.significance import bootstrap_interval

FILES = ["20_0_0_1.jpg.chip.jpg", "30_1_2_2.jpg.chip.jpg", "40_0_2_3.jpg.chip.jpg",
         "50_1_4_4.jpg.chip.jpg"]


def records(genders, ethnicities, ages) -> list[dict]:
    return [{"gender": GENDER_NAMES[g], "ethnicity": ETHNICITY_NAMES[e], "age": a}
            for g, e, a in zip(genders, ethnicities, ages)]


def test_photos_are_scored_against_the_same_faces_crops() -> None:
    in_photos = records([0, 1, 1, 1], [0, 2, 0, 4], [22.0, 30.0, 35.0, 50.0])
    on_crops = records([0, 1, 0, 1], [0, 2, 2, 4], [21.0, 31.0, 40.0, 50.0])
    row = photo_against_crop(in_photos, on_crops, FILES)
    assert row["gender_accuracy_photos"] == 0.75 and row["gender_accuracy_crops"] == 1.0
    assert row["gender_accuracy_difference"] == -0.25
    assert row["gender_accuracy_p"] == 1.0       # one face told apart: no evidence
    assert row["ethnicity_accuracy_difference"] == -0.25
    assert row["age_mae_photos"] == pytest.approx(1.75) and row["age_mae_crops"] == 0.5
    assert row["age_mae_difference"] == pytest.approx(1.25)
    # per face |error in photo| - |error on crop|: 2 - 1, 0 - 1, 5 - 0, 0 - 0
    assert row["age_mae_ci95"] == list(bootstrap_interval([1.0, -1.0, 5.0, 0.0]))
    table = markdown([{"detector": "dlib-hog", "recall": 1.0, "matched": 4, "faces": 4,
                       "wrong_box_photos": 0.0, "photos_per_s": 1.0,
                       "search_s_per_photo": 1.0, **row}], "cmd",
                     {"machine": "m", "model": "run", "photos": 2, "faces": 4, "seed": 0,
                      "face_sizes": [60, 260], "max_roll": 30.0, "n_jobs": 1})
    low, high = row["age_mae_ci95"]
    assert "0.750 / 1.000 (-0.250, p 1.00)" in table
    assert f"1.750 / 0.500 (+1.250, {low:+.2f} to {high:+.2f})" in table


def test_one_face_gives_figures_without_a_test() -> None:
    row = photo_against_crop(records([0], [0], [20.0]), records([1], [0], [25.0]), FILES[:1])
    assert row["gender_accuracy_difference"] == 1.0 and "gender_accuracy_p" not in row
    assert "age_mae_ci95" not in row
