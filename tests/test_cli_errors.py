"""The stages as commands: a mistake the user can fix exits 2 with a short message and no traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import DataParams
from pipeline.stages.prepare import prepare
from tests.conftest import edit_params, run

REPO = Path(__file__).resolve().parents[1]
STAGE_ARGS = {
    "prepare": ["--out", "prepared"],
    "train": ["--prepared", "prepared", "--out", "model", "--checkpoints", "checkpoints"],
    "evaluate": ["--prepared", "prepared", "--model", "model", "--out", "eval"],
}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A stage's working directory: a copy of params.yaml and nothing else."""
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "prepared"
    prepare(DataParams(), out)
    return out


def stage(name: str, cwd: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PIPELINE_"))}
    environ["PYTHONPATH"] = str(REPO)
    # Even a stage that got as far as MLflow would only ever touch a store inside the temporary folder.
    environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd}/mlflow.db"
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{name}", *(args or STAGE_ARGS[name])],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replace_in_params(workdir: Path, old: str, new: str) -> None:
    path = workdir / "params.yaml"
    text = path.read_text()
    assert old in text, f"params.yaml no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "validate"])
def test_unknown_key_in_params_yaml_exits_2_naming_it(workdir: Path, name: str) -> None:
    replace_in_params(workdir, "\n  lr:", "\n  lrr:")
    result = stage(name, workdir, *(["--params", "params.yaml"] if name == "validate" else []))

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: params.yaml is invalid (1 problem):")
    assert "train.lrr: unknown key. Did you mean 'train.lr'?" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was produced.
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]


def test_debug_env_shows_the_traceback(workdir: Path) -> None:
    replace_in_params(workdir, "\n  lr:", "\n  lrr:")
    result = stage("prepare", workdir, PIPELINE_DEBUG="1")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr
    assert "ParamsError" in result.stderr and "train.lrr" in result.stderr


def test_missing_params_yaml_exits_2(tmp_path: Path) -> None:
    result = stage("train", tmp_path)
    assert result.returncode == 2
    assert "params.yaml: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_without_prepared_data_exits_2_naming_meta_json(workdir: Path) -> None:
    result = stage("train", workdir)
    assert result.returncode == 2
    assert "prepared/meta.json: not found" in result.stderr
    assert "prepare" in result.stderr  # says what to run
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists()


def test_train_with_unreachable_tracking_server_fails_fast(workdir: Path, prepared_once: Path) -> None:
    shutil.copytree(prepared_once, workdir / "prepared")
    uri = f"http://127.0.0.1:{closed_port()}"
    replace_in_params(workdir, "tracking_uri: null", f"tracking_uri: {uri}")

    start = time.monotonic()
    result = stage("train", workdir, timeout=60)
    elapsed = time.monotonic() - start

    assert result.returncode == 2, result.stderr
    assert elapsed < 15
    assert f"MLflow tracking server {uri} is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists() and not (workdir / "checkpoints").exists()


def test_evaluate_with_unreachable_tracking_server_fails_fast(workdir: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    result = stage("evaluate", workdir, timeout=60, MLFLOW_TRACKING_URI=uri)
    assert time.monotonic() - start < 15
    assert result.returncode == 2, result.stderr
    assert uri in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_without_a_trained_model_exits_2(workdir: Path, prepared_once: Path) -> None:
    shutil.copytree(prepared_once, workdir / "prepared")
    result = stage("evaluate", workdir)
    assert result.returncode == 2, result.stderr
    assert "model/mlflow_run.json: not found" in result.stderr
    assert "train" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "eval").exists()
    assert not (workdir / "mlflow.db").exists()


def test_nan_loss_stops_training_at_once_and_fails_the_run(workdir: Path) -> None:
    """An absurd learning rate makes the loss non-finite within a few steps: exit 2, epoch and step named, FAILED."""
    from mlflow.tracking import MlflowClient

    run([sys.executable, "-m", "pipeline.stages.prepare", "--out", "prepared"], workdir, PYTHONPATH=str(REPO))
    edit_params(
        workdir,
        {
            "model.name": "mlp",
            "train.lr": 1.0e30,
            "train.optimizer": "sgd",
            "train.max_epochs": 5,
            "train.scheduler": "none",
            "trainer.progress_bar": False,
        },
    )
    result = run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.train",
            "--prepared",
            "prepared",
            "--out",
            "model",
            "--checkpoints",
            "ckpt",
        ],
        workdir,
        check=False,
        PYTHONPATH=str(REPO),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "training loss is nan" in result.stderr or "training loss is inf" in result.stderr
    assert "at epoch 0, step" in result.stderr and "train.lr" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "model").exists()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (failed,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert failed.info.status == "FAILED"


def test_credentials_in_the_environment_are_never_logged(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-4f1c",
        "AWS_ACCESS_KEY_ID": "AKIA-secret-77",
        "MLFLOW_TRACKING_TOKEN": "mlflow-token-9d2e",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-31",
    }
    run([sys.executable, "-m", "pipeline.stages.prepare", "--out", "prepared"], workdir, PYTHONPATH=str(REPO))
    edit_params(workdir, {"model.name": "mlp", "train.max_epochs": 1, "trainer.progress_bar": False})
    run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.train",
            "--prepared",
            "prepared",
            "--out",
            "model",
            "--checkpoints",
            "ckpt",
        ],
        workdir,
        PYTHONPATH=str(REPO),
        **secrets,
    )
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    recorded = " ".join(
        [*logged.data.params.values(), *logged.data.tags.values(), *logged.data.params, *logged.data.tags]
    )
    for name, value in secrets.items():
        assert value not in recorded and name not in recorded


def sqlite_store(path: Path) -> bytes:
    """A real MLflow store with one run; returns its bytes."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{path}")
    run_ = client.create_run(client.create_experiment("digits"))
    client.set_terminated(run_.info.run_id)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("empty", "is an empty file (0 bytes), not a database"),
        ("garbage-header", "is not an SQLite database"),
        ("half-truncated", "is damaged (database disk image is malformed)"),
    ],
)
def test_damaged_tracking_store_exits_2_and_is_left_as_it_was(
    workdir: Path, prepared_once: Path, damage: str, phrase: str
) -> None:
    shutil.copytree(prepared_once, workdir / "prepared")
    good = sqlite_store(workdir / "good.db")
    bad = {
        "empty": b"",
        "garbage-header": b"not a database at all " * 64 + good[2048:],
        "half-truncated": good[: len(good) // 2],
    }[damage]
    (workdir / "mlflow.db").write_bytes(bad)

    result = stage("train", workdir)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: MLflow tracking store {workdir / 'mlflow.db'} {phrase}"), result.stderr
    assert "move it aside to start a new store" in result.stderr
    assert (workdir / "mlflow.db").read_bytes() == bad
    assert not (workdir / "model").exists() and not (workdir / "checkpoints").exists()
