"""Tests for pipelines.splits: the stratified train/val/test split and its manifest."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from models.labels import age_group
from pipelines import splits
from pipelines.dataset import DatasetIndex, default_data_dir, index_folder
from pipelines.splits import FORMAT_VERSION, STRATIFY_ON, Split, load_or_create_split, make_split


def synthetic_index(size: int, seed: int = 123) -> DatasetIndex:
    """An index of `size` made-up faces with imbalanced ethnicity and age."""
    rng = np.random.default_rng(seed)
    return DatasetIndex(
        folder=Path("/synthetic"),
        file_names=tuple(f"face_{number:05d}.jpg" for number in range(size)),
        age=np.minimum(rng.gamma(3.0, 11.0, size).astype(int), 116),
        gender=rng.integers(0, 2, size),
        ethnicity=rng.choice(5, size, p=[0.45, 0.2, 0.15, 0.15, 0.05]),
    )


@pytest.fixture(scope="module")
def index() -> DatasetIndex:
    return synthetic_index(2000)


@pytest.fixture(scope="module")
def split(index: DatasetIndex) -> Split:
    return make_split(index, seed=0)


def group_shares(index: DatasetIndex, keys: np.ndarray) -> dict[int, float]:
    return {int(key): float(np.mean(keys == key)) for key in np.unique(keys)}


def assert_stratified(index: DatasetIndex, split: Split, tolerance: float) -> None:
    """Per gender x ethnicity and per age-group shares of val/test are close to overall."""
    parts = split.apply(index)
    for key_of in (lambda sub: sub.gender * 5 + sub.ethnicity, lambda sub: age_group(sub.age)):
        overall = group_shares(index, key_of(index))
        for part in ("val", "test"):
            keys = key_of(parts[part])
            for key, share in overall.items():
                assert abs(np.mean(keys == key) - share) <= tolerance, (part, key)


# --- make_split -----------------------------------------------------------------------


def test_same_seed_same_split(index: DatasetIndex, split: Split) -> None:
    again = make_split(index, seed=0)
    assert again == split
    assert again.sha256 == split.sha256


def test_different_seed_different_split(index: DatasetIndex, split: Split) -> None:
    other = make_split(index, seed=1)
    assert other.test != split.test
    assert other.sha256 != split.sha256


def test_parts_are_disjoint_sorted_and_cover(index: DatasetIndex, split: Split) -> None:
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(index.file_names)
    for part in (split.train, split.val, split.test):
        assert list(part) == sorted(part)


@pytest.mark.parametrize(("val_size", "test_size"), [(0.1, 0.1), (0.15, 0.2), (0.05, 0.3)])
def test_part_sizes(index: DatasetIndex, val_size: float, test_size: float) -> None:
    split = make_split(index, seed=3, val_size=val_size, test_size=test_size)
    assert len(split.val) == round(val_size * len(index))
    assert len(split.test) == round(test_size * len(index))
    assert (split.val_size, split.test_size, split.seed) == (val_size, test_size, 3)
    assert split.stratify_on == STRATIFY_ON


def test_split_is_stratified(index: DatasetIndex, split: Split) -> None:
    assert_stratified(index, split, tolerance=0.02)


def test_real_data_split_is_stratified() -> None:
    folder = default_data_dir()
    if not folder.is_dir():
        pytest.skip(f"UTKFace data folder not available at {folder}")
    real = index_folder(folder)
    split = make_split(real, seed=0)
    assert len(split.train) + len(split.val) + len(split.test) == len(real)
    assert_stratified(real, split, tolerance=0.01)


@pytest.mark.parametrize("size", [3, 4, 7, 12, 30])
def test_tiny_index_with_rare_strata(size: int) -> None:
    tiny = synthetic_index(size, seed=size)
    split = make_split(tiny, seed=0)
    assert all(len(part) >= 1 for part in (split.train, split.val, split.test))
    assert len(split.train) + len(split.val) + len(split.test) == size


def test_rare_strata_fall_back_to_coarser_keys() -> None:
    keys = splits._fallback_keys(
        [np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 2, 3]), np.array([1, 1, 2, 3, 4, 4])],
        start_level=0,
    )
    assert list(keys) == ["0/0/1", "0/0/1", "0/1", "0/1", "1", "1"]


def test_single_leftover_joins_largest_stratum() -> None:
    keys = splits._fallback_keys(
        [np.array([0, 0, 0, 1]), np.array([0, 0, 0, 2]), np.array([1, 1, 1, 4])], start_level=0
    )
    assert list(keys) == ["0/0/1"] * 4


def test_index_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_split(synthetic_index(2))


@pytest.mark.parametrize(
    ("val_size", "test_size", "message"),
    [(0.0, 0.1, "val_size"), (0.1, 1.0, "test_size"), (-0.1, 0.1, "val_size"),
     (0.5, 0.5, "must be < 1"), (0.6, 0.5, "must be < 1"), (True, 0.1, "val_size")],
)
def test_invalid_fractions(index: DatasetIndex, val_size: float, test_size: float,
                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_split(index, val_size=val_size, test_size=test_size)


# --- manifest -------------------------------------------------------------------------


def test_manifest_content(split: Split) -> None:
    manifest = json.loads(json.dumps(split.to_manifest()))
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["stratify"] == STRATIFY_ON
    assert (manifest["seed"], manifest["val_size"], manifest["test_size"]) == (0, 0.1, 0.1)
    assert manifest["test"] == list(split.test)


def test_save_load_round_trip(split: Split, tmp_path: Path) -> None:
    path = tmp_path / "splits" / "split.json"
    split.save(path)
    loaded = Split.load(path)
    assert loaded == split
    assert loaded.sha256 == split.sha256
    assert [entry.name for entry in path.parent.iterdir()] == ["split.json"]


def test_save_overwrites(split: Split, index: DatasetIndex, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    make_split(index, seed=5).save(path)
    split.save(path)
    assert Split.load(path) == split


def test_sha256_is_stable_and_content_sensitive(split: Split) -> None:
    assert split.sha256 == Split(**vars(split)).sha256
    assert len(split.sha256) == 64
    moved = Split(train=split.train[1:], val=split.val + split.train[:1], test=split.test,
                  seed=split.seed, val_size=split.val_size, test_size=split.test_size)
    assert moved.sha256 != split.sha256


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        Split.load(tmp_path / "absent.json")


def test_load_corrupt_json(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text('{"train": [', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        Split.load(path)


def write_manifest(path: Path, split: Split, **changes: object) -> Path:
    manifest = {**split.to_manifest(), **changes}
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def test_load_wrong_version(split: Split, tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "split.json", split, format_version=99)
    with pytest.raises(ValueError, match="format_version 99"):
        Split.load(path)


def test_load_duplicates(split: Split, tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "split.json", split, val=[*split.val, split.test[0]])
    with pytest.raises(ValueError, match="1 file names appear more than once"):
        Split.load(path)


def test_load_missing_keys_and_bad_types(split: Split, tmp_path: Path) -> None:
    manifest = split.to_manifest()
    del manifest["test"]
    path = tmp_path / "split.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks keys \['test'\]"):
        Split.load(path)
    with pytest.raises(ValueError, match="train must be a list"):
        Split.load(write_manifest(path, split, train="face_00001.jpg"))
    with pytest.raises(ValueError, match="seed must be an integer"):
        Split.load(write_manifest(path, split, seed="0"))
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        Split.load(path)


# --- apply and load_or_create_split -------------------------------------------------------


def test_apply(index: DatasetIndex, split: Split) -> None:
    parts = split.apply(index)
    assert set(parts) == {"train", "val", "test"}
    for name, part in parts.items():
        assert part.file_names == getattr(split, name)
        position = index.file_names.index(part.file_names[0])
        assert part.age[0] == index.age[position]


def test_apply_to_another_folder(split: Split) -> None:
    other = synthetic_index(1000)
    with pytest.raises(ValueError, match="names 1000 of its 2000 files .*another folder"):
        split.apply(other)


def test_apply_warns_about_unassigned_faces(
    split: Split, caplog: pytest.LogCaptureFixture
) -> None:
    bigger = synthetic_index(2010)
    with caplog.at_level(logging.WARNING, logger=splits.__name__):
        parts = split.apply(bigger)
    assert sum(len(part) for part in parts.values()) == 2000
    assert "10 faces" in caplog.text


def test_load_or_create_split(
    index: DatasetIndex, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "split.json"
    created = load_or_create_split(index, path, seed=7)
    assert path.is_file()
    assert created == make_split(index, seed=7)
    with caplog.at_level(logging.WARNING, logger=splits.__name__):
        assert load_or_create_split(index, path, seed=7) == created
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger=splits.__name__):
        assert load_or_create_split(index, path, seed=8) == created
    assert "seed=7" in caplog.text and "seed=8" in caplog.text
