"""The whole pipeline through real `dvc repro` in a fresh git + DVC copy, read back from the real MLflow store."""

from __future__ import annotations

import json

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ALL_STAGES, FAST_PARAMS, dvc_lock_md5, edit_params, ran_stages, run


def runs_in(client: MlflowClient, experiment: str):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_dvc_repro_end_to_end(repo_copy):
    first = run(["dvc", "repro"], repo_copy)
    assert ran_stages(first.stdout) == ALL_STAGES

    # DVC sees the metrics and the confusion plot.
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    shown = next(iter(metrics.values()))["data"]["outputs/eval/metrics.json"]["data"]
    assert 0.5 < shown["accuracy"] <= 1  # 3 tiny epochs; the full defaults are measured in bench/
    compared = next(iter(metrics.values()))["data"]["outputs/eval/baseline.json"]["data"]
    assert compared["f1_macro"] > 0.9  # LogisticRegression on the digits' pixels, beside the model
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo_copy).stdout)["data"]
    assert {"Loss per epoch", "Accuracy and F1 per epoch", "Test confusion matrix"} <= set(plots)
    confusion = json.dumps(plots["Test confusion matrix"])
    assert '"predicted"' in confusion and '"actual"' in confusion  # DVC's confusion template, with our rows
    history = (repo_copy / "outputs/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 1 + FAST_PARAMS["train.max_epochs"]

    # One MLflow run in the repository's own store, complete.
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")
    runs = runs_in(client, "digits")
    assert len(runs) == 1
    mlrun = runs[0]
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED"
    assert json.loads((repo_copy / "outputs/model/mlflow_run.json").read_text())["run_id"] == run_id
    assert mlrun.data.params["train.lr"] == "0.003"
    assert mlrun.data.params["model.name"] == "cnn"
    assert mlrun.data.params["model.cnn.channels"] == str(FAST_PARAMS["model.cnn.channels"])
    assert mlrun.data.params["evaluate.batch_size"] == "1024"  # logged by evaluate, into the same run
    epochs = FAST_PARAMS["train.max_epochs"]
    for metric in ("train/loss", "train/acc", "train/f1", "val/loss", "val/acc", "val/f1"):
        assert len(client.get_metric_history(run_id, metric)) == epochs, metric
    assert len(client.get_metric_history(run_id, "lr-AdamW")) == epochs
    assert mlrun.data.metrics["test/accuracy"] == pytest.approx(shown["accuracy"])
    assert "test/macro_f1" in mlrun.data.metrics and "test/class_7_f1" in mlrun.data.metrics
    tags = mlrun.data.tags
    assert tags["git.commit"] == run(["git", "rev-parse", "HEAD"], repo_copy).stdout.strip()
    assert tags["git.dirty"] in ("true", "false")
    dvc_md5 = dvc_lock_md5(repo_copy, "data/prepared")
    assert tags["data.digest"] == dvc_md5
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs  # the prepared data as an MLflow dataset
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("digits", dvc_md5)
    assert str(repo_copy / "data/prepared") in dataset_input.dataset.source
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/classification_report.txt",
            "evaluation/metrics.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "weights")} >= {"weights/model.pt"}
    mlflow.set_tracking_uri(f"sqlite:///{repo_copy}/mlflow.db")
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")  # the pyfunc model evaluate logged
    assert served.metadata.get_input_schema() is not None
    assert (repo_copy / "mlartifacts").is_dir()  # artifacts at the root, beside the store

    # Nothing changed: nothing runs, no new MLflow run.
    second = run(["dvc", "repro"], repo_copy)
    assert ran_stages(second.stdout) == []
    assert len(runs_in(client, "digits")) == 1

    # A training hyper-parameter reruns train and evaluate, not prepare (validate checks every params.yaml edit).
    edit_params(repo_copy, {"train.lr": 0.01})
    third = run(["dvc", "repro"], repo_copy)
    assert ran_stages(third.stdout) == ["validate", "train", "evaluate"]
    runs = runs_in(client, "digits")
    assert len(runs) == 2
    assert {r.data.params["train.lr"] for r in runs} == {"0.003", "0.01"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.params["baseline.model"] == "LogisticRegression" for r in runs)

    # The baseline switched off: evaluate alone reruns, its metrics file is empty, and DVC accepts that.
    edit_params(repo_copy, {"evaluate.baseline": False})
    fourth = run(["dvc", "repro"], repo_copy)
    assert ran_stages(fourth.stdout) == ["validate", "evaluate"]
    assert "baseline off" in fourth.stdout
    assert json.loads((repo_copy / "outputs/eval/baseline.json").read_text()) == {}
    run(["dvc", "metrics", "show"], repo_copy)


@pytest.mark.slow
def test_temp_experiment_logs_to_the_main_repository_store(repo_copy):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/..., which DVC deletes; the run must land at the repo root."""
    result = run(["dvc", "exp", "run", "--temp", "-S", "train.max_epochs=2", "-n", "temp-exp"], repo_copy)
    assert ran_stages(result.stdout) == ALL_STAGES
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")
    (mlrun,) = runs_in(client, "digits")
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "temp-exp"
    assert mlrun.data.tags["dvc.exp_name"] == "temp-exp"
    assert mlrun.data.tags["dvc.baseline_rev"] == run(["git", "rev-parse", "HEAD"], repo_copy).stdout.strip()
    assert mlrun.data.params["train.max_epochs"] == "2"
    assert "test/accuracy" in mlrun.data.metrics
    assert str(repo_copy / "mlartifacts") in mlrun.info.artifact_uri
    assert not list(repo_copy.glob(".dvc/tmp/exps/**/mlflow.db"))
