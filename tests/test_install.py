"""A plain (not editable) install works: its data files are package data, found through
``importlib.resources``, and its commands run outside the repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.dataset import default_data_dir, index_folder
from pipelines.splits import DEFAULT_MANIFEST, Split
from tests.conftest import link_faces

REPO = Path(__file__).resolve().parent.parent
DATA = default_data_dir()
N_FACES = 80


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed with ``pip install --target`` (a wheel built from the
    checkout), into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(REPO)],
                   check=True, capture_output=True, text=True)
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Python with only the installed copy importable (not the checkout)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_installed_package_finds_its_data_files(installed: Path, tmp_path: Path) -> None:
    probe = ("import json, pipelines, benchmarks.config as c, pipelines.splits as s, "
             "pipelines.predictor as p; print(json.dumps([pipelines.__file__, "
             "str(s.DEFAULT_MANIFEST), str(c.DEFAULT_CONFIG), str(p.bundled_model())]))")
    result = run_installed(installed, tmp_path, "-c", probe)
    assert result.returncode == 0, result.stderr
    paths = [Path(path) for path in json.loads(result.stdout.splitlines()[-1])]
    assert all(path.is_relative_to(installed) for path in paths), paths
    manifest, config, model = paths[1:]
    assert manifest.read_bytes() == DEFAULT_MANIFEST.read_bytes()
    assert config.name == "default.toml" and config.is_file()
    assert (model / "gender_model.joblib").is_file()
    for command in ("pipelines.run", "pipelines.predict", "benchmarks.run"):
        result = run_installed(installed, tmp_path, "-m", command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"no UTKFace folder at {DATA}")
def test_installed_package_trains_a_model(installed: Path, tmp_path: Path) -> None:
    paths = index_folder(DATA).paths
    faces = link_faces(tmp_path / "faces", paths[:: len(paths) // N_FACES][:N_FACES])
    result = run_installed(
        installed, tmp_path, "-m", "pipelines.run", "--data", str(faces), "--features",
        "pixels:16:gray", "--model", "linear-svm", "--tasks", "gender", "--split",
        str(tmp_path / "split.json"), "--out", str(tmp_path / "run"), "--cache-dir",
        str(tmp_path / "cache"), "--n-jobs", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["split"]["sha256"] == Split.load(tmp_path / "split.json").sha256
    assert sum(summary["split"][part] for part in ("train", "val", "test")) == N_FACES
    assert (tmp_path / "run" / "gender_model.joblib").is_file()
