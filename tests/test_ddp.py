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


@pytest.mark.slow
def test_two_nodes_with_torchrun_on_loopback(tmp_path):
    """trainer.num_nodes 2 as torchrun launches it on two machines, here two `--node-rank`s on 127.0.0.1."""
    import socket
    import subprocess
    import sys

    from tests.conftest import stage_env

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    edit_params(tmp_path, {**FAST_PARAMS, "trainer.num_nodes": 2, "trainer.devices": 1, "trainer.strategy": "ddp"})
    run(["python", "-m", "pipeline.prepare", "--out", "prepared"], tmp_path, PYTHONPATH=str(REPO))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]
    stage = ["-m", "pipeline.train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"]
    nodes = [subprocess.Popen([*torchrun, "--node-rank", str(rank), *stage], cwd=tmp_path,
                              env=stage_env(PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    assert "model saved" in outputs[0] and "model saved" not in outputs[1]  # only global rank zero writes

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["trainer.num_nodes"] == "2"
    assert len(client.get_metric_history(mlrun.info.run_id, "val/acc")) == FAST_PARAMS["train.max_epochs"]
    assert torch.load(tmp_path / "model" / "model.pt", weights_only=True)["model_name"] == "cnn"
