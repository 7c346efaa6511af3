"""``python -m pipelines.predict``: tiny models trained and saved by the real training code,
then photos, folders, output formats, bad files and bad models."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

import features.io
from features.alignment import FaceBox
from features.faces import detect_faces
from models.labels import AGE_GROUP_NAMES, ETHNICITY_NAMES, GENDER_NAMES, age_group
from models.safety import file_sha256
from pipelines import predictor as predictor_module
from pipelines.artifacts import versions
from pipelines.classical import TrainConfig, run_classical
from pipelines.dataset import default_data_dir, index_folder
from pipelines.feature_blocks import FeatureSpec
from pipelines.photos import FACE_COLUMNS, FaceSearch, find_photos, predict_photos
from pipelines.predict import is_model_path, main
from pipelines.predictor import load_predictor
from pipelines.reports import save_artifact
from pipelines.splits import DEFAULT_MANIFEST, Split
from pipelines.writers import open_writer
from tests.conftest import link_faces

DATA = default_data_dir()
REPO = Path(__file__).resolve().parent.parent
N_TRAIN = 80
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Every task, trained by ``run_classical`` on 80 faces: 16x16 pixels -> PCA -> XGBoost."""
    root = tmp_path_factory.mktemp("predict")
    paths = index_folder(DATA).paths
    faces = link_faces(root / "faces", paths[:: len(paths) // N_TRAIN][:N_TRAIN])
    config = TrainConfig(features=(FeatureSpec("pixels", (16, 16), "gray", 10),),
                         model="xgboost", params={"n_estimators": 10, "max_depth": 2})
    run_classical(faces, config, split_path=root / "split.json", out_dir=root / "run",
                  progress=False)
    return root / "run"


def composite(face_path: str, top: int, left: int, size=(520, 420)) -> Image.Image:
    """A UTKFace crop pasted on a flat background at a known place."""
    photo = Image.new("RGB", size, (90, 120, 90))
    photo.paste(Image.open(face_path).convert("RGB"), (left, top))
    return photo


@pytest.fixture(scope="module")
def photo(face_paths, tmp_path_factory) -> Path:
    """A photo with one face at (120, 260), 200x200 pixels."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    composite(face_paths[12], top=120, left=260).save(path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_fields(run: Path, crop: np.ndarray) -> dict:
    """What each saved model, loaded by joblib, predicts for one crop."""
    models = {task: joblib.load(run / f"{task}_model.joblib")
              for task in ("gender", "ethnicity", "age")}
    age = max(float(models["age"].predict([crop])[0]), 0.0)
    fields = {"age": age, "age_group": AGE_GROUP_NAMES[age_group(age)]}
    for task, names in (("gender", GENDER_NAMES), ("ethnicity", ETHNICITY_NAMES)):
        model = models[task]
        fields[task] = names[int(model.predict([crop])[0])]
        proba = dict(zip(model.classes_, model.predict_proba([crop])[0]))
        fields.update({f"p_{task}_{name}": float(proba.get(code, 0.0))
                       for code, name in enumerate(names)})
    return fields


def assert_same_records(got: list, expected: list) -> None:
    """Equal records, floats to float-rounding of batched arithmetic."""
    assert len(got) == len(expected)
    for got_photo, expected_photo in zip(got, expected):
        assert [list(record) for record in got_photo] == \
            [list(record) for record in expected_photo]
        for got_record, expected_record in zip(got_photo, expected_photo):
            for key, value in expected_record.items():
                if isinstance(value, float):
                    assert got_record[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
                else:
                    assert got_record[key] == value, key


def assert_fields(record: dict, expected: dict) -> None:
    assert_same_records([[{key: record[key] for key in expected}]], [[expected]])


# --- end to end ---------------------------------------------------------------------------


def test_cli_in_a_fresh_process(run: Path, face_paths, tmp_path: Path) -> None:
    out = tmp_path / "faces.csv"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", str(run), *face_paths[:3], "--no-detect",
         "--out", str(out), "--quiet"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "3 photo(s), 3 face(s), 0 failed" in result.stderr
    rows = read_csv(out)
    assert [row["file"] for row in rows] == face_paths[:3]
    assert list(rows[0])[:len(FACE_COLUMNS)] == list(FACE_COLUMNS)
    for row, path in zip(rows, face_paths[:3]):
        width, height = Image.open(path).size
        assert (row["face"], row["top"], row["left"], row["height"], row["width"]) == \
            ("0", "0", "0", str(height), str(width))
        assert row["gender"] in GENDER_NAMES and row["ethnicity"] in ETHNICITY_NAMES
        assert row["age_group"] in AGE_GROUP_NAMES and float(row["age"]) >= 0
        assert float(row["p_gender_male"]) + float(row["p_gender_female"]) == \
            pytest.approx(1)
        assert row["error"] == ""
    assert "p_age_group_0-2" not in rows[0]   # groups come from the age model


def test_face_is_detected_in_a_photo_and_predicted_as_its_crop(run: Path, photo: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "faces.jsonl"
    assert main([str(run), str(photo), "--out", str(out), "--quiet"]) == 0
    (record,) = read_jsonl(out)
    box = FaceBox(record["top"], record["left"], record["height"], record["width"])
    assert record["face"] == 0 and record["error"] is None
    assert box.iou(FaceBox(120, 260, 200, 200)) > 0.5
    (face,) = detect_faces(Image.open(photo))
    assert face.box == box
    assert_fields(record, expected_fields(run, face.crop))


def test_batch_single_and_parallel_predictions_agree(run: Path, face_paths,
                                                     photo: Path) -> None:
    paths = [*face_paths[:9], photo, *face_paths[9:12]]
    predictor = load_predictor(run, batch_size=4)
    assert len({model.features_key for model in predictor.classical}) == 1  # one extraction
    batched = list(predict_photos(predictor, paths, progress=False, search=FaceSearch(None)))
    alone = [list(predict_photos(predictor, [path], progress=False, search=FaceSearch(None)))[0]
             for path in paths]
    assert_same_records(batched, alone)
    parallel = list(predict_photos(predictor, paths, progress=False, search=FaceSearch(None),
                                   n_jobs=2))
    assert_same_records(parallel, batched)
    for path, (record,) in zip(paths[:3], batched):
        assert_fields(record, expected_fields(run, np.asarray(Image.open(path).convert("RGB"))))


def test_two_workers_write_the_rows_of_one(run: Path, face_paths, photo: Path,
                                           tmp_path: Path) -> None:
    inputs = [str(photo), face_paths[3], str(photo)]    # a crop is searched as a photo too
    rows = {}
    for n_jobs in ("1", "2"):
        out = tmp_path / f"faces{n_jobs}.jsonl"
        main([str(run), *inputs, "--out", str(out), "--quiet", "--n-jobs", n_jobs,
              "--batch-size", "2"])
        rows[n_jobs] = read_jsonl(out)
    assert_same_records([rows["2"]], [rows["1"]])
    assert rows["1"][0]["face"] == 0 and rows["1"][-1] == rows["1"][0]


def test_folders_are_walked_recursively_in_order(run: Path, face_paths,
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    (folder / "a" / ".hidden").mkdir(parents=True)
    sources = iter(face_paths)
    for name in ("b/2.JPG", "a/1.jpg", "top.png", "a/.x.jpg", "a/.hidden/y.jpg"):
        Image.open(next(sources)).save(folder / name, format="PNG" if name.endswith("png")
                                       else "JPEG")
    (folder / "notes.txt").write_text("not a photo")
    expected = [folder / "a/1.jpg", folder / "b/2.JPG", folder / "top.png"]
    assert find_photos([folder]) == expected
    assert find_photos([folder / "notes.txt", folder / "b"]) == \
        [folder / "notes.txt", folder / "b/2.JPG"]
    out = tmp_path / "faces.json"
    assert main([str(run), str(folder), "--no-detect", "--out", str(out), "--quiet"]) == 0
    records = json.loads(out.read_text())
    assert [record["file"] for record in records] == [str(path) for path in expected]
    assert all(record["gender"] in GENDER_NAMES for record in records)


def test_table_without_out(run: Path, face_paths, capsys) -> None:
    assert main([str(run), *face_paths[:2], "--no-detect", "--quiet"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["file", "face", "box", "gender", "ethnicity", "age",
                                "age_group", "error"]
    assert [line.split()[0] for line in lines[1:]] == face_paths[:2]
    assert "2 photo(s), 2 face(s), 0 failed" in err


def test_json_array_is_closed_when_the_run_stops(tmp_path: Path) -> None:
    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(out, ["file", "error"]) as writer:
            writer.write([{"file": "a.jpg"}])
            raise KeyboardInterrupt
    assert json.loads(out.read_text()) == [{"file": "a.jpg", "error": None}]
    with open_writer(out, ["file"]):
        pass
    assert json.loads(out.read_text()) == []


# --- bad photos ---------------------------------------------------------------------------


@pytest.fixture()
def bad_photos(face_paths, photo: Path, tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "bad"
    folder.mkdir()
    files = {name: folder / name for name in
             ("not_image.jpg", "truncated.jpg", "empty.jpg", "animated.gif", "blank.png",
              "huge.png")}
    files["not_image.jpg"].write_text("hello")
    data = Path(face_paths[0]).read_bytes()
    files["truncated.jpg"].write_bytes(data[:len(data) // 2])
    files["empty.jpg"].touch()
    frames = [Image.open(photo).convert("P"), Image.new("P", (420, 520))]
    frames[0].save(files["animated.gif"], save_all=True, append_images=frames[1:])
    Image.new("RGB", (300, 300), (128, 128, 128)).save(files["blank.png"])
    Image.new("L", (700, 700)).save(files["huge.png"])
    return files


def test_bad_photos_are_reported_and_the_run_goes_on(run: Path, photo: Path, bad_photos,
                                                     tmp_path: Path, monkeypatch,
                                                     caplog) -> None:
    monkeypatch.setattr(features.io, "MAX_PIXELS", 600 * 600)   # in this process only
    out = tmp_path / "faces.csv"
    assert main([str(run), *map(str, bad_photos.values()), str(photo), "--out",
                 str(out), "--quiet", "--n-jobs", "1"]) == 1
    rows = {Path(row["file"]).name: row for row in read_csv(out)}
    assert rows.keys() == {*bad_photos, "photo.png"}
    errors = {name: row["error"] for name, row in rows.items()}
    assert "not an image" in errors["not_image.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "empty file" in errors["empty.jpg"]
    assert "animated" in errors["animated.gif"] and "2 frames" in errors["animated.gif"]
    assert "no face found" in errors["blank.png"]
    assert "decompression bomb" in errors["huge.png"]
    assert errors["photo.png"] == "" and rows["photo.png"]["gender"] in GENDER_NAMES
    assert all(rows[name]["gender"] == "" for name in bad_photos)
    for name in bad_photos:
        assert name in caplog.text


def test_16_bit_png_is_predicted_as_its_8_bit_version(run: Path, face_paths,
                                                      tmp_path: Path) -> None:
    gray = np.asarray(Image.open(face_paths[5]).convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(gray).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = tmp_path / "faces.jsonl"
    assert main([str(run), str(tmp_path / "deep.png"), str(tmp_path / "flat.png"),
                 "--no-detect", "--out", str(out), "--quiet"]) == 0
    deep, flat = read_jsonl(out)
    assert deep["error"] is None
    assert {k: v for k, v in deep.items() if k != "file"} == \
        {k: v for k, v in flat.items() if k != "file"}


# --- bad models ---------------------------------------------------------------------------


def copy_model(run: Path, folder: Path, task: str = "gender") -> Path:
    folder.mkdir()
    for suffix in (".joblib", ".json"):
        (folder / f"{task}_model{suffix}").write_bytes(
            (run / f"{task}_model{suffix}").read_bytes())
    return folder / f"{task}_model.joblib"


def edit_metadata(model: Path, **changes) -> None:
    path = model.with_suffix(".json")
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def corrupt(model: Path) -> None:
    model.write_bytes(b"not a pickle at all")
    edit_metadata(model, sha256=file_sha256(model))


def other_version(model: Path) -> None:
    metadata = json.loads(model.with_suffix(".json").read_text())
    edit_metadata(model, versions={**metadata["versions"], "utkface-toolkit": "0.0.1"},
                  **({"package_version": "0.0.1"} if "package_version" in metadata else {}))


@pytest.mark.parametrize("damage,message", [
    (lambda model: model.unlink(), "no model"),
    (lambda model: model.with_suffix(".json").unlink(), "no metadata file"),
    (lambda model: model.write_bytes(model.read_bytes() + b"x"), "SHA-256 mismatch"),
    (corrupt, "corrupt"),
    (other_version, "0.0.1"),
], ids=["missing", "no-metadata", "checksum", "corrupt", "other-version"])
def test_bad_model_stops_before_any_output(run: Path, photo: Path, tmp_path: Path, damage,
                                           message: str, capsys) -> None:
    model = copy_model(run, tmp_path / "model")
    damage(model)
    out = tmp_path / "faces.csv"
    assert main([str(model), str(photo), "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_other_version_can_be_allowed(run: Path, photo: Path, tmp_path: Path,
                                      caplog) -> None:
    model = copy_model(run, tmp_path / "model")
    other_version(model)
    out = tmp_path / "faces.csv"
    assert main([str(model), str(photo), "--out", str(out), "--quiet",
                 "--allow-other-version"]) == 0
    assert "used anyway" in caplog.text
    assert read_csv(out)[0]["gender"] in GENDER_NAMES


def test_usage_errors(run: Path, photo: Path, tmp_path: Path, capsys) -> None:
    assert main([str(run), str(tmp_path / "missing.jpg")]) == 2
    assert main(["--model", str(tmp_path), str(photo)]) == 2   # a folder without models
    with pytest.raises(SystemExit) as stop:
        main([str(run)])                                      # a model and no photos
    assert stop.value.code == 2
    assert "give the photos to predict after it" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(run), str(tmp_path / "empty")]) == 2
    existing = tmp_path / "old.csv"
    existing.write_text("keep")
    for argv in (["--out", str(existing)], ["--out", str(tmp_path / "x.xlsx")]):
        with pytest.raises(SystemExit) as stop:
            main([str(run), str(photo), *argv])
        assert stop.value.code == 2
    assert existing.read_text() == "keep"


def test_single_model_file_and_model_without_probabilities(run: Path, face_paths,
                                                           tmp_path: Path) -> None:
    gender = joblib.load(run / "gender_model.joblib")
    X = gender[:2].transform(face_paths)
    linear = Pipeline([*gender.steps[:2], ("model", LinearSVC().fit(X, [0, 1] * 12))])
    path = tmp_path / "linear_model.joblib"
    save_artifact(path, lambda temp: joblib.dump(linear, temp),
                  {"task": "gender", "versions": versions()})
    predictor = load_predictor(path)
    assert predictor.tasks == ("gender",) and predictor.columns == ["gender"]
    records = list(predict_photos(predictor, face_paths[:2], search=FaceSearch(None),
                                  progress=False))
    assert [r[0]["gender"] for r in records] == \
        [GENDER_NAMES[c] for c in linear.predict([np.asarray(Image.open(p).convert("RGB"))
                                                  for p in face_paths[:2]])]


# --- CNN ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cnn_run_folder(face_paths, tmp_path: Path) -> None:
    from models.cnn import CNNPredictor, build_model

    network = CNNPredictor(build_model("default", (32, 32, 1), seed=0))
    network.save(tmp_path / "model.keras")
    predictor = load_predictor(tmp_path, batch_size=4)
    assert predictor.tasks == ("gender", "ethnicity", "age")
    assert "p_ethnicity_Others" in predictor.columns
    paths = face_paths[:6]
    batched = list(predict_photos(predictor, paths, search=FaceSearch(None), progress=False))
    alone = [list(predict_photos(predictor, [path], search=FaceSearch(None), progress=False))[0]
             for path in paths]
    assert_same_records(batched, alone)
    parallel = list(predict_photos(predictor, paths, search=FaceSearch(None), progress=False,
                                   n_jobs=2))   # workers read, the network stays here
    assert_same_records(parallel, batched)
    crop = np.asarray(Image.open(paths[0]).convert("RGB"))
    proba, values = network.predict_proba([crop]), network.predict([crop])
    (record,) = batched[0]
    assert [record["p_gender_male"], record["p_gender_female"]] == \
        pytest.approx(proba["gender"][0].tolist(), rel=1e-6)
    assert record["ethnicity"] == ETHNICITY_NAMES[values["ethnicity"][0]]
    assert record["age"] == max(values["age"][0], 0.0)
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(predictor_module.ModelError, match="corrupt"):
        load_predictor(tmp_path)


# --- the bundled model -----------------------------------------------------------------------


def test_model_given_first_or_as_option_gives_the_same_rows(run: Path, face_paths,
                                                              tmp_path: Path) -> None:
    first, option = tmp_path / "first.csv", tmp_path / "option.csv"
    assert main([str(run), *face_paths[:2], "--no-detect", "--out", str(first)]) == 0
    assert main(["--model", str(run), *face_paths[:2], "--no-detect", "--out",
                 str(option)]) == 0
    assert read_csv(first) == read_csv(option)
    assert is_model_path(run) and is_model_path(run / "gender_model.joblib")
    assert not is_model_path(Path(face_paths[0]))
    assert not is_model_path(Path(face_paths[0]).parent)


def test_bundled_model_is_small_and_records_how_it_was_trained() -> None:
    folder = predictor_module.bundled_model()
    assert sum(file.stat().st_size for file in folder.iterdir()) <= 5 * 2 ** 20
    split = Split.load(DEFAULT_MANIFEST)
    for task in ("gender", "ethnicity", "age"):
        metadata = json.loads((folder / f"{task}_model.json").read_text())
        assert metadata["command"].startswith("python -m pipelines.run ")
        assert "--out pipelines/pretrained" in metadata["command"]
        assert metadata["split"]["sha256"] == split.sha256
        assert metadata["package_version"] == versions()["utkface-toolkit"]
        assert set(metadata["test"]) >= ({"mae"} if task == "age" else {"accuracy"})
    predictor = load_predictor(folder)
    assert predictor.tasks == ("gender", "ethnicity", "age")


def test_bundled_model_predicts_a_photo_and_a_face_with_no_model_given(face_paths,
                                                                        tmp_path: Path) -> None:
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    result = subprocess.run([sys.executable, "-m", "pipelines.predict", str(photo)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "using the bundled model" in result.stderr
    header, printed, *_ = result.stdout.splitlines()
    assert header.split()[:4] == ["file", "face", "box", "gender"]
    assert printed.split()[:2] == [str(photo), "0"] and printed.split()[3] == "female"
    out = tmp_path / "rows.csv"
    assert main([str(photo), "--out", str(out), "--quiet"]) == 0
    row, *others = read_csv(out)
    # the astronaut's face, at rows 65-163 and columns 175-273 of the photo
    assert abs(int(row["top"]) - 65) < 20 and abs(int(row["left"]) - 175) < 20
    assert row["gender"] == "female" and row["error"] == ""
    assert 20 <= float(row["age"]) <= 60
    assert others == []   # the mission patch on her suit fails the detector's face check
    assert main([face_paths[5], "--no-detect", "--out", str(tmp_path / "face.csv")]) == 0
    (row,) = read_csv(tmp_path / "face.csv")
    assert row["gender"] in GENDER_NAMES and row["ethnicity"] in ETHNICITY_NAMES


def test_a_crop_without_a_face_gets_an_error_row_from_a_descriptor_model(face_paths,
                                                                          tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    out = tmp_path / "rows.csv"
    assert main([str(blank), face_paths[3], "--no-detect", "--out", str(out)]) == 1
    blank_row, face_row = read_csv(out)
    assert "finds no face in this crop" in blank_row["error"]
    assert blank_row["gender"] == blank_row["age"] == ""
    assert face_row["error"] == "" and face_row["gender"] in GENDER_NAMES
