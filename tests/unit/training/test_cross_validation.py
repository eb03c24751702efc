"""train.cv_folds: k stratified folds as nested MLflow runs, mean ± std to the parent run and the DVC metrics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import (
    DataParams,
    MlflowParams,
    MLPParams,
    ModelParams,
    Params,
    ParamsError,
    TrainerParams,
    TrainParams,
    load_params,
)
from pipeline.stages.prepare import prepare
from pipeline.stages.train import fit
from tests.helpers import REPO


def test_folds_are_nested_runs_and_the_parent_gets_mean_and_std(tmp_path, mlflow_store: str):
    uri = mlflow_store
    prepare(DataParams(dataset="wine"), tmp_path / "prepared")
    params = Params(
        data=DataParams(dataset="wine"),
        model=ModelParams(name="mlp", mlp=MLPParams(hidden_dims=[16])),
        train=TrainParams(cv_folds=3, max_epochs=3, batch_size=16, lr=0.01, early_stopping_patience=None),
        trainer=TrainerParams(progress_bar=False),
        mlflow=MlflowParams(tracking_uri=uri, experiment_name="cv"),
    )
    parent_id = fit(
        params, tmp_path / "prepared", tmp_path / "model", tmp_path / "ckpt", cv_metrics_file=tmp_path / "cv.json"
    )

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cv").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(runs) == 4 and len(children) == 3
    assert sorted(r.data.tags["cv.fold"] for r in children) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Each fold's last val/accuracy is its best checkpoint's (validated after fitting); the parent holds their
    # mean/std, and the DVC metrics file the same numbers by the same names.
    fold_acc = [r.data.metrics["val/accuracy"] for r in children]
    parent = client.get_run(parent_id)
    assert parent.data.metrics["cv/val/accuracy_mean"] == pytest.approx(np.mean(fold_acc), abs=1e-6)
    assert parent.data.metrics["cv/val/accuracy_std"] == pytest.approx(np.std(fold_acc), abs=1e-6)
    summary = json.loads((tmp_path / "cv.json").read_text())
    assert summary["cv/folds"] == 3
    assert summary["cv/val/accuracy_mean"] == pytest.approx(np.mean(fold_acc), abs=1e-6)
    assert set(summary) == {"cv/folds"} | {
        f"cv/val/{m}_{s}" for m in ("loss", "accuracy", "f1_macro") for s in ("mean", "std")
    }
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("cv/")} == pytest.approx(
        {k: v for k, v in summary.items() if k != "cv/folds"}
    )
    # The final model was still trained as configured, into the parent run.
    assert len(client.get_metric_history(parent_id, "val/loss")) == 3
    assert (tmp_path / "model" / "model.pt").is_file()


def test_cross_validation_refuses_several_devices():
    with pytest.raises(ParamsError, match=re.escape("train.cv_folds > 1 runs its folds in one process")):
        load_params(REPO / "params.yaml", ["train.cv_folds=3", "trainer.devices=2", "trainer.strategy=ddp"])


def test_a_failing_fold_leaves_no_run_running(tmp_path, mlflow_store: str):
    """Labels outside the class range make the first fold's loss raise; parent and fold both end FAILED."""
    uri = mlflow_store
    prepared = tmp_path / "prepared"
    prepare(DataParams(dataset="wine"), prepared)
    broken = np.load(prepared / "val_y.npy") + 10  # not a class index: CrossEntropyLoss raises
    np.save(prepared / "val_y.npy", broken)
    params = Params(
        data=DataParams(dataset="wine"),
        model=ModelParams(name="mlp"),
        train=TrainParams(cv_folds=2, max_epochs=1),
        trainer=TrainerParams(progress_bar=False),
        mlflow=MlflowParams(tracking_uri=uri, experiment_name="cv-fail"),
    )
    with pytest.raises(Exception):  # noqa: B017, PT011 (torch raises IndexError or RuntimeError by device)
        fit(params, prepared, tmp_path / "model", tmp_path / "ckpt")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cv-fail").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
