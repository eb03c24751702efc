"""DDP with two CPU processes (gloo): still one MLflow run, one model, metrics computed across both processes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import FAST_PARAMS, REPO, edit_params, run


@pytest.mark.slow
def test_two_process_ddp_gives_one_run(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    edit_params(tmp_path, {**FAST_PARAMS, "trainer.devices": 2, "trainer.strategy": "ddp"})
    run(["python", "-m", "pipeline.prepare", "--out", "prepared"], tmp_path, PYTHONPATH=str(REPO))
    result = run(["python", "-m", "pipeline.train", "--prepared", "prepared", "--out", "model", "--checkpoints",
                  "ckpt"], tmp_path, PYTHONPATH=str(REPO))
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # two processes really joined the gloo group

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.info.status == "FINISHED"
    assert json.loads((tmp_path / "model" / "mlflow_run.json").read_text())["run_id"] == mlrun.info.run_id
    assert mlrun.data.params["trainer.devices"] == "2"
    # One value per epoch: rank 1 logged nothing of its own.
    assert len(client.get_metric_history(mlrun.info.run_id, "val/acc")) == FAST_PARAMS["train.max_epochs"]
    bundle = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert bundle["model_name"] == "cnn"
