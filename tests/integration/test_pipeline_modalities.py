"""`dvc repro` end to end on a user's own data of every kind, placed in data/raw/ of a fresh git + DVC copy.

Each test writes its data into the copy, points params.yaml at it with small model and training settings, and checks
that the three stages ran, that MLflow holds one FINISHED run with the test metrics, and that DVC's metrics file is
there. For the table, appending rows to the file must rerun prepare: data/raw is a dependency of the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.helpers import ALL_STAGES, SHARED_DATA, dvc_lock_md5, edit_params, ran_stages, run, sqlite_uri

pytestmark = pytest.mark.slow  # three whole pipelines and a rerun: about two minutes on 2 cores

SMS = SHARED_DATA / "sms_spam" / "SMSSpamCollection"
GIT_USER = ["-c", "user.name=test", "-c", "user.email=test@example.com"]


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", *GIT_USER, "commit", "-qm", message], repo)


def repro_and_check(repo: Path, experiment: str, kind: str, expected_stages=tuple(ALL_STAGES)):
    result = run(["dvc", "repro"], repo)
    assert ran_stages(result.stdout) == list(expected_stages), result.stdout

    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["kind"] == kind
    metrics = json.loads((repo / "outputs/eval/metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1

    client = MlflowClient(sqlite_uri(repo))
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time DESC"]
    )
    latest = runs[0]
    assert latest.info.status == "FINISHED"
    assert latest.data.metrics["test/accuracy"] == pytest.approx(metrics["accuracy"])
    assert latest.data.tags["data.digest"] == dvc_lock_md5(repo, "data/prepared")
    assert json.loads((repo / "outputs/model/mlflow_run.json").read_text())["run_id"] == latest.info.run_id
    return meta, runs


def animals(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    code = np.arange(n) % 3
    return pd.DataFrame(
        {
            "weight": (rng.normal(0, 1, n) + 2 * code).round(3),
            "colour": np.array(["blue", "grey", "brown"])[code],
            "label": np.array(["bird", "cat", "dog"])[code],
        }
    )


def test_tabular_csv(repo_copy: Path) -> None:
    csv = repo_copy / "data/raw/animals.csv"
    animals(90, seed=0).to_csv(csv, index=False)
    edit_params(
        repo_copy,
        {
            "data.dataset": "data/raw/animals.csv",
            "data.tabular.target": "label",
            "model.name": "mlp",
            "model.mlp.hidden_dims": [16],
            "mlflow.experiment_name": "tabular",
        },
    )
    commit_all(repo_copy, "animals")

    meta, runs = repro_and_check(repo_copy, "tabular", "tabular")
    assert len(runs) == 1
    assert meta["class_names"] == ["bird", "cat", "dog"]
    assert sum(meta["split_sizes"].values()) == 90
    assert runs[0].data.params["model.name"] == "mlp"

    # Nothing changed: nothing runs.
    assert ran_stages(run(["dvc", "repro"], repo_copy).stdout) == []

    # More rows in the raw file: prepare reruns (data/raw is its dependency), and so do train and evaluate.
    animals(30, seed=1).to_csv(csv, mode="a", header=False, index=False)
    meta, runs = repro_and_check(repo_copy, "tabular", "tabular", expected_stages=("prepare", "train", "evaluate"))
    assert sum(meta["split_sizes"].values()) == 120
    assert len(runs) == 2


@pytest.mark.skipif(not SMS.is_file(), reason=f"SMS Spam corpus not found at {SMS}")
def test_text_messages(repo_copy: Path) -> None:
    lines = SMS.read_text(encoding="utf-8").splitlines(keepends=True)[:800]
    (repo_copy / "data/raw/sms.tsv").write_text("".join(lines), encoding="utf-8")
    edit_params(
        repo_copy,
        {
            "data.dataset": "data/raw/sms.tsv",
            "data.kind": "text",
            "data.text.max_len": 32,
            "model.name": "rnn",
            "model.rnn.hidden_size": 16,
            "model.rnn.embedding_dim": 16,
            "train.max_epochs": 2,
            "mlflow.experiment_name": "sms",
        },
    )
    commit_all(repo_copy, "sms")

    meta, runs = repro_and_check(repo_copy, "sms", "text")
    assert len(runs) == 1
    assert meta["class_names"] == ["ham", "spam"]
    assert sum(meta["split_sizes"].values()) == 800
    assert (repo_copy / "data/prepared/vocab.json").is_file()
    assert runs[0].data.params["model.name"] == "rnn"
    assert runs[0].data.params["model.rnn.hidden_size"] == "16"


def test_image_folder(repo_copy: Path) -> None:
    rng = np.random.default_rng(0)
    # Class folders named 0, 1, 2: other names trip the bug that
    # tests/unit/data/test_prepare.py::test_image_folder_with_named_classes records.
    for k in range(3):
        folder = repo_copy / "data/raw/imgs" / str(k)
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 80, (10 + i % 3, 12, 3))
            pixels[..., k] += 150
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"{i}.png")
    edit_params(
        repo_copy,
        {
            "data.dataset": "data/raw/imgs",
            "data.image.size": [8, 8],
            "model.name": "cnn",
            "mlflow.experiment_name": "images",
        },
    )
    commit_all(repo_copy, "images")

    meta, runs = repro_and_check(repo_copy, "images", "image")
    assert len(runs) == 1
    assert meta["input_shape"] == [1, 8, 8]
    assert sum(meta["split_sizes"].values()) == 30
    assert runs[0].data.params["model.name"] == "cnn"
