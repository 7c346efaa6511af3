"""Running on a Dask cluster (:mod:`pipelines.cluster`): a local cluster of two worker
processes on the loopback interface gives the same features and XGBoost predictions as
this machine, names the worker that cannot read a file, refuses a large SVM; without a
scheduler Dask is never imported; ``python -m benchmarks.run --scheduler`` gives the same
figures as without. Also the CNN's one-device ``tf.distribute`` path."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.run import main as benchmark_main
from features import extract_features, make_extractor
from features.io import map_image_chunks
from models.xgboost_models import fit_on_cluster, make_xgboost
from pipelines import cluster
from pipelines.classical import TrainConfig, train_tasks
from pipelines.cluster import ClusterError, connect, scheduler_address
from pipelines.dataset import DatasetIndex, index_folder
from pipelines.feature_blocks import FeatureSpec, extract_blocks
from pipelines.run import main
from tests.conftest import link_faces

distributed = pytest.importorskip("distributed")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def address():
    """Scheduler address of a LocalCluster: 2 worker processes, 1 thread each, loopback."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def faces(face_paths, tmp_path_factory) -> Path:
    """A UTKFace-style folder of links to the 24 sample faces."""
    return link_faces(tmp_path_factory.mktemp("dask") / "faces", face_paths)


def test_no_address_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv(cluster.SCHEDULER_ENV, raising=False)
    assert scheduler_address(None) is None
    with connect(None) as client:
        assert client is None
    monkeypatch.setenv(cluster.SCHEDULER_ENV, "tcp://10.0.0.5:8786")
    assert scheduler_address(None) == "tcp://10.0.0.5:8786"
    assert scheduler_address("tcp://127.0.0.1:9000") == "tcp://127.0.0.1:9000"


def test_features_are_identical_on_the_cluster(address, face_paths) -> None:
    extractor = make_extractor("hog+lbp")
    local = extract_features(face_paths, extractor, progress=False)
    chunks = map_image_chunks(face_paths, transform=extractor.transform, chunk_size=5,
                              progress=False)
    with connect(address) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote = extract_features(face_paths, extractor, progress=False)
        remote_chunks = map_image_chunks(face_paths, transform=extractor.transform,
                                         chunk_size=5, progress=False)
    np.testing.assert_array_equal(remote.images, local.images)
    np.testing.assert_array_equal(remote.kept, local.kept)
    np.testing.assert_array_equal(remote_chunks.images, local.images)
    np.testing.assert_array_equal(remote_chunks.images, chunks.images)
    assert remote.images.dtype == local.images.dtype


def test_unreadable_file_names_the_worker(address, face_paths, tmp_path, caplog) -> None:
    missing = str(tmp_path / "gone_1_0_20170101000000000.jpg.chip.jpg")
    paths = [*face_paths[:3], missing, *face_paths[3:6]]
    with connect(address) as client, caplog.at_level(logging.WARNING):
        workers = set(client.scheduler_info()["workers"])
        report = map_image_chunks(paths, chunk_size=2, progress=False)
    assert report.kept.tolist() == [0, 1, 2, 4, 5, 6]
    [(path, reason)] = report.failures
    assert path == missing
    named = [worker for worker in workers if reason == f"no such file on worker {worker}"]
    assert len(named) == 1, reason
    assert missing in caplog.text and named[0] in caplog.text


def test_nothing_readable_is_a_clear_error(address, tmp_path) -> None:
    names = ("20_0_0_20170101000000000.jpg.chip.jpg", "30_1_2_20170101000000001.jpg.chip.jpg")
    index = DatasetIndex(tmp_path, names, age=[20, 30], gender=[0, 1], ethnicity=[0, 2])
    with connect(address), pytest.raises(ValueError) as error:
        extract_blocks(index, [FeatureSpec("pixels", (16, 16))], progress=False)
    message = str(error.value)
    assert "none of the 2 images could be read" in message
    assert str(tmp_path / names[0]) in message and "on worker tcp://127.0.0.1:" in message


def test_workers_must_read_the_image_folder(address, faces, tmp_path) -> None:
    absent = tmp_path / "not_mounted"
    with connect(address) as client:
        cluster.check_workers_read(client, [faces])         # readable: passes
        with pytest.raises(ClusterError) as error:
            cluster.check_workers_read(client, [faces, absent])
        workers = list(client.scheduler_info()["workers"])
    message = str(error.value)
    for worker in workers:
        assert f"worker {worker} cannot read {absent}" in message
    assert f"cannot read {faces}" not in message
    assert "readable at the same path from every Dask worker" in message


def test_unreachable_scheduler_is_a_clear_error() -> None:
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(ClusterError, match="cannot reach the Dask scheduler at "
                                              "tcp://127.0.0.1:1"):
        with connect("tcp://127.0.0.1:1"):
            pass


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_xgboost_on_the_cluster_matches_this_machine(address, faces, kind) -> None:
    index = index_folder(faces)
    X = extract_features(index.paths, make_extractor("pixels"), size=(16, 16), color="rgb",
                         progress=False).images
    y = index.labels("ethnicity" if kind == "classifier" else "age")
    # subsample=1: each worker would otherwise draw its own rows (see fit_on_cluster);
    # 24 rows have fewer distinct values per column than the 256 histogram bins
    params = {"n_estimators": 30, "max_depth": 3, "subsample": 1.0, "colsample_bytree": 0.5}
    local = make_xgboost(kind, random_state=0, **params).fit(X, y)
    with connect(address) as client:
        remote = fit_on_cluster(make_xgboost(kind, random_state=0, **params), X, y, client)
    remote = pickle.loads(pickle.dumps(remote))        # a plain estimator, no cluster
    assert type(remote) is type(local)
    if kind == "classifier":
        np.testing.assert_array_equal(remote.classes_, local.classes_)
        np.testing.assert_array_equal(remote.predict(X), local.predict(X))
        np.testing.assert_allclose(remote.predict_proba(X), local.predict_proba(X), atol=1e-5)
    else:
        np.testing.assert_allclose(remote.predict(X), local.predict(X), atol=1e-4)


def test_run_on_the_cluster_matches_this_machine(address, faces, tmp_path) -> None:
    def run(out: str, *extra: str) -> dict:
        assert main(["--data", str(faces), "--split", str(tmp_path / "split.json"),
                     "--no-cache", "--out", str(tmp_path / out), "--n-jobs", "1", "--quiet",
                     "--model", "xgboost", "--tasks", "gender", "age",
                     "--features", "pixels:16:rgb:8", "--param", "n_estimators=30",
                     "--param", "subsample=1", *extra]) == 0
        return json.loads((tmp_path / out / "summary.json").read_text())

    assert run("here")["scheduler"] is None
    assert run("cluster", "--scheduler", address)["scheduler"] == address
    import joblib

    paths = [str(faces / name) for name in json.loads((tmp_path / "split.json").read_text())
             ["test"]]
    for task in ("gender", "age"):
        here = joblib.load(tmp_path / "here" / f"{task}_model.joblib").predict(paths)
        there = joblib.load(tmp_path / "cluster" / f"{task}_model.joblib").predict(paths)
        np.testing.assert_allclose(there, here, atol=1e-4)


#: One extractor x XGBoost, gender and age, on a --quick subset of 80 of 100 faces.
BENCHMARK_CONFIG = {
    "tasks": ["gender", "age"], "predict_sample": 4,
    "extractors": {"hog": ["hog:32:gray:10"]},
    # subsample=1: the cluster's model then equals this machine's (fit_on_cluster); PCA
    # leaves fewer distinct values per column than XGBoost's 256 histogram bins
    "models": {"xgboost": {"model": "xgboost",
                           "params": {"n_estimators": 10, "max_depth": 2, "subsample": 1}}},
    "quick": {"limit": 80},
}
_FIGURES = ("accuracy", "f1_macro", "mae", "rmse", "within_5", "gap_ethnicity", "gap_gender")


def test_benchmark_on_the_cluster_matches_this_machine(address, face_paths, tmp_path) -> None:
    paths = index_folder(Path(face_paths[0]).parent).paths
    faces = link_faces(tmp_path / "faces", paths[::max(1, len(paths) // 100)][:100])
    (tmp_path / "config.json").write_text(json.dumps(BENCHMARK_CONFIG))

    def run(name: str, *extra: str) -> dict:
        # a cache of its own: the cluster's run extracts its features on the workers
        assert benchmark_main(["--quick", "--config", str(tmp_path / "config.json"),
                               "--data", str(faces), "--split", str(tmp_path / "split.json"),
                               "--out", str(tmp_path / name),
                               "--cache-dir", str(tmp_path / f"cache-{name}"),
                               "--n-jobs", "1", "--quiet", *extra]) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    here, there = run("here"), run("cluster", "--scheduler", address)
    assert here["context"]["environment"]["scheduler"] is None
    assert there["context"]["environment"]["scheduler"] == address
    record = json.loads((tmp_path / "cluster" / "work" / "pipelines" / "hog-xgboost.json")
                        .read_text())
    assert record["status"] == "done" and record["scheduler"] == address
    assert f"**Dask scheduler**: `{address}`" in (tmp_path / "cluster" / "RESULTS.md").read_text()
    assert [(row["task"], row["status"]) for row in there["rows"]] == [
        ("gender", "done"), ("age", "done")]
    for local, remote in zip(here["rows"], there["rows"]):
        assert remote["test_faces_sha256"] == local["test_faces_sha256"]
        assert remote["n_test"] == local["n_test"] and remote["n_train"] == local["n_train"]
        for figure in _FIGURES:     # regression predictions agree to 1e-4 (fit_on_cluster)
            assert (remote[figure] is None) == (local[figure] is None), figure
            if local[figure] is not None:
                assert remote[figure] == pytest.approx(local[figure], abs=1e-4), figure


def _help_text(cli_main, capsys) -> str:
    """The ``--help`` text of a command line, whitespace collapsed."""
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_benchmark_cli_scheduler_option(capsys) -> None:
    help_text = _help_text(benchmark_main, capsys)
    assert "--scheduler ADDRESS" in help_text and "$DASK_SCHEDULER_ADDRESS" in help_text
    assert "readable at the same path from every worker" in help_text
    assert "CNN pipelines ignore it" in help_text


def test_svm_is_refused_above_the_limit(address, faces, monkeypatch, caplog,
                                        counted_extraction) -> None:
    with pytest.raises(ClusterError, match="--model xgboost"):
        cluster.check_single_machine_model("svm", cluster.SVM_CLUSTER_LIMIT + 1)
    with caplog.at_level(logging.WARNING):
        cluster.check_single_machine_model("svm", cluster.SVM_CLUSTER_LIMIT)
        cluster.check_single_machine_model("linear-svm", 10 * cluster.SVM_CLUSTER_LIMIT)
    assert caplog.text.count("fitted in this process") == 2
    cluster.check_single_machine_model("xgboost", 10 * cluster.SVM_CLUSTER_LIMIT)

    monkeypatch.setattr(cluster, "SVM_CLUSTER_LIMIT", 10)
    index = index_folder(faces)
    parts = {"train": index, "val": index, "test": index}
    with connect(address) as client, pytest.raises(ClusterError, match="24 rows"):
        train_tasks(parts, TrainConfig(model="svm", tasks=("gender",)), client=client,
                    progress=False)
    assert counted_extraction == []         # refused before any feature is extracted


def test_without_a_scheduler_dask_is_not_imported(faces, tmp_path) -> None:
    script = (
        "import sys\n"
        "from pipelines.run import main\n"
        f"status = main(['--data', {str(faces)!r}, '--split', {str(tmp_path / 's.json')!r},"
        f" '--no-cache', '--out', {str(tmp_path / 'out')!r}, '--n-jobs', '1', '--quiet',"
        " '--model', 'xgboost', '--param', 'n_estimators=5', '--tasks', 'gender',"
        " '--features', 'pixels:16:rgb:8'])\n"
        "assert status == 0, status\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))\n")
    env = {key: value for key, value in os.environ.items() if key != cluster.SCHEDULER_ENV}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_cli_scheduler_option(capsys) -> None:
    help_text = _help_text(main, capsys)
    assert "--scheduler ADDRESS" in help_text and "$DASK_SCHEDULER_ADDRESS" in help_text
    assert "readable at the same path from every worker" in help_text
    with pytest.raises(SystemExit):
        main(["--model", "cnn", "--scheduler", "tcp://127.0.0.1:8786"])
    assert "tf.distribute" in capsys.readouterr().err


def test_strategy_choice() -> None:
    from models.cnn import strategy_kind

    cluster_config = json.dumps({"cluster": {"worker": ["host1:2222", "host2:2222"]},
                                 "task": {"type": "worker", "index": 0}})
    assert strategy_kind(None, 0) == "one-device"
    assert strategy_kind("", 1) == "one-device"
    assert strategy_kind(None, 2) == "mirrored"
    assert strategy_kind(cluster_config, 0) == "multi-worker"
    assert strategy_kind(cluster_config, 4) == "multi-worker"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy_kind("{not json", 0)


def test_one_device_strategy_builds_and_trains(monkeypatch) -> None:
    tf = pytest.importorskip("tensorflow")
    from models.cnn import build_model, compile_network, distribution_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if len(tf.config.list_physical_devices("GPU")) > 1:
        pytest.skip("several GPUs: the mirrored strategy applies")
    strategy = distribution_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert type(strategy) is type(tf.distribute.get_strategy())
    with strategy.scope():
        network = build_model("default", (32, 32, 1), ("gender",), seed=0)
        compile_network(network, total_steps=1)
    assert network.distribute_strategy is strategy
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    loss = network.train_on_batch(images.astype(np.float32),
                                  {"gender": np.array([[0], [1], [0], [1]], np.float32)})
    assert np.isfinite(np.asarray(loss)).all()
