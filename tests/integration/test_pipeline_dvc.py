"""The whole pipeline through real `dvc repro` in a fresh git + DVC copy, read back from the real MLflow store."""

from __future__ import annotations

import json
import re

import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ALL_STAGES, FAST_PARAMS, dvc_lock_md5, edit_params, ran_stages, run, sqlite_uri


def runs_in(client: MlflowClient, experiment: str):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


# Every line a `dvc repro` of the default pipeline may print: DVC's own, the stages' own, Lightning's progress bar.
# Anything else (a library banner, tip or warning the user cannot act on) fails the test.
CONSOLE_ALLOWED = [
    r"Running stage '\w+':",
    r"> python -u -m pipeline\.stages\.\w+ .*",
    r"(Generating|Updating) lock file 'dvc.lock'",
    r"To track the changes with git, run:",
    r"git add .*",
    r"To enable auto staging, run:",
    r"dvc config core.autostage true",
    r"Use `dvc push` to send your updates to remote storage\.",
    r"params\.yaml: OK",
    r"prepare: .*",
    r"train: .*",
    r"evaluate: .*",
    r"(Sanity Checking|Training|Epoch \d+|Validation).*",  # the progress bar
]
CURSOR_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the progress bar moves the cursor between its two bars


def unexpected_console_lines(output: str) -> list[str]:
    lines = [part.strip() for line in CURSOR_CODES.sub("", output).splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not any(re.fullmatch(p, line) for p in CONSOLE_ALLOWED)]


def test_dvc_repro_end_to_end(repo_copy):
    edit_params(repo_copy, {"trainer.progress_bar": True})
    # MLflow samples system metrics every 10 s by default, longer than these 3 tiny epochs take on a quiet machine.
    first = run(["dvc", "repro"], repo_copy, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    assert ran_stages(first.stdout) == ALL_STAGES

    # A quiet console: the stages' lines and the progress bar with the epoch's loss and accuracy, then summaries.
    console = first.stdout + first.stderr
    assert unexpected_console_lines(console) == []
    assert re.search(r"Epoch 2: .*val_loss=[\d.]+, val_accuracy=[\d.]+, train_loss=[\d.]+, train_accuracy=", console)
    assert "v_num" not in console
    assert re.search(
        r"train: best epoch \d \(val/loss [\d.]+\) of 3 run .*stopped: train.max_epochs \(3\) reached", console
    )
    assert re.search(r"evaluate: test accuracy [\d.]+, f1_macro [\d.]+, precision_macro", console)
    assert re.search(r"evaluate: MLflow UI .*http://127.0.0.1:5000/#/experiments/\d+/runs/\w+", console)

    # DVC sees the headline metrics of the model and of the baseline, in a table that fits 120 columns (no
    # cross-validation row: it was off).
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    files = next(iter(metrics.values()))["data"]
    assert list(files) == ["outputs/eval/metrics.json", "outputs/eval/baseline.json"]
    shown = files["outputs/eval/metrics.json"]["data"]
    assert list(shown) == ["accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted"]
    assert 0.5 < shown["accuracy"] <= 1  # 3 tiny epochs; the full defaults are measured in bench/
    compared = next(iter(metrics.values()))["data"]["outputs/eval/baseline.json"]["data"]
    assert compared["f1_macro"] > 0.9  # LogisticRegression on the digits' pixels, beside the model
    table = run(["dvc", "metrics", "show"], repo_copy).stdout.splitlines()
    assert len(table) == 3 and max(map(len, table)) <= 120, table
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo_copy).stdout)["data"]
    assert {
        "Loss per epoch",
        "Accuracy and macro F1 per epoch",
        "Test scores per class",
        "Test confusion matrix",
    } <= set(plots)
    confusion = json.dumps(plots["Test confusion matrix"])
    assert '"predicted"' in confusion and '"actual"' in confusion  # the confusion template, with our rows
    per_class = json.loads((repo_copy / "outputs/eval/per_class.json").read_text())
    assert [row["class"] for row in per_class] == [str(d) for d in range(10)]

    # The HTML page renders offline: vega comes inlined from the project's template, not from a CDN.
    run(["dvc", "plots", "show", "-o", "plots_html"], repo_copy)
    page = (repo_copy / "plots_html" / "index.html").read_text()
    assert "<script src=" not in page and "vegaEmbed" in page and "Test scores per class" in page
    history = (repo_copy / "outputs/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 1 + FAST_PARAMS["train.max_epochs"]

    # One MLflow run in the repository's own store, complete.
    client = MlflowClient(sqlite_uri(repo_copy))
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
    # Only the params the run uses: no other model's, data kind's, optimizer's or scheduler's options.
    assert len(mlrun.data.params) <= 40
    assert not [
        k
        for k in mlrun.data.params
        if k.startswith(("model.mlp.", "model.rnn.", "model.transformer.", "data.text.", "data.tabular.", "mlflow."))
    ]
    assert not {"train.momentum", "train.step_size", "train.plateau_patience"} & set(mlrun.data.params)
    assert len(mlrun.data.tags["config.hash"]) == 16
    assert mlrun.info.run_name == "cnn"  # the committed params.yaml, progress bar aside (display only)
    assert client.get_experiment_by_name("digits").tags["mlflow.experimentKind"] == "custom_model_development"
    epochs = FAST_PARAMS["train.max_epochs"]
    for metric in ("train/loss", "train/accuracy", "train/f1_macro", "val/loss", "val/accuracy", "val/f1_macro", "lr"):
        history = client.get_metric_history(run_id, metric)
        assert sorted(m.step for m in history) == list(range(epochs)), metric  # the epoch is the step
    # The same names as `dvc metrics show`, under test/; nothing per class among the metrics.
    assert {k for k in mlrun.data.metrics if k.startswith("test/")} == {f"test/{k}" for k in shown}
    assert mlrun.data.metrics["test/accuracy"] == pytest.approx(shown["accuracy"])
    assert mlrun.data.metrics["best_epoch"] in range(epochs) and mlrun.data.metrics["stopped_epoch"] == epochs - 1
    assert mlrun.data.tags["stopped_because"] == "train.max_epochs (3) reached"
    assert any(k.startswith("system/cpu_utilization") for k in mlrun.data.metrics)  # MLflow's system metrics
    tags = mlrun.data.tags
    assert tags["git.commit"] == run(["git", "rev-parse", "HEAD"], repo_copy).stdout.strip()
    assert tags["git.dirty"] in ("true", "false")
    dvc_md5 = dvc_lock_md5(repo_copy, "data/prepared")
    assert tags["data.digest"] == dvc_md5
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs  # the prepared data as an MLflow dataset
    assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("digits", dvc_md5)
    assert str(repo_copy / "data/prepared") in dataset_input.dataset.source
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/classification_report.txt",
        "evaluation/metrics.json",
        "evaluation/per_class_table.json",
    } <= artifacts
    assert any(a.path.startswith("images/confusion_matrix") for a in client.list_artifacts(run_id, "images"))
    assert {a.path for a in client.list_artifacts(run_id, "weights")} >= {"weights/model.pt"}
    mlflow.set_tracking_uri(sqlite_uri(repo_copy))
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
    assert {r.info.run_name for r in runs} == {"cnn", "cnn lr=0.01"}  # says what differs from params.yaml
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
    client = MlflowClient(sqlite_uri(repo_copy))
    (mlrun,) = runs_in(client, "digits")
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "temp-exp cnn epochs=2"
    assert mlrun.data.tags["dvc.exp_name"] == "temp-exp"
    assert mlrun.data.tags["dvc.baseline_rev"] == run(["git", "rev-parse", "HEAD"], repo_copy).stdout.strip()
    assert mlrun.data.params["train.max_epochs"] == "2"
    assert "test/accuracy" in mlrun.data.metrics
    assert str(repo_copy / "mlartifacts") in mlrun.info.artifact_uri
    assert not list(repo_copy.glob(".dvc/tmp/exps/**/mlflow.db"))
