"""DVC experiments and MLflow runs: queued sweeps with parallel workers, one complete run per experiment, and the
compare command's table of them."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import HEADLINE_METRICS
from tests.helpers import run, sqlite_uri, stage_command


def wait_for_queue(repo, timeout_s: int = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")


def exp_metrics(repo) -> dict[str, dict]:
    """{experiment name: {'params': ..., 'accuracy': ...}} from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for revision in exp["revs"]:
                data = revision["data"]
                metrics = data["metrics"]["outputs/eval/metrics.json"]["data"]
                found[revision["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "accuracy": metrics["accuracy"],
                }
    return found


@pytest.mark.slow
def test_queued_sweep_two_workers_sqlite(repo_copy):
    run(["dvc", "exp", "run", "--queue", "-S", "model.name=mlp,cnn", "-S", "train.lr=0.001,0.01"], repo_copy)
    run(["dvc", "queue", "start", "-j", "2"], repo_copy)
    status = wait_for_queue(repo_copy)
    assert "Failed" not in status, status

    exps = exp_metrics(repo_copy)
    assert len(exps) == 4, exps
    client = MlflowClient(sqlite_uri(repo_copy))
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert len(runs) == 4
    by_exp = {r.data.tags["dvc.exp_name"]: r for r in runs}
    assert set(by_exp) == set(exps)
    combos = set()
    for name, exp in exps.items():
        mlrun = by_exp[name]
        assert mlrun.info.status == "FINISHED"
        # Named after its DVC experiment, its model and what differs from params.yaml (train.lr 0.003 there).
        swept = exp["params"]["train"]
        assert mlrun.info.run_name == f"{name} {exp['params']['model']['name']} lr={swept['lr']:g}"
        assert mlrun.data.tags["dvc.baseline_rev"] == run(["git", "rev-parse", "HEAD"], repo_copy).stdout.strip()
        assert mlrun.data.params["model.name"] == exp["params"]["model"]["name"]
        assert float(mlrun.data.params["train.lr"]) == exp["params"]["train"]["lr"]
        assert mlrun.data.metrics["test/accuracy"] == pytest.approx(exp["accuracy"])
        assert len(client.get_metric_history(mlrun.info.run_id, "val/loss")) >= 1
        combos.add((mlrun.data.params["model.name"], float(mlrun.data.params["train.lr"])))
    assert combos == {("mlp", 0.001), ("mlp", 0.01), ("cnn", 0.001), ("cnn", 0.01)}

    # The compare command: every experiment, exactly the swept params and the headline metrics, in 120 columns.
    table = run(stage_command("compare"), repo_copy).stdout.splitlines()
    print("\n".join(table))
    assert max(map(len, table)) <= 120, table
    assert table[0].split() == ["experiment", "state", "model.name", "train.lr", *HEADLINE_METRICS]
    rows = {line.split()[0]: line.split() for line in table[1:-1]}
    assert set(rows) == set(exps) | {"workspace", "main"}
    for name, exp in exps.items():
        assert rows[name][2:4] == [exp["params"]["model"]["name"], str(exp["params"]["train"]["lr"])]
        assert float(rows[name][4]) == pytest.approx(exp["accuracy"], abs=5e-5)
    # Best first (train.monitor val/loss: by f1_macro); the baseline, never reproduced here, has no metrics: last.
    f1 = [line.split()[5] for line in table[1:-1]]
    scored = [float(v) for v in f1 if v != "-"]
    assert len(scored) == 4 and f1[:4] == [f"{v:.4f}" for v in sorted(scored, reverse=True)], table
