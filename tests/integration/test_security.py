"""What the pipeline trusts and what it never writes: no file from a DVC remote or an artifact store is unpickled,
no credential of a tracking URI is written or printed, and params.yaml cannot pull a secret out of the environment
into a logged param."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import skops.io

from pipeline import tracking
from pipeline.config import DataParams, ParamsError, load_params
from pipeline.data import DataError
from pipeline.data.tabular import PICKLED_PREPROCESSOR_FILE, PREPROCESSOR_FILE, load_preprocessor
from pipeline.errors import PipelineError
from pipeline.stages.prepare import prepare
from pipeline.training import checkpoints
from tests.helpers import REPO, free_port

SECRET = "s3cr3t-PASSW0RD"


class WritesMarker:
    """A pickle that, when loaded, runs code: it creates the file named `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def prepared_table(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("security") / "prepared"
    prepare(DataParams(dataset="iris"), out)
    return out


def copy_of(prepared: Path, dest: Path) -> Path:
    dest.mkdir()
    for file in prepared.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    return dest


def malicious_pickle(folder: Path, marker: Path) -> None:
    """A pickle where the skops file belongs (what `dvc pull` fetches from a tampered remote)."""
    (folder / PREPROCESSOR_FILE).write_bytes(pickle.dumps(WritesMarker(marker)))


def skops_naming_a_command(folder: Path, marker: Path) -> None:
    """A well-formed skops file whose content is a function skops does not trust (os.system)."""
    skops.io.dump({"run": os.system, "arg": f"touch {marker}"}, folder / PREPROCESSOR_FILE)


def only_an_old_pickle(folder: Path, marker: Path) -> None:
    """A prepared folder of an older version: the pickled preprocessor.joblib, which must not be loaded either."""
    (folder / PREPROCESSOR_FILE).unlink()
    (folder / PICKLED_PREPROCESSOR_FILE).write_bytes(pickle.dumps(WritesMarker(marker)))


TAMPERED = {
    "pickle in place of the skops file": (malicious_pickle, "not a valid preprocessor file"),
    "skops file naming os.system": (skops_naming_a_command, "not a valid preprocessor file"),
    "only an old pickled preprocessor.joblib": (only_an_old_pickle, "never loaded"),
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_a_tampered_preprocessor_is_refused_and_never_executed(prepared_table, tmp_path, tamper) -> None:
    make, said = tamper
    folder, marker = copy_of(prepared_table, tmp_path / "prepared"), tmp_path / "pwned"
    make(folder, marker)
    meta = json.loads((folder / "meta.json").read_text())

    with pytest.raises(DataError, match=said):
        load_preprocessor(folder, meta)
    assert not marker.exists()

    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(meta["preprocessing"]["columns"]) + "\n" + ",".join(["1.0"] * 4) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PIPELINE_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.stages.predict",
            "--input",
            str(rows),
            "--prepared",
            str(folder),
            "--model",
            str(tmp_path / "no-model"),
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_the_preprocessor_prepare_writes_loads_and_transforms(prepared_table) -> None:
    meta = json.loads((prepared_table / "meta.json").read_text())
    assert not (prepared_table / PICKLED_PREPROCESSOR_FILE).exists()
    preprocessor = load_preprocessor(prepared_table, meta)
    import pandas as pd

    x = preprocessor.transform(pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=meta["preprocessing"]["columns"]))
    assert x.shape == (1, meta["input_shape"][0])


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql+psycopg2://user:PASSWORD@db:5432/mlflow", "postgresql+psycopg2://user:***@db:5432/mlflow"),
        ("http://user:PASSWORD@127.0.0.1:5000", "http://user:***@127.0.0.1:5000"),
        ("https://TOKEN@mlflow.example", "https://***@mlflow.example"),
        (
            "postgresql://user@db/mlflow?sslmode=require&password=PASSWORD",
            "postgresql://user@db/mlflow?sslmode=require&password=***",
        ),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_masked_uri(uri: str, masked: str) -> None:
    assert tracking.masked_uri(uri) == masked
    assert "PASSWORD" not in tracking.masked_uri(uri) and "TOKEN" not in tracking.masked_uri(uri)


def test_files_that_name_the_store_hold_it_masked_and_still_resume(tmp_path: Path) -> None:
    uri = f"postgresql+psycopg2://user:{SECRET}@db.example/mlflow"
    tracking.write_run_file(tmp_path, "run-1", uri)
    checkpoints.record_attempt(tmp_path, "fp", "run-1", uri)
    import torch

    torch.save({"epoch": 1, "global_step": 10}, tmp_path / checkpoints.LAST_CHECKPOINT)
    for name in (tracking.RUN_FILE, checkpoints.RESUME_FILE):
        assert SECRET not in (tmp_path / name).read_text()
    # Compared in masked form: the same store is recognised, another one is not.
    assert checkpoints.find_resume_point(tmp_path, "fp", uri) is not None
    assert checkpoints.find_resume_point(tmp_path, "fp", "postgresql+psycopg2://user:x@other/mlflow") is None


class HealthWithBasicAuth(BaseHTTPRequestHandler):
    """/health, answering only the user and password the test expects, as a server behind basic auth would."""

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        ok = self.path == "/health" and self.headers.get("Authorization") == expected
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


def test_check_reachable_sends_the_user_and_password_of_the_uri() -> None:
    server = HTTPServer(("127.0.0.1", 0), HealthWithBasicAuth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracking.check_reachable(f"http://user:{SECRET}@127.0.0.1:{server.server_port}")
        with pytest.raises(PipelineError) as refused:
            tracking.check_reachable(f"http://user:wrong-{SECRET}@127.0.0.1:{server.server_port}")
        assert SECRET not in str(refused.value) and "user:***@" in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(PipelineError) as unreachable:
        tracking.check_reachable(uri)
    assert "unreachable" in str(unreachable.value)
    assert SECRET not in str(unreachable.value) and "http://user:***@127.0.0.1" in str(unreachable.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("  run_name: null", "mlflow.run_name"),
        ("  experiment_name: digits", "mlflow.experiment_name"),
    ],
)
def test_params_reading_the_environment_are_refused(tmp_path: Path, line: str, key: str) -> None:
    text = (REPO / "params.yaml").read_text()
    assert line in text
    field = line.split(":")[0]
    (tmp_path / "params.yaml").write_text(text.replace(line, f"{field}: '${{oc.env:AWS_SECRET_ACCESS_KEY}}'", 1))
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET
    try:
        with pytest.raises(ParamsError) as refused:
            load_params(tmp_path / "params.yaml")
        with pytest.raises(ParamsError, match=re.escape("train.lr: reads an environment variable")):
            load_params(REPO / "params.yaml", overrides=["train.lr=${oc.env:AWS_SECRET_ACCESS_KEY}"])
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"]
    assert f"{key}: reads an environment variable (oc.env)" in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_written_nowhere(tmp_path: Path, digits_prepared: Path) -> None:
    """train and evaluate against a real server through `http://user:PASSWORD@host`: the server accepts the run
    (it ignores basic auth), and the password is in no output, checkpoint, artifact, param, tag or message."""
    from mlflow.tracking import MlflowClient

    from tests.helpers import edit_params, mlflow_server, run

    root = tmp_path / "work"
    root.mkdir()
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    shutil.copytree(digits_prepared, root / "prepared")
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path / "server") as base:
        uri = base.replace("http://", f"http://user:{SECRET}@")
        edit_params(
            root,
            {
                "model.name": "mlp",
                "model.mlp.hidden_dims": [16],
                "train.max_epochs": 1,
                "trainer.progress_bar": False,
                "mlflow.tracking_uri": uri,
            },
        )
        said = ""
        for stage, args in (
            ("train", ["--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"]),
            ("evaluate", ["--prepared", "prepared", "--model", "model", "--out", "eval"]),
        ):
            result = run([sys.executable, "-m", f"pipeline.stages.{stage}", *args], root, PYTHONPATH=str(REPO))
            said += result.stdout + result.stderr
        client = MlflowClient(base)
        (logged,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])

    assert logged.info.status == "FINISHED"
    # Where runs are logged is not a param of the run (only the params a training uses are): no URI to leak there.
    assert not [key for key in logged.data.params if key.startswith("mlflow.")]
    recorded = json.dumps([logged.data.params, logged.data.tags])
    written = [
        p
        for folder in (root / "model", root / "ckpt", root / "eval", tmp_path / "artifacts")
        for p in folder.rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert SECRET not in said and SECRET not in recorded and written == []
    assert json.loads((root / "model" / "mlflow_run.json").read_text())["tracking_uri"] == base.replace(
        "http://", "http://user:***@"
    )
