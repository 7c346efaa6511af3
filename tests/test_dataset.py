"""Tests for models.labels and pipelines.dataset (file-name parsing and folder index)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from models.labels import AGE_GROUP_EDGES, AGE_GROUP_NAMES, age_group
from pipelines import dataset
from pipelines.dataset import (
    DatasetIndex,
    FaceLabels,
    UTKFaceNameError,
    default_data_dir,
    index_folder,
    is_image_name,
    parse_utkface_name,
)

MISSING_RACE = ("39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109142408075.jpg.chip.jpg")


def make_folder(folder: Path, names: list[str]) -> Path:
    """Create `folder` holding a tiny placeholder file per name (only names are read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8")
    return folder


# --- labels -------------------------------------------------------------------------


def test_age_groups_match_names() -> None:
    assert len(AGE_GROUP_EDGES) == len(AGE_GROUP_NAMES) == 9
    assert AGE_GROUP_NAMES[0] == "0-2" and AGE_GROUP_NAMES[-1] == "70+"


@pytest.mark.parametrize(
    ("age", "group"),
    [(0, "0-2"), (2, "0-2"), (2.9, "0-2"), (3, "3-9"), (9, "3-9"), (10, "10-19"),
     (19, "10-19"), (20, "20-29"), (69, "60-69"), (70, "70+"), (116, "70+"), (130, "70+")],
)
def test_age_group_boundaries(age: float, group: str) -> None:
    assert AGE_GROUP_NAMES[age_group(age)] == group


def test_age_group_is_vectorized() -> None:
    groups = age_group(np.array([[1, 15], [35, 80]]))
    assert groups.dtype == np.int64
    np.testing.assert_array_equal(groups, [[0, 2], [4, 8]])


@pytest.mark.parametrize("bad", [-1, [5, np.nan]])
def test_age_group_rejects_negative_or_nan(bad: object) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        age_group(bad)


# --- parse_utkface_name ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("25_0_1_20170116174525125.jpg.chip.jpg", FaceLabels(25, 0, 1)),
        ("100_1_4_20170112215240346.jpg.chip.jpg", FaceLabels(100, 1, 4)),
        # real malformed names whose labels are unambiguous
        ("24_0_1_20170116220224657 .jpg.chip.jpg", FaceLabels(24, 0, 1)),
        ("14_0_0_2017011022340900.jpg.chip.jpg", FaceLabels(14, 0, 0)),
        ("38_0_1_201701162330572788.jpg.chip.jpg", FaceLabels(38, 0, 1)),
        ("53_1_3_20170109150557335.jpgchip.jpg", FaceLabels(53, 1, 3)),
        ("53_1_3_20170109150557335jpg.chip.jpg", FaceLabels(53, 1, 3)),
        ("53_1_3_20170109150557335.jpg.chipjpg", FaceLabels(53, 1, 3)),
        # other extensions and cases
        ("30_1_2_20170104201443273.jpg", FaceLabels(30, 1, 2)),
        ("30_1_2_20170104201443273.jpeg", FaceLabels(30, 1, 2)),
        ("30_1_2_20170104201443273.png", FaceLabels(30, 1, 2)),
        ("30_1_2_20170104201443273.JPG.CHIP.JPG", FaceLabels(30, 1, 2)),
        ("30_1_2_20170104201443273.PNG", FaceLabels(30, 1, 2)),
        ("30_1_2.jpg", FaceLabels(30, 1, 2)),
        ("0_0_0_1.jpg", FaceLabels(0, 0, 0)),
        ("116_1_4_20170104201443273.jpg", FaceLabels(116, 1, 4)),
    ],
)
def test_parse_keeps_unambiguous_names(name: str, expected: FaceLabels) -> None:
    assert parse_utkface_name(name) == expected


@pytest.mark.parametrize("name", MISSING_RACE)
def test_parse_rejects_missing_race(name: str) -> None:
    with pytest.raises(UTKFaceNameError, match="missing race field") as caught:
        parse_utkface_name(name)
    assert caught.value.reason == "missing race field"
    assert caught.value.name == name
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("117_0_1_20170116174525125.jpg.chip.jpg", "age out of range: 117"),
        ("25_2_1_20170116174525125.jpg.chip.jpg", "gender out of range: 2"),
        ("25_0_5_20170116174525125.jpg.chip.jpg", "race out of range: 5"),
        ("25_0_123_20170116174525125.jpg", "race out of range: 123"),
    ],
)
def test_parse_rejects_out_of_range(name: str, reason: str) -> None:
    with pytest.raises(UTKFaceNameError, match=reason):
        parse_utkface_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("25__1_20170116174525125.jpg.chip.jpg", "gender field is not an integer"),
        ("x_0_1_20170116174525125.jpg", "age field is not an integer"),
        ("25_0_1_2017011617452512a.jpg", "timestamp field is not an integer"),
        ("25_0_1_123456789012345678901.jpg", "timestamp field has 21 digits"),
        ("25_0.jpg", "found 2 '_'-separated fields"),
        ("25_0_1_2017_5.jpg", "found 5 '_'-separated fields"),
        ("25_0_1_20170116174525125.txt", "not an image file name"),
        ("25_0_1_20170116174525125", "not an image file name"),
    ],
)
def test_parse_rejects_malformed(name: str, reason: str) -> None:
    with pytest.raises(UTKFaceNameError, match=reason):
        parse_utkface_name(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1_0_0_1.jpg.chip.jpg", True), ("a.JPEG", True), ("a.png", True),
        ("a.jpg ", True), ("a.jpgchip.jpg", True), ("a.jpg.chipjpg", True),
        ("README.md", False), ("notes.txt", False), (".hidden.jpg", False),
        ("a.jpg.txt", False), ("ajpg", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected


# --- index_folder ---------------------------------------------------------------------


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    folder = make_folder(
        tmp_path / "faces",
        [
            "25_0_1_20170116174525125.jpg.chip.jpg",
            "3_1_2_20170104201443273.jpg",
            "24_0_1_20170116220224657 .jpg.chip.jpg",
            "80_1_4_20170104201443273.PNG",
            *MISSING_RACE,
            "25_0_7_20170116174525125.jpg.chip.jpg",
            "README.md",
            "notes.txt",
            ".DS_Store",
            ".hidden.jpg",
        ],
    )
    make_folder(folder / "nested.jpg", ["1_0_0_20170116174525125.jpg"])
    return folder


def test_index_folder_parses_and_sorts(small_folder: Path) -> None:
    index = index_folder(small_folder)
    assert index.folder == small_folder.resolve()
    assert index.file_names == (
        "24_0_1_20170116220224657 .jpg.chip.jpg",
        "25_0_1_20170116174525125.jpg.chip.jpg",
        "3_1_2_20170104201443273.jpg",
        "80_1_4_20170104201443273.PNG",
    )
    assert len(index) == 4
    for array, expected in ((index.age, [24, 25, 3, 80]), (index.gender, [0, 0, 1, 1]),
                            (index.ethnicity, [1, 1, 2, 4])):
        assert array.dtype == np.int64
        np.testing.assert_array_equal(array, expected)


def test_index_folder_records_skipped(small_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=dataset.__name__):
        index = index_folder(small_folder)
    assert index.skipped == (
        ("25_0_7_20170116174525125.jpg.chip.jpg", "race out of range: 7 (expected 0..4)"),
        (MISSING_RACE[0], "missing race field"),
        (MISSING_RACE[1], "missing race field"),
    )
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "Skipped 3 of 7" in message and MISSING_RACE[0] in message


def test_index_folder_warning_lists_at_most_ten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [f"{age}_1_2017011617452{age:04d}.jpg" for age in range(12)]
    make_folder(tmp_path, ["1_0_0_1.jpg", *bad])
    with caplog.at_level(logging.WARNING, logger=dataset.__name__):
        index = index_folder(tmp_path)
    assert len(index.skipped) == 12
    assert "and 2 more" in caplog.text


def test_index_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        index_folder(missing)


def test_index_folder_not_a_directory(tmp_path: Path) -> None:
    file_path = tmp_path / "1_0_0_1.jpg"
    file_path.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="1_0_0_1.jpg"):
        index_folder(file_path)


@pytest.mark.parametrize("names", [[], ["README.md", "labels.txt", ".hidden.jpg"]])
def test_index_folder_without_images(tmp_path: Path, names: list[str]) -> None:
    folder = make_folder(tmp_path / "empty", names)
    with pytest.raises(ValueError, match="no image files .* in .*empty"):
        index_folder(folder)


def test_index_folder_without_parseable_images(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "bad", [*MISSING_RACE, "photo.jpg"])
    with pytest.raises(ValueError, match=r"none of the 3 image files in .*bad.*3 skipped"):
        index_folder(folder)


# --- DatasetIndex -----------------------------------------------------------------------


@pytest.fixture
def index(small_folder: Path) -> DatasetIndex:
    return index_folder(small_folder)


def test_index_paths_are_absolute(index: DatasetIndex, small_folder: Path) -> None:
    assert index.paths[0] == str(small_folder.resolve() / index.file_names[0])
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in index.paths)


def test_index_arrays_are_read_only(index: DatasetIndex) -> None:
    with pytest.raises(ValueError):
        index.age[0] = 1


def test_subset_by_names_and_indices(index: DatasetIndex) -> None:
    by_names = index.subset(["80_1_4_20170104201443273.PNG", "3_1_2_20170104201443273.jpg"])
    assert by_names.file_names == ("3_1_2_20170104201443273.jpg", "80_1_4_20170104201443273.PNG")
    np.testing.assert_array_equal(by_names.age, [3, 80])
    by_indices = index.subset(np.array([3, 2]))
    assert by_indices.file_names == by_names.file_names
    np.testing.assert_array_equal(by_indices.ethnicity, [2, 4])
    assert by_names.folder == index.folder
    assert len(index.subset([])) == 0


def test_subset_errors(index: DatasetIndex) -> None:
    with pytest.raises(KeyError, match="1 file names are not in the index"):
        index.subset(["unknown.jpg"])
    with pytest.raises(ValueError, match="more than once"):
        index.subset([0, 0])
    with pytest.raises(IndexError):
        index.subset([10])


def test_labels_per_task(index: DatasetIndex) -> None:
    np.testing.assert_array_equal(index.labels("age"), [24, 25, 3, 80])
    np.testing.assert_array_equal(index.labels("gender"), [0, 0, 1, 1])
    np.testing.assert_array_equal(index.labels("ethnicity"), [1, 1, 2, 4])
    np.testing.assert_array_equal(index.labels("age_group"), [3, 3, 1, 8])
    with pytest.raises(ValueError, match="unknown task 'race'"):
        index.labels("race")


def test_index_rejects_misaligned_labels() -> None:
    with pytest.raises(ValueError, match="age has shape"):
        DatasetIndex(Path("/x"), ("a", "b"), age=[1], gender=[0, 1], ethnicity=[0, 1])


# --- default data folder and the real data --------------------------------------------


def test_default_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UTKFACE_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()


def test_default_data_dir_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UTKFACE_DIR", raising=False)
    repo_root = Path(dataset.__file__).resolve().parent.parent
    assert default_data_dir() == (repo_root.parent / "shared" / "data" / "UTKFace").resolve()


def test_real_data_folder() -> None:
    folder = default_data_dir()
    if not folder.is_dir():
        pytest.skip(f"UTKFace data folder not available at {folder}")
    image_count = sum(1 for name in os.listdir(folder) if is_image_name(name))
    index = index_folder(folder)
    # holds for the shared sample and for a full download: its only malformed names are
    # a few without a race field (age_gender_datetime), and every other image is indexed
    assert 0 < len(index.skipped) <= 3
    assert all(reason == "missing race field" and len(name.split("_")) == 3
               for name, reason in index.skipped)
    assert len(index) == image_count - len(index.skipped)
    spaced = "24_0_1_20170116220224657 .jpg.chip.jpg"       # a space in the name is kept
    assert (spaced in index.file_names) == (folder / spaced).is_file()


def test_index_of_names_keeps_their_order_and_labels() -> None:
    names = ["30_1_2_20170116174525125.jpg.chip.jpg", "4_0_0_20170110225451638.jpg.chip.jpg"]
    index = dataset.index_of_names("/nowhere", names)
    assert index.file_names == tuple(names)           # not re-sorted
    assert index.age.tolist() == [30, 4] and index.gender.tolist() == [1, 0]
    assert index.ethnicity.tolist() == [2, 0]
    with pytest.raises(dataset.UTKFaceNameError):
        dataset.index_of_names("/nowhere", ["39_1_20170116174525125.jpg.chip.jpg"])
