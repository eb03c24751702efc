"""A team setup, for real: PostgreSQL, `mlflow server` over it, and `dvc repro` logging to that server.

Needs Debian's PostgreSQL (`apt-get install postgresql`: initdb and pg_ctl in /usr/lib/postgresql/<ver>/bin) and
the `psycopg2-binary` package (MLflow's PostgreSQL driver); skipped otherwise. PostgreSQL refuses to run as root, so
as root its binaries run as the `postgres` user in a temp folder that user owns. It listens on 127.0.0.1 only, on a
free port, with its unix socket in that folder; both servers are always stopped afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ALL_STAGES, FAST_PARAMS, mlflow_server, ran_stages, run

SERVER_START_TIMEOUT_S = 120  # `mlflow server` imports a lot and creates its tables in PostgreSQL on first start


@pytest.fixture
def tracking_server(postgres: str, tmp_path: Path):
    """`mlflow server` over the PostgreSQL store, proxying artifacts to tmp_path/artifacts; yields its base URL."""
    # The driver named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
    store = postgres.replace("postgresql://", "postgresql+psycopg2://", 1)
    with mlflow_server(store, tmp_path / "artifacts", tmp_path / "mlflow-server", SERVER_START_TIMEOUT_S) as base:
        yield base


@pytest.mark.slow
def test_pipeline_logs_to_a_tracking_server_on_postgresql(repo_copy, tracking_server, postgres, tmp_path):
    result = run(["dvc", "repro"], repo_copy, MLFLOW_TRACKING_URI=tracking_server)
    assert ran_stages(result.stdout) == ALL_STAGES

    # The run, read back through the server.
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None
    (mlrun,) = client.search_runs([experiment.experiment_id])
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["train.lr"] == "0.003"
    assert mlrun.data.params["train.max_epochs"] == str(FAST_PARAMS["train.max_epochs"])
    val_loss = client.get_metric_history(run_id, "val/loss")
    assert len(val_loss) == FAST_PARAMS["train.max_epochs"]  # one point per epoch, at distinct steps
    assert len({m.step for m in val_loss}) == len(val_loss)
    assert 0.5 < mlrun.data.metrics["test/accuracy"] <= 1
    assert "evaluation/confusion_matrix.png" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
    png = Path(client.download_artifacts(run_id, "evaluation/confusion_matrix.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # It really is in PostgreSQL, the artifacts in the server's destination, and nothing went to a local store.
    import psycopg2

    with psycopg2.connect(postgres) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchall() == [("FINISHED",)]
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val/loss'", (run_id,))
        assert cur.fetchone()[0] == FAST_PARAMS["train.max_epochs"]
    conn.close()
    assert list((tmp_path / "artifacts").rglob("confusion_matrix.png"))
    assert not (repo_copy / "mlflow.db").exists()
    assert not (repo_copy / "mlartifacts").exists()
