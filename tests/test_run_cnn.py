"""``python -m pipelines.run --model cnn`` on a tiny folder (one short epoch)."""
from __future__ import annotations

import json
import sys

import pytest

from models.cnn import load_model
from pipelines.run import main
from tests.conftest import link_faces


@pytest.mark.slow
def test_cnn_through_the_main_command(tmp_path, face_paths, capsys) -> None:
    folder = link_faces(tmp_path / "faces", face_paths)
    out = tmp_path / "cnn"
    argv = ["--model", "cnn", "--data", str(folder), "--split", str(tmp_path / "split.json"),
            "--out", str(out), "--epochs", "1", "--batch-size", "8", "--n-jobs", "1",
            "--tasks", "gender", "age", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "cnn:default" in table and "gender" in table and "age" in table
    assert "val_accuracy" in table and "test_mae" in table
    summary = json.loads((out / "cnn_summary.json").read_text())
    assert summary["distill"]["weight"] == 3.0   # on by default
    assert set(summary["test"]) == set(summary["validation"]) == {"gender", "age"}
    assert 0 <= summary["validation"]["gender"]["accuracy"] <= 1
    assert summary["validation"]["age"]["mae"] >= 0
    assert (out / "model.keras").is_file()
    assert main(argv) == 2  # results present: --overwrite needed


@pytest.mark.slow
def test_default_tasks_follow_the_cnn_architecture(tmp_path, face_paths, capsys,
                                                   monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)   # the seed network does not distil
    folder = link_faces(tmp_path / "faces", face_paths)
    out = tmp_path / "seed"
    argv = ["--model", "cnn", "--architecture", "seed_baseline", "--data", str(folder),
            "--split", str(tmp_path / "split.json"), "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--n-jobs", "1", "--color", "rgb", "--quiet"]
    assert main(argv) == 0          # no ethnicity head, and none asked for
    summary = json.loads((out / "cnn_summary.json").read_text())
    assert set(summary["test"]) == {"gender", "age"}
    assert summary["color"] == "rgb"
    assert load_model(out / "model.keras").network.input_shape == (None, 128, 128, 3)
    assert "cnn:seed_baseline" in capsys.readouterr().out


@pytest.mark.parametrize("tasks", [["age_group"], ["gender", "age_group"]])
def test_cnn_refuses_the_age_group_task(tmp_path, tasks, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "cnn", "--out", str(tmp_path / "cnn"), "--tasks", *tasks])
    assert exit_info.value.code == 2
    assert "the CNN has heads for gender, ethnicity and age only" in capsys.readouterr().err
    assert not (tmp_path / "cnn").exists()


@pytest.mark.slow
def test_cnn_distils_dlib_descriptors_through_the_main_command(tmp_path, face_paths,
                                                               capsys) -> None:
    pytest.importorskip("dlib", reason="the embeddings extra is not installed")
    folder = link_faces(tmp_path / "faces", face_paths)
    out = tmp_path / "cnn"
    argv = ["--model", "cnn", "--data", str(folder), "--split", str(tmp_path / "split.json"),
            "--out", str(out), "--epochs", "2", "--batch-size", "8", "--n-jobs", "1",
            "--distill", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "cnn_summary.json").read_text())
    assert summary["distill"]["teacher"] == "dlib"
    assert summary["distill"]["faces_without_descriptor"] == 0
    task_loss = summary["history"]["val_task_loss"]
    assert summary["best_epoch"] == task_loss.index(min(task_loss)) + 1
    assert sorted(load_model(out / "model.keras").network.output_names) == \
        ["age", "ethnicity", "gender"]
    assert any((tmp_path / "cache").rglob("*.pkl"))   # the descriptors were cached
