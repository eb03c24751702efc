"""Shared fixtures: a throw-away git + DVC copy of this repository, and a small-params helper."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running stages and DVC in a subprocess: this interpreter's bin first, no inherited store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return make_repo_copy(tmp_path / "repo")


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
