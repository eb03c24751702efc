"""Sharing results through a DVC remote: push from one clone, pull into a fresh one, and nothing needs to rerun."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.helpers import ALL_STAGES, ran_stages, run

GIT_COMMIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm"]


@pytest.mark.slow
def test_pull_from_a_remote_makes_repro_a_no_op(repo_copy, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "localremote", str(remote)], repo_copy)
    run(["git", "add", ".dvc/config"], repo_copy)
    run([*GIT_COMMIT, "a local DVC remote"], repo_copy)

    first = run(["dvc", "repro"], repo_copy)
    assert ran_stages(first.stdout) == ALL_STAGES
    # dvc.lock, the .gitignore files DVC wrote, and the outputs kept in git (cache: false: metrics, plots data).
    run(["git", "add", "-A"], repo_copy)
    committed = run(["git", "diff", "--cached", "--name-only"], repo_copy).stdout.split()
    assert {"dvc.lock", "outputs/eval/metrics.json", "outputs/train_history.csv"} <= set(committed)
    assert not any(name.startswith(("data/prepared/", "outputs/model/")) for name in committed)  # in DVC's cache
    run([*GIT_COMMIT, "pipeline results"], repo_copy)
    assert run(["git", "status", "--porcelain"], repo_copy).stdout == ""
    run(["dvc", "push"], repo_copy)
    assert any(p.is_file() for p in remote.rglob("*"))

    # A fresh clone: git has the code, dvc.lock and small outputs; DVC's outputs come from the remote.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo_copy), str(clone)], tmp_path)
    assert not (clone / "outputs/model/model.pt").exists()
    run(["dvc", "pull"], clone)
    assert (clone / "outputs/model/model.pt").is_file()

    # Python's bytecode caches, which any import of the code writes (a test run, an editor), change no stage.
    run([sys.executable, "-m", "compileall", "-q", "pipeline", "models"], clone)
    assert list((clone / "pipeline" / "data").glob("__pycache__/*.pyc"))
    status = run(["dvc", "status", "--json"], clone)
    assert json.loads(status.stdout) == {}, status.stdout
    again = run(["dvc", "repro"], clone)
    assert ran_stages(again.stdout) == [], again.stdout
    assert "Running stage" not in again.stdout + again.stderr
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    assert run(["git", "status", "--porcelain"], clone).stdout == ""  # repro changed nothing git tracks

    state = torch.load(clone / "outputs/model/model.pt", map_location="cpu", weights_only=True)
    assert state  # a non-empty checkpoint of plain tensors/containers
    assert (clone / "outputs/model/model.pt").read_bytes() == (repo_copy / "outputs/model/model.pt").read_bytes()
