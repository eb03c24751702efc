"""Fixtures: a throw-away git + DVC copy of this repository, a temporary MLflow store, prepared digits, a PostgreSQL
cluster; MLflow's process-wide state reset after every test. Plain helpers are in tests/helpers.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, make_repo_copy, postgres_cluster, sqlite_uri


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return make_repo_copy(tmp_path / "repo")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite MLflow store in tmp_path, which is also the working directory (artifacts land beside the store) and
    outside any DVC repository; its URI is also $MLFLOW_TRACKING_URI for MLflow's fluent API and subprocesses."""
    uri = sqlite_uri(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def digits_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits as the prepare stage writes them with the default data params: read, never write."""
    from pipeline.config import DataParams
    from pipeline.stages.prepare import prepare

    out = tmp_path_factory.mktemp("digits") / "prepared"
    prepare(DataParams(), out)
    return out


@pytest.fixture
def prepared_copy(digits_prepared: Path, tmp_path: Path) -> Path:
    """A writable copy of the prepared digits at tmp_path/prepared."""
    return Path(shutil.copytree(digits_prepared, tmp_path / "prepared"))


@pytest.fixture
def committed_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repo whose committed params.yaml is the repository's; the working directory of the test."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "params.yaml"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "params"],
    ):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, empty database `mlflow`; yields its libpq URI."""
    with postgres_cluster() as uri:
        yield uri


@pytest.fixture(autouse=True)
def reset_mlflow() -> Iterator[None]:
    """No test sees another's active run or tracking URI (MLflow keeps both per process)."""
    yield
    import sys

    if "mlflow" in sys.modules:  # never import MLflow for a test that did not
        import mlflow

        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
