"""A team setup, for real: PostgreSQL, `mlflow server` over it, and `dvc repro` logging to that server.

Needs Debian's PostgreSQL (`apt-get install postgresql`: initdb and pg_ctl in /usr/lib/postgresql/<ver>/bin) and
the `psycopg2-binary` package (MLflow's PostgreSQL driver); skipped otherwise. PostgreSQL refuses to run as root, so
as root its binaries run as the `postgres` user in a temp folder that user owns. It listens on 127.0.0.1 only, on a
free port, with its unix socket in that folder; both servers are always stopped afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ALL_STAGES, FAST_PARAMS, free_port, log_tail, mlflow_server, ran_stages, run

SERVER_START_TIMEOUT_S = 120  # `mlflow server` imports a lot and creates its tables in PostgreSQL on first start
PG_START_TIMEOUT_S = 60


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin folder with initdb and pg_ctl, if installed."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    bins = [d / "bin" for d in root.iterdir() if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()]
    return max(
        bins, key=lambda p: float(p.parent.name) if p.parent.name.replace(".", "").isdigit() else 0, default=None
    )


def has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


PG_BIN = postgres_bin()
AS_ROOT = os.geteuid() == 0


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run its binaries as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if AS_ROOT else cmd


def pg(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        as_postgres(cmd),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, empty database `mlflow`; yields its libpq URI."""
    if PG_BIN is None:
        pytest.skip("PostgreSQL binaries missing (/usr/lib/postgresql/<ver>/bin/initdb): apt-get install postgresql")
    if AS_ROOT and (not has_user("postgres") or shutil.which("runuser") is None):
        pytest.skip("running as root needs the `postgres` user and runuser (apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")

    # Not under pytest's tmp_path: as root that is in /tmp/pytest-of-root (mode 700), which `postgres` cannot enter.
    base = Path(tempfile.mkdtemp(prefix="pg-test-"))
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    sockets.mkdir()
    if AS_ROOT:
        for path in (base, sockets):
            shutil.chown(path, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        pg(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        pg(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(PG_START_TIMEOUT_S),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off",
                "start",
            ],
            timeout=PG_START_TIMEOUT_S + 30,
        )
        started = True
        pg([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"])
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    except AssertionError as exc:
        pytest.fail(f"PostgreSQL did not start: {exc}\n--- log\n{log_tail(log)}")
    finally:
        if started:
            subprocess.run(
                as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                check=False,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


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
