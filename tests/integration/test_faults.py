"""Faults while a stage runs: a checkpoint write that fails, a checkpoint found cut short, evaluate killed while it
holds the run, the tracking server gone mid-training. Nothing already produced is lost, every run ends in a final
state, and the user reads one true message."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pipeline.training import checkpoints
from tests.helpers import REPO, edit_params, mlflow_server, run, sqlite_uri, stage_command, stage_env

TINY = {"model.name": "mlp", "model.mlp.hidden_dims": [16], "train.max_epochs": 1, "trainer.progress_bar": False}
SIGNAL_TIMEOUT_S = 180


def write_fails_midway(folder: Path) -> subprocess.CompletedProcess:
    """Save a checkpoint, then a bigger one over it in a process whose file size limit (RLIMIT_FSIZE) stops the
    write part way, as a full disk does: the kernel refuses the write that crosses the limit."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from pipeline.training.checkpoints import AtomicCheckpointIO
        from pipeline.errors import PipelineError
        io, path = AtomicCheckpointIO(), {str(folder / checkpoints.LAST_CHECKPOINT)!r}
        io.save_checkpoint({{"epoch": 0, "global_step": 5, "w": torch.zeros(10)}}, path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the limit kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            io.save_checkpoint({{"epoch": 1, "global_step": 10, "w": torch.zeros(1_000_000)}}, path)
        except PipelineError as exc:
            print("write failed:", exc)
    """)
    return run([sys.executable, "-c", script], folder, PYTHONPATH=str(REPO))


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    result = write_fails_midway(tmp_path)
    assert "write failed" in result.stdout, result.stdout + result.stderr
    assert "could not be written (File too large); the previous one is kept" in result.stdout
    assert checkpoints.checkpoint_progress(tmp_path / checkpoints.LAST_CHECKPOINT) == (1, 5)  # the previous one
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.LAST_CHECKPOINT]  # no temporary left


def fake_checkpoint(path: Path, epoch: int) -> None:
    torch.save({"epoch": epoch, "global_step": 10 * (epoch + 1)}, path)  # what resuming reads of a checkpoint


# name: (last.ckpt, best.ckpt, fingerprint of this run, store of this run) -> resumed from, message
RESUME_CASES = {
    "last cut short, best readable": (
        b"cut",
        1,
        "fp",
        "same",
        checkpoints.BEST_CHECKPOINT,
        "last.ckpt cannot be read (cut short while being written",
    ),
    "both cut short": (b"cut", b"cut", "fp", "same", None, "its checkpoint(s) last.ckpt and best.ckpt cannot be read"),
    "params changed": (2, 1, "other", "same", None, "its params, prepared data or training code differ"),
    "store changed": (2, 1, "fp", "other", None, "it was tracked in another MLflow store"),
    "nothing wrong": (2, 1, "fp", "same", checkpoints.LAST_CHECKPOINT, "resuming after epoch 3"),
}


@pytest.mark.parametrize("case", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_the_resume_decision_says_its_true_reason(tmp_path: Path, capsys, case) -> None:
    last, best, fingerprint, store, resumed_from, message = case
    ckpt, uri = tmp_path / "ckpt", sqlite_uri(tmp_path)
    ckpt.mkdir()
    for name, content in ((checkpoints.LAST_CHECKPOINT, last), (checkpoints.BEST_CHECKPOINT, best)):
        if isinstance(content, bytes):
            (ckpt / name).write_bytes(content)  # what a full disk left of it
        else:
            fake_checkpoint(ckpt / name, content)
    checkpoints.record_attempt(ckpt, "fp", "no-such-run", uri)
    this_uri = uri if store == "same" else f"sqlite:///{tmp_path}/other.db"

    resume = checkpoints.resume_or_start_over(ckpt, fingerprint, this_uri)

    said = capsys.readouterr().out
    assert message in said
    if resumed_from:
        assert resume is not None and resume.checkpoint == ckpt / resumed_from
        assert (ckpt / checkpoints.BEST_CHECKPOINT).is_file()  # kept: resumed from, or a later epoch's
    else:
        assert resume is None and "Starting over" in said
    if message.startswith("its checkpoint(s)"):
        assert "params" not in said


@pytest.mark.slow
def test_a_training_whose_last_checkpoint_was_cut_short_resumes_from_the_best(
    tmp_path: Path, digits_prepared: Path
) -> None:
    """The issue's sequence: a full disk cut last.ckpt short (as Lightning's cross-file-system copy did), and the
    next run discarded the valid best.ckpt saying the params differed."""
    root = tmp_path / "work"
    root.mkdir()
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    edit_params(root, {**TINY, "train.max_epochs": 3, "train.early_stopping_patience": None})
    shutil.copytree(digits_prepared, root / "prepared")
    train(root)
    ckpt = root / "ckpt"
    attempt = json.loads((ckpt / checkpoints.RESUME_FILE).read_text())
    checkpoints.record_attempt(ckpt, attempt["fingerprint"], attempt["run_id"], sqlite_uri(root))
    last = ckpt / checkpoints.LAST_CHECKPOINT
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])

    result = run(
        stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"),
        root,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=sqlite_uri(root),
    )

    assert "last.ckpt cannot be read" in result.stdout and "resuming from" in result.stdout
    assert "params, prepared data" not in result.stdout
    best = ckpt / checkpoints.BEST_CHECKPOINT
    assert checkpoints.checkpoint_progress(best)[0] >= 1  # kept, and resumed from
    assert json.loads((ckpt / checkpoints.RESUME_FILE).read_text())["finished"]
    assert (root / "model" / "model.pt").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_prepared: Path) -> Path:
    """A folder with prepared digits, a tiny trained model and its finished MLflow run (sqlite store inside)."""
    root = tmp_path_factory.mktemp("faults")
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    edit_params(root, TINY)
    shutil.copytree(digits_prepared, root / "prepared")
    train(root)
    return root


def stage_environ(root: Path) -> dict[str, str]:
    return stage_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=sqlite_uri(root))


def train(root: Path) -> None:
    run(
        stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"),
        root,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=sqlite_uri(root),
    )


def run_status(root: Path, run_id: str) -> str:
    """Read straight from the store's table: a new MlflowClient per poll takes a second on a loaded machine, long
    enough for evaluate to finish unseen."""
    with contextlib.closing(sqlite3.connect(root / "mlflow.db", timeout=30)) as db:
        return db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]


def interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test run in the background inherits SIGINT ignored


def signal_evaluate_while_it_holds_the_run(root: Path, run_id: str, sig: signal.Signals) -> int:
    """Start evaluate; once it has re-opened train's run (RUNNING), stop it, and if it still holds the run, send
    `sig` and let it go on; its exit status. An evaluate that finished meanwhile is run again (up to 3 times)."""
    cmd = stage_command("evaluate", "--prepared", "prepared", "--model", "model", "--out", "eval")
    log = root / f"evaluate-{sig.name}.log"
    for _ in range(3):
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=root,
                env=stage_environ(root),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=interruptible,
            )
        deadline = time.monotonic() + SIGNAL_TIMEOUT_S
        try:
            while run_status(root, run_id) != "RUNNING":
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"evaluate never held the run (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGSTOP)  # a loaded machine could otherwise finish before the signal lands
            if run_status(root, run_id) == "RUNNING":
                os.killpg(proc.pid, sig)
                os.killpg(proc.pid, signal.SIGCONT)
                return proc.wait(timeout=SIGNAL_TIMEOUT_S)
            os.killpg(proc.pid, signal.SIGCONT)
            proc.wait(timeout=SIGNAL_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
    pytest.fail("evaluate finished each time before it could be signalled: the machine is too loaded for this test")


# signal to evaluate -> its exit status, the run's status after it; SIGKILL last: it retrains.
EVALUATE_SIGNALS = {
    "SIGINT": (signal.SIGINT, 130, "KILLED"),
    "SIGTERM": (signal.SIGTERM, 130, "KILLED"),
    "SIGKILL": (signal.SIGKILL, -signal.SIGKILL, "RUNNING"),
}


@pytest.mark.parametrize(
    "case",
    # SIGKILL retrains (the next training is what ends the run): minutes of the default suite, so in the slow one
    [pytest.param(*[v], marks=[pytest.mark.slow] if k == "SIGKILL" else []) for k, v in EVALUATE_SIGNALS.items()],
    ids=EVALUATE_SIGNALS.keys(),
)
def test_evaluate_killed_never_leaves_its_run_running(trained: Path, case) -> None:
    sig, exit_status, status = case
    run_id = json.loads((trained / "model" / "mlflow_run.json").read_text())["run_id"]

    assert signal_evaluate_while_it_holds_the_run(trained, run_id, sig) == exit_status
    assert run_status(trained, run_id) == status
    if status == "RUNNING":  # nothing could mark it: the next training does, as `dvc repro` retrains
        train(trained)
        assert run_status(trained, run_id) == "KILLED"
        new_id = json.loads((trained / "model" / "mlflow_run.json").read_text())["run_id"]
        assert new_id != run_id and run_status(trained, new_id) == "FINISHED"


@pytest.mark.slow
def test_tracking_server_gone_during_training_ends_with_one_message_in_bounded_time(
    tmp_path: Path, digits_prepared: Path
) -> None:
    root = tmp_path / "work"
    root.mkdir()
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    max_unreachable_s = 10
    edit_params(
        root,
        {
            **TINY,
            "train.max_epochs": 300,
            "train.batch_size": 8,
            "train.early_stopping_patience": None,
            "mlflow.max_unreachable_s": max_unreachable_s,
        },
    )
    shutil.copytree(digits_prepared, root / "prepared")
    last = root / "ckpt" / checkpoints.LAST_CHECKPOINT
    with contextlib.ExitStack() as server:
        uri = server.enter_context(
            mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path / "server")
        )
        log = root / "train.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                stage_command("train", "--prepared", "prepared", "--out", "model", "--checkpoints", "ckpt"),
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=stage_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=uri),
            )
        try:
            deadline = time.monotonic() + SIGNAL_TIMEOUT_S
            while not (last.is_file() and checkpoints.checkpoint_progress(last)[0] >= 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no checkpoint before exit/timeout (exit {proc.returncode}):\n{log.read_text()}")
                time.sleep(0.1)
            server.close()  # the server stops; training goes on logging to it
            stopped = time.monotonic()
            exit_status = proc.wait(timeout=SIGNAL_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    waited, said = time.monotonic() - stopped, log.read_text()

    assert exit_status == 2, said[-3000:]
    assert f"MLflow tracking server {uri} does not answer; retrying for up to" in said
    assert "stopped answering during training" in said and "mlflow.max_unreachable_s" in said
    assert "Traceback" not in said
    assert waited < max_unreachable_s + 60, f"{waited:.0f} s after the server stopped"  # loaded-machine margin
    assert checkpoints.checkpoint_progress(last)[0] >= 2  # kept for the next attempt to resume from
