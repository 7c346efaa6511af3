"""``python -m benchmarks.run --quick`` on a small sample of real faces: an interrupted
run, its resumption, the tables, identical test faces, a failed pipeline, a rerun of one
deleted result."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.config import DEFAULT_CONFIG, load_config, parse_config
from pipelines.stacking import DEFAULT_MEMBERS
from benchmarks.report import COLUMNS
from benchmarks.run import main, subset_split
from pipelines.dataset import default_data_dir, index_folder
from pipelines.reports import read_predictions_csv
from pipelines.splits import DEFAULT_MANIFEST, Split, load_or_create_split, names_sha256
from tests.conftest import link_random_faces

DATA = default_data_dir()
REPO = Path(__file__).resolve().parent.parent
SAMPLE = 150
PIPELINES = ["pixels-svm", "pixels-xgboost", "pixels-broken", "hog-svm", "hog-xgboost",
             "cnn-default", "linear", "stack"]
CONFIG = {
    "tasks": ["gender", "age"],
    "predict_sample": 8,
    "extractors": {"pixels": ["pixels:16:gray"], "hog": ["hog:32:gray:10"]},
    "models": {"svm": {"model": "svm"},
               "xgboost": {"model": "xgboost", "params": {"n_estimators": 10, "max_depth": 2}},
               # C must be positive: this pipeline fails when its SVMs are fitted
               "broken": {"model": "svm", "params": {"C": -1}, "extractors": ["pixels"]}},
    "cnn": {"architectures": ["default"], "epochs": 3, "size": 64, "batch_size": 16},
    # pipelines.run commands: a classical run, and a stack of it
    "runs": {"linear": {"args": ["--features", "pixels:16:gray", "--model", "linear-svm",
                                 "--tasks", "gender", "age"]},
             "stack": {"args": ["--model", "stack", "--members", "{runs}/linear"]}},
    "quick": {"limit": 120, "epochs": 1, "size": 32,
              "models": {"xgboost": {"params": {"n_estimators": 5}}}},
}
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Links to 150 random faces, the tiny configuration, and room for results."""
    root = tmp_path_factory.mktemp("benchmark")
    link_random_faces(root / "faces", DATA, SAMPLE, seed=1)
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


def arguments(workdir: Path, out: Path | None = None) -> list[str]:
    return ["--quick", "--config", str(workdir / "config.json"), "--data", str(workdir / "faces"),
            "--split", str(workdir / "split.json"), "--out", str(out or workdir / "out"),
            "--cache-dir", str(workdir / "cache"), "--n-jobs", "1", "--quiet"]


def finished_at(out: Path) -> dict[str, str]:
    """Pipeline -> the time its record was written, in the report folder ``out``."""
    folder = out / "work" / "pipelines"
    # not the hidden temporary files of records being written: one seen complete may
    # still be discarded by the interruption, before it replaces the record
    return {path.stem: json.loads(path.read_text())["finished"]
            for path in folder.glob("[!.]*.json")} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def interrupted(workdir: Path) -> dict[str, str]:
    """The command interrupted (SIGINT) once a pipeline has finished; returns the records
    written before the interruption."""
    # SIGINT as a terminal delivers it, even when the tests run where it is ignored (a
    # shell's background job ignores it, and so would the command, inheriting that)
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.run", *arguments(workdir)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while (not finished_at(workdir / "out") and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    return finished_at(workdir / "out")


@pytest.fixture(scope="module")
def resumed(workdir: Path, interrupted: dict[str, str]) -> Path:
    """The same command run to the end: it resumes the interrupted run."""
    assert main(arguments(workdir)) == 1           # 1: a pipeline failed
    return workdir / "out"


@pytest.mark.slow
def test_interrupted_run_is_resumed(workdir: Path, interrupted: dict[str, str],
                                    resumed: Path) -> None:
    assert 0 < len(interrupted) < len(PIPELINES)
    after = finished_at(workdir / "out")
    assert sorted(after) == sorted(PIPELINES)
    for name, finished in interrupted.items():     # finished before: not run again
        if json.loads((resumed / "work" / "pipelines" / f"{name}.json").read_text())[
                "status"] == "done":
            assert after[name] == finished


@pytest.mark.slow
def test_tables_have_a_row_per_pipeline_and_task(resumed: Path) -> None:
    with open(resumed / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == COLUMNS
    assert sorted((row["pipeline"], row["task"]) for row in rows) == sorted(
        (name, task) for name in PIPELINES for task in ("gender", "age"))
    assert {row["status"] for row in rows if row["pipeline"] != "pixels-broken"} == {"done"}
    rows_json = json.loads((resumed / "results.json").read_text())["rows"]
    assert [tuple(row) for row in rows_json] == [COLUMNS] * len(rows)

    text = (resumed / "RESULTS.md").read_text()
    assert "python -m benchmarks.run --quick" in text
    for task, figures in (("gender", ["accuracy", "macro F1"]),
                          ("age", ["MAE (years)", "RMSE", "within 5 y"])):
        section = text.split(f"## {task}\n")[1].split("\n## ")[0]
        table = [line for line in section.splitlines() if line.startswith("|")]
        header = [cell.strip() for cell in table[0].strip("|").split("|")]
        assert header[0] == "pipeline" and header[1] == figures[0]
        assert header[2] == "vs best (paired)" and header[3:2 + len(figures)] == figures[1:]
        assert header[-6:] == ["extraction s", "fit s", "wall s", "predict faces/s",
                               "model MB", "note"]
        body = table[2:]
        assert sorted(line.split("`")[1] for line in body) == sorted(PIPELINES)
        assert all(len(line.strip("|").split("|")) == len(header) for line in body)
        assert "**" in section                     # best values marked
        assert f"![{task}](plots/{task}.png)" in section
    for plot in ("gender", "age", "score_vs_time"):
        assert (resumed / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_every_pipeline_used_the_same_test_faces(resumed: Path, workdir: Path) -> None:
    split = Split.load(resumed / "work" / "split.json")   # the --quick subset of the split
    shared = Split.load(workdir / "split.json")
    assert set(split.test) <= set(shared.test) and len(split.train) < len(shared.train)
    rows = json.loads((resumed / "results.json").read_text())["rows"]
    done = [row for row in rows if row["status"] == "done"]
    assert len(done) == 2 * (len(PIPELINES) - 1)
    assert {row["test_faces_sha256"] for row in done} == {names_sha256(split.test)}
    assert {row["n_test"] for row in done} == {len(split.test)}


@pytest.mark.slow
def test_every_row_has_its_interval_and_paired_test(resumed: Path) -> None:
    rows = json.loads((resumed / "results.json").read_text())["rows"]
    for task, key, higher in (("gender", "accuracy", True), ("age", "mae", False)):
        done = sorted((row for row in rows if row["task"] == task and row["status"] == "done"),
                      key=lambda row: -row[key] if higher else row[key])
        for row in done:
            assert row["ci95_low"] <= row[key] <= row["ci95_high"]
        assert done[0]["vs_best_difference"] is None
        for row in done[1:]:        # every pipeline scored the same test faces
            assert row["n_paired"] == row["n_test"]
            assert row["vs_best_difference"] == pytest.approx(row[key] - done[0][key])
            assert (row["vs_best_p"] is None) == (not higher)
    record = json.loads((resumed / "work" / "pipelines" / "linear.json").read_text())
    files, true, predicted = read_predictions_csv(
        resumed / "work" / "runs" / "linear" / "age_predictions.csv")
    assert record["tasks"]["age"]["predictions"] == {
        "files": files, "true": true.tolist(), "predicted": predicted.tolist()}
    assert record["run_command"].startswith("python -m pipelines.run --features pixels:16:gray")
    assert json.loads((resumed / "work" / "pipelines" / "stack.json").read_text())[
        "run_command"].split("--members ")[1].startswith(str(resumed / "work" / "runs" / "linear"))


@pytest.mark.slow
def test_failed_pipeline_is_reported(resumed: Path) -> None:
    rows = json.loads((resumed / "results.json").read_text())["rows"]
    failed = [row for row in rows if row["pipeline"] == "pixels-broken"]
    assert [row["status"] for row in failed] == ["failed", "failed"]
    assert all("InvalidParameterError" in row["error"] and row["accuracy"] is None
               for row in failed)
    text = (resumed / "RESULTS.md").read_text()
    assert "| `pixels-broken` | - |" in text and "**failed**: InvalidParameterError" in text


@pytest.mark.slow
def test_only_a_deleted_result_runs_again(resumed: Path, workdir: Path, tmp_path: Path,
                                          capsys) -> None:
    copy = tmp_path / "out"          # a copy of the finished run: the other tests keep theirs
    shutil.copytree(resumed, copy, symlinks=True)
    before = finished_at(copy)
    (copy / "work" / "pipelines" / "hog-svm.json").unlink()
    assert main(arguments(workdir, copy)) == 1
    after = finished_at(copy)
    rerun = {name for name in PIPELINES if after[name] != before.get(name)}
    assert rerun == {"hog-svm", "pixels-broken"}   # failed pipelines are retried
    assert "hog-svm" in capsys.readouterr().out


def test_default_configuration_runs_todays_pipelines() -> None:
    config = load_config(DEFAULT_CONFIG)
    runs = {pipeline.name: pipeline for pipeline in config.pipelines()}
    assert {pipeline.kind for pipeline in runs.values()} == {"run"}
    # the stack's default members, each with its own command (the classical default with
    # its age-group model too), then the stack of them
    for name, args in DEFAULT_MEMBERS.items():
        assert runs[name].args == (() if name == "classical" else args)
        assert list(runs).index(name) < list(runs).index("stack")
    members = runs["stack"].arguments("R")
    assert members[members.index("--members") + 1:] == [f"R/{name}" for name in DEFAULT_MEMBERS]
    assert runs["classical"].args == () and runs["classical"].tasks == config.tasks
    assert runs["cnn-seed-baseline"].model == "cnn:seed_baseline"
    assert runs["cnn-seed-baseline"].tasks == ("gender", "age")
    assert runs["stack"].tasks == ("gender", "ethnicity", "age")
    assert config.tasks == ("gender", "ethnicity", "age", "age_group")
    quick = config.for_quick()
    quick_runs = {pipeline.name: pipeline for pipeline in quick.pipelines()}
    assert quick.limit and quick_runs["cnn"].arguments("R")[-2:] == ["--epochs", "2"]
    assert quick_runs["classical"].arguments("R") == []


def test_extractor_configuration_pairs_every_extractor_and_model() -> None:
    config = load_config(REPO / "benchmarks" / "extractors.toml")
    names = [pipeline.name for pipeline in config.pipelines()]
    for extractor in ("pixels", "hog", "lbp", "hog+lbp", "pca", "dlib"):
        assert f"{extractor}-svm" in names and f"{extractor}-xgboost" in names
    assert names[-2:] == ["cnn-default", "cnn-seed_baseline"]
    quick = config.for_quick()
    assert quick.limit and quick.cnn.epochs < config.cnn.epochs
    assert quick.models["xgboost"].params["n_estimators"] < 100


@pytest.mark.parametrize("change, message", [
    ({"colour": "gray"}, "unknown key"),
    ({"extractors": {"x": ["sift:64"]}}, "unknown extractor"),
    ({"models": {"m": {"model": "forest"}}}, "unknown model"),
    ({"models": {"m": {"model": "svm", "extractors": ["nope"]}}}, "no extractors named"),
    ({"cnn": {"architectures": ["resnet"]}}, "unknown architectures"),
    ({"tasks": ["height"]}, "tasks must be"),
    ({"quick": {"models": {"forest": {"params": {}}}}}, "quick.models.forest"),
    ({"runs": {"r": {"args": ["--model", "forest"]}}}, "pipelines.run refuses"),
    ({"runs": {"r": {"args": ["--out", "x"]}}}, "--out are set by the benchmark"),
    ({"runs": {"r": {"member": "dlib-height"}}}, "member must be one of"),
    ({"runs": {"r": {"args": [], "member": "cnn"}}}, "either args"),
    ({"runs": {"s": {"args": ["--model", "stack", "--members", "{runs}/later"]},
               "later": {"args": []}}}, "names no earlier run"),
    ({"runs": {"r": {"args": ["--model", "cnn", "--architecture", "seed_baseline",
                              "--tasks", "ethnicity"]}}}, "no head for"),
])
def test_invalid_configuration_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config({**CONFIG, "quick": {}, **change})


def test_subset_keeps_parts_and_proportions() -> None:
    index = index_folder(DATA)
    split = load_or_create_split(index, DEFAULT_MANIFEST)
    subset = subset_split(split, split.apply(index), 1000, seed=0)
    for part in ("train", "val", "test"):
        assert set(getattr(subset, part)) <= set(getattr(split, part))
    assert abs(len(subset.train) + len(subset.val) + len(subset.test) - 1000) <= 2
    women = index.subset(subset.test).gender.mean()
    assert women == pytest.approx(index.subset(split.test).gender.mean(), abs=0.02)
