"""Shared fixtures: a throw-away git + DVC copy of this repository, and a small-params helper."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
                             f"--- stderr\n{result.stderr[-4000:]}")
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


def dvc_lock_md5(repo: Path, out_path: str) -> str:
    """The md5 DVC recorded in dvc.lock for one stage output."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", []) if o["path"] == out_path)


# Small enough to train in seconds on 2 cores, large enough to learn the digits.
FAST_PARAMS = {"train.max_epochs": 3, "trainer.progress_bar": False, "model.cnn.channels": [8, 16],
               "model.cnn.hidden_dim": 32}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """This repository's tracked and new (not ignored) files, as a fresh git repo with DVC, fast params committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    dest = tmp_path / "repo"
    for name in filter(None, files):
        src = REPO / name
        if src.is_file() and not name.startswith(("dvc.lock", "outputs/eval/metrics.json",
                                                  "outputs/eval/confusion.json")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    edit_params(dest, FAST_PARAMS)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "copy"], dest)
    return dest
