"""``pipelines.run --model stack``: tiny member runs on real faces, stacked, saved, loaded."""
from __future__ import annotations

import json
import re
from pathlib import Path

import joblib
import numpy as np
import pytest

from models.stack import StackedFaceModel
from models.svm import BlasSVC, BlasSVR
from pipelines import predict, stacking
from pipelines.feature_blocks import FeatureSpec
from pipelines.photos import FaceSearch, predict_photos
from pipelines.predictor import load_predictor
from pipelines.classical import TrainConfig, run_classical
from pipelines.dataset import default_data_dir, index_folder
from pipelines.fairness import balance_keys, balance_weights
from pipelines.run import main
from pipelines.splits import load_or_create_split, names_sha256
from tests.conftest import link_faces

DATA = default_data_dir()
N_FACES = 400
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """400 faces; two classical runs (16x16 gray pixels -> XGBoost, 8x8 colour pixels ->
    RBF SVM) and an untrained CNN as members."""
    from models.cnn import CNNPredictor, build_model

    root = tmp_path_factory.mktemp("stack")
    paths = index_folder(DATA).paths
    faces = link_faces(root / "faces", paths[:: len(paths) // N_FACES][:N_FACES])
    for name, spec, model, params in [
            ("gray", FeatureSpec("pixels", (16, 16), "gray", 10), "xgboost",
             {"n_estimators": 10, "max_depth": 2}),
            ("colour", FeatureSpec("pixels", (8, 8), "rgb", 10), "svm", {})]:
        config = TrainConfig(features=(spec,), model=model, tasks=stacking.STACK_TASKS,
                             params=params)
        run_classical(faces, config, split_path=root / "split.json", out_dir=root / name,
                      progress=False)
    (root / "cnn").mkdir()
    CNNPredictor(build_model("default", (32, 32, 1), seed=0)).save(root / "cnn" / "model.keras")
    return root


def stack_args(root: Path, out: Path, *members: str) -> list[str]:
    return ["--model", "stack", "--members", *members, "--data", str(root / "faces"),
            "--split", str(root / "split.json"), "--out", str(out), "--no-cache", "--quiet"]


@pytest.fixture(scope="module")
def stacked(root, tmp_path_factory) -> dict:
    """The stack run, with the faces each member judged and what the combiners saw."""
    seen: dict = {"faces": [], "fitted": []}
    original_outputs, original_fit = stacking.member_outputs, StackedFaceModel.fit_outputs

    def outputs_spy(members, faces, **kwargs):
        outputs = original_outputs(members, faces, **kwargs)
        seen["faces"].append((faces.file_names, outputs))
        return outputs

    def fit_spy(self, outputs, y, sample_weight=None):
        seen["fitted"].append((outputs, y, sample_weight))
        return original_fit(self, outputs, y, sample_weight)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacking, "member_outputs", outputs_spy)
        patch.setattr(StackedFaceModel, "fit_outputs", fit_spy)
        out = tmp_path_factory.mktemp("stack-out") / "run"
        status = main(stack_args(root, out, str(root / "gray"), f"rgb={root / 'colour'}",
                                 f"net={root / 'cnn'}"))
    assert status == 0
    return {"out": out, **seen}


def test_the_combiners_see_validation_faces_only(root, stacked) -> None:
    index = index_folder(root / "faces")
    parts = load_or_create_split(index, root / "split.json").apply(index)
    (judged_val, val_outputs), (judged_test, _) = stacked["faces"]
    assert judged_val == parts["val"].file_names
    assert judged_test == parts["test"].file_names
    assert not set(judged_val) & set(judged_test)
    ((outputs, labels, weights),) = stacked["fitted"]
    assert outputs is val_outputs
    for task in stacking.STACK_TASKS:
        np.testing.assert_array_equal(labels[task], parts["val"].labels(task))
    # by default only the ethnicity combiner is weighted: 1 / sqrt(class count) per face
    assert set(weights) == {"ethnicity"}
    np.testing.assert_allclose(weights["ethnicity"],
                               balance_weights("class-sqrt", "ethnicity", parts["val"]))
    summary = json.loads((stacked["out"] / "summary.json").read_text())
    assert summary["fitted_on"] == {"part": "val", "n": len(parts["val"]),
                                    "faces_sha256": names_sha256(parts["val"].file_names)}
    models = {(row["task"], row["model"]) for row in summary["rows"]}
    assert models == {(task, name) for task in stacking.STACK_TASKS
                      for name in ("gray", "rgb", "net", "stack")}
    gender, age = summary["test"]["gender"], summary["test"]["age"]
    low, high = gender["stack"]["ci95"]
    assert low <= gender["stack"]["accuracy"] <= high
    assert 0 <= gender["gray"]["vs_stack"]["p_mcnemar"] <= 1
    assert gender["gray"]["vs_stack"]["difference"] == pytest.approx(
        gender["stack"]["accuracy"] - gender["gray"]["accuracy"])
    low, high = age["net"]["vs_stack"]["difference_ci95"]
    assert low <= age["net"]["vs_stack"]["difference"] <= high


def test_the_saved_stack_predicts_alone_and_through_predict(root, stacked, tmp_path) -> None:
    out = stacked["out"]
    metadata = json.loads((out / "stack_model.json").read_text())
    assert set(metadata["members"]) == {"gray", "rgb", "net"}
    assert metadata["postprocess"] == "none"
    assert metadata["balance"] == stacking.DEFAULT_STACK_BALANCE
    assert metadata["tasks"] == list(stacking.STACK_TASKS)
    faces = sorted(str(path) for path in (root / "faces").iterdir())[:5]
    model = joblib.load(out / "stack_model.joblib")
    alone = model.predict(faces)
    assert set(alone) == set(stacking.STACK_TASKS)
    predictor = load_predictor(out)
    # the loaded stack's SVM member predicts through BLAS kernels (same outputs, below)
    svm_member = predictor.network.members["rgb"]
    assert isinstance(svm_member["age"][-1].model, BlasSVR)
    calibrated = svm_member["gender"][-1].model.calibrated_classifiers_[0]
    assert isinstance(calibrated.estimator.estimator, BlasSVC)
    records = [record for (record,) in predict_photos(
        predictor, faces, search=FaceSearch(None), progress=False)]
    assert [record["gender"] for record in records] == \
        [("male", "female")[code] for code in alone["gender"]]
    np.testing.assert_allclose([record["age"] for record in records], alone["age"], atol=1e-6)
    proba = model.predict_proba(faces, task="ethnicity")
    np.testing.assert_allclose([record["p_ethnicity_White"] for record in records],
                               proba[:, 0], atol=1e-6)
    assert predict.main([str(out), *faces[:2], "--no-detect", "--out",
                         str(tmp_path / "rows.csv")]) == 0
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 3


def test_an_altered_or_missing_member_is_refused_before_any_output(root, tmp_path,
                                                                   capsys) -> None:
    altered = tmp_path / "altered"
    altered.mkdir()
    for file in (root / "gray").iterdir():
        (altered / file.name).write_bytes(file.read_bytes())
    model = altered / "gender_model.joblib"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(stack_args(root, out, str(altered), str(root / "colour"))) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert not out.exists()
    assert main(stack_args(root, out, str(tmp_path / "nowhere"))) == 2
    assert "no run folder at" in capsys.readouterr().err
    assert main(stack_args(root, out, f"gray={root / 'gray'}", f"gray={root / 'colour'}")) == 2
    assert "--members named gray more than once" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    default_members = [arg for arg in stack_args(root, taken) if arg != "--members"]
    assert main(default_members) == 2       # checked before any default member is trained
    assert "already holds results" in capsys.readouterr().err
    assert sorted(path.name for path in taken.iterdir()) == ["notes.txt"]
    network = tmp_path / "network"
    network.mkdir()
    (network / "model.keras").write_bytes((root / "cnn" / "model.keras").read_bytes())
    (network / "cnn_summary.json").write_text(json.dumps({"model_sha256": "0" * 64}))
    assert main(stack_args(root, out, str(root / "gray"), str(network))) == 2
    assert "was altered or replaced" in capsys.readouterr().err
    assert not out.exists()


def test_balance_weighs_every_combiners_groups_alike(root, tmp_path, monkeypatch) -> None:
    fitted = []
    original = StackedFaceModel.fit_outputs
    monkeypatch.setattr(StackedFaceModel, "fit_outputs", lambda self, outputs, y, weights:
                        fitted.append(weights) or original(self, outputs, y, weights))
    assert main([*stack_args(root, tmp_path / "fair", str(root / "gray")),
                 "--balance", "group"]) == 0
    index = index_folder(root / "faces")
    val = load_or_create_split(index, root / "split.json").apply(index)["val"]
    groups = balance_keys("group", "gender", val)
    (weights,) = fitted
    for task in stacking.STACK_TASKS:
        totals = [weights[task][groups == key].sum() for key in np.unique(groups)]
        np.testing.assert_allclose(totals, totals[0])
        assert weights[task].mean() == pytest.approx(1.0)
    metadata = json.loads((tmp_path / "fair" / "stack_model.json").read_text())
    assert metadata["balance"] == dict.fromkeys(stacking.STACK_TASKS, "group")


def test_postprocess_option_is_checked(root, tmp_path, capsys) -> None:
    # 40 validation faces: some predicted ethnicity holds faces of one gender only
    assert main([*stack_args(root, tmp_path / "fair", str(root / "gray")),
                 "--postprocess", "equalized-odds"]) == 2
    assert re.search(r"equalized-odds post-processing of gender on \d+ faces, grouped by "
                     r"predicted ethnicity: group \d: all \d+ of its faces have label [01]",
                     capsys.readouterr().err)
    assert not (tmp_path / "fair" / stacking.STACK_FILE).exists()
    with pytest.raises(SystemExit):
        main(["--postprocess", "equalized-odds", "--out", str(tmp_path / "x")])
    assert "--postprocess apply to --model stack" in capsys.readouterr().err
