"""What the tests share, beside the fixtures in conftest.py: the repository, subprocess runs of the stages, params
edits, a throw-away git + DVC copy, an MLflow server, a PostgreSQL cluster, tiny trainings."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import DataParams, ModelParams

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def sqlite_uri(folder: Path | str) -> str:
    """The tracking URI of an MLflow SQLite store in `folder` (the file mlflow.db, as the stages name it)."""
    return f"sqlite:///{folder}/mlflow.db"


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running stages and DVC in a subprocess: this interpreter's bin first, no inherited store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stage_command(name: str, *args: str) -> list[str]:
    """`python -m pipeline.stages.<name> <args>` with this interpreter, as dvc.yaml runs a stage."""
    return [sys.executable, "-m", f"pipeline.stages.{name}", *args]


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=stage_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
            f"--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def edit_params(repo: Path, changes: dict[str, object]) -> None:
    """Set dotted keys in repo/params.yaml (comments are lost; fine for a throw-away copy)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


ALL_STAGES = ["validate", "prepare", "train", "evaluate"]  # dvc.yaml's stages, in the order dvc repro runs them


def ran_stages(dvc_output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` actually executed (not those it found up to date)."""
    return [line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage")]


def dvc_lock_md5(repo: Path, out_path: str) -> str:
    """The md5 DVC recorded in dvc.lock for one stage output."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == out_path)


# Small enough to train in seconds on 2 cores, large enough to learn the digits.
FAST_PARAMS = {
    "train.max_epochs": 3,
    "trainer.progress_bar": False,
    "model.cnn.channels": [8, 16],
    "model.cnn.hidden_dim": 32,
}


def make_repo_copy(dest: Path) -> Path:
    """This repository's tracked and new (not ignored) files, as a fresh git repo with DVC, fast params committed."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not name.startswith(
            ("dvc.lock", "outputs/eval/metrics.json", "outputs/eval/baseline.json", "outputs/eval/confusion.json")
        ):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    edit_params(dest, FAST_PARAMS)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "copy"], dest)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@contextmanager
def mlflow_server(store_uri: str, artifacts: Path, workdir: Path, start_timeout_s: float = 120) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port; yields its base URL once /health answers, always stops it."""
    workdir.mkdir(parents=True, exist_ok=True)  # its cwd: nothing it might create lands in a repository
    log = workdir / "mlflow-server.log"
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=stage_env(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true"),
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode} before answering /health\n{log_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {base}/health in {start_timeout_s} s\n{log_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:  # the server's own process group (start_new_session): uvicorn and its workers
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
            except ProcessLookupError:
                pass


def bare_trainer() -> Any:
    """A Lightning Trainer on the CPU with nothing beside the loop (no logger, bar, checkpoints or summary): for
    checking what a LightningModule computes and logs, on validation data."""
    import pytorch_lightning as pl

    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def train_tiny(root: Path, data: DataParams, model: ModelParams, max_epochs: int = 2) -> tuple[Path, Path]:
    """Prepare `data` and train `model` on it for a few epochs, in-process, into root/prepared and root/model."""
    from pipeline.artifacts import MODEL_FILE
    from pipeline.config import MlflowParams, Params, TrainerParams, TrainParams
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import fit

    prepared, model_dir = root / "prepared", root / "model"
    prepare(data, prepared)
    params = Params(
        data=data,
        model=model,
        train=TrainParams(max_epochs=max_epochs, batch_size=32, lr=0.01, early_stopping_patience=None),
        trainer=TrainerParams(progress_bar=False, log_every_n_steps=1),
        mlflow=MlflowParams(tracking_uri=sqlite_uri(root.parent), experiment_name="predict-tests"),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # artifacts go beside the store's root, inside the temporary folder
        mp.delenv("DVC_ROOT", raising=False)
        run_id = fit(params, prepared, model_dir, root / "checkpoints")
    assert run_id and (model_dir / MODEL_FILE).is_file()
    return prepared, model_dir


def split_index(prepared: Path, split: str = "test") -> np.ndarray:
    from pipeline.data import read_split

    return read_split(prepared, split)["index"]


def animals_table(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """3 classes that the numbers and the colour both hint at; a few missing values of each type."""
    rng = np.random.default_rng(seed)
    label = np.repeat(["bird", "cat", "dog"], n // 3)
    code = np.repeat(np.arange(3), n // 3)
    frame = pd.DataFrame(
        {
            "weight": (rng.normal(0, 1, n) + 2 * code).round(3),
            "legs": np.where(code == 0, 2, 4) + rng.integers(0, 2, n),
            "colour": np.where(
                rng.random(n) < 0.7, np.array(["blue", "grey", "brown"])[code], rng.choice(["blue", "grey", "brown"], n)
            ).astype(object),
            "label": label,
        }
    )
    frame.loc[rng.choice(n, 8, replace=False), "weight"] = np.nan
    frame.loc[rng.choice(n, 8, replace=False), "colour"] = None
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def predicted_indices(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    return table["predicted"].map({name: i for i, name in enumerate(class_names)}).to_numpy()


def probabilities(table: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    return table[[f"prob_{name}" for name in class_names]].to_numpy()


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


@contextmanager
def postgres_cluster(fsync: bool = False) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, empty database `mlflow`; yields its libpq URI.
    fsync off (tests: nothing to keep, faster); on for a benchmark, where commit latency is part of the cost."""
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
                f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}" + ("" if fsync else " -c fsync=off"),
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
