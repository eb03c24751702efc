"""A training killed by SIGINT or SIGKILL resumes from its last checkpoint and ends exactly where an uninterrupted
run ends: same weights, same per-epoch metrics, one MLflow run that records which run it continued."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import load_params
from pipeline.stages.train import MODEL_FILE, RESUMED_EPOCHS_TAG, RESUMED_FROM_TAG
from pipeline.training import checkpoints
from tests.helpers import REPO, edit_params, run, sqlite_uri, stage_command

# Dropout and a shuffled loader draw from the global random generators: resuming must restore them too. Enough
# epochs, and small enough batches (a few tenths of a second an epoch), that the kill lands well before the end even
# when the watching test is slow to notice the first checkpoint on a loaded machine; no early stopping, so both runs
# take every epoch.
RESUMABLE = {
    "model.name": "mlp",
    "model.mlp.hidden_dims": [64],
    "model.mlp.dropout": 0.2,
    "train.max_epochs": 8,
    "train.batch_size": 16,
    "train.early_stopping_patience": None,
    "train.scheduler": "cosine",
    "train.ema_decay": 0.9,  # a resumed run must also carry on the moving average of the weights, not restart it
    "trainer.progress_bar": False,
}
KILL_TIMEOUT_S = 180


def stage_environ(cwd: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PIPELINE_"))}
    environ["PYTHONPATH"] = str(REPO)
    environ["MLFLOW_TRACKING_URI"] = sqlite_uri(cwd)
    return environ


def train_command(checkpoint_dir: str, model_dir: str) -> list[str]:
    return stage_command(
        "train",
        "--prepared",
        "prepared",
        "--out",
        model_dir,
        "--checkpoints",
        checkpoint_dir,
        "--history",
        f"{model_dir}/history.csv",
    )


def fully_written(checkpoint: Path) -> bool:
    """Lightning writes a checkpoint in place: a kill while it writes tears it (and training then starts over)."""
    try:
        checkpoints.checkpoint_progress(checkpoint)
    except Exception:
        return False
    return True


def interruptible() -> None:
    """SIGINT as a terminal delivers it: a test run in the background (`make test &`, some CI runners) inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl+C could not be simulated."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_after_first_checkpoint(
    cmd: list[str], cwd: Path, env: dict[str, str], sig: signal.Signals, checkpoint_dir: Path
) -> subprocess.CompletedProcess:
    """Start `cmd` in its own process group and send `sig` to the whole group (as Ctrl+C or a scheduler would) once
    this attempt has written its first checkpoint completely.

    The group is stopped (SIGSTOP) while the checkpoint is read: on a loaded machine the few remaining epochs can
    otherwise finish before the signal is sent, and the kill would land on a process that has already exited."""
    log = cwd / f"killed-{sig.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=interruptible,
        )
    started, deadline = time.time(), time.monotonic() + KILL_TIMEOUT_S
    last = checkpoint_dir / checkpoints.LAST_CHECKPOINT
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no checkpoint before exit/timeout (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
            if last.is_file() and last.stat().st_mtime >= started:
                os.killpg(proc.pid, signal.SIGSTOP)
                if fully_written(last):
                    break
                os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
    except BaseException:  # a failure or an interrupted test: leave no stopped or running process group behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        raise
    epochs_done, _ = checkpoints.checkpoint_progress(last)
    os.killpg(proc.pid, sig)
    os.killpg(proc.pid, signal.SIGCONT)
    proc.wait(timeout=60)
    if epochs_done >= RESUMABLE["train.max_epochs"]:
        pytest.fail(
            f"the first checkpoint was noticed only after the last epoch ({epochs_done}): nothing was left to "
            "interrupt. The machine is too loaded for this test's timing."
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read_text(), "")


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits_prepared: Path) -> Path:
    root = tmp_path_factory.mktemp("resume")
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    edit_params(root, RESUMABLE)
    shutil.copytree(digits_prepared, root / "prepared")
    return root


def variant_of(workdir: Path, name: str, changes: dict[str, object]) -> Path:
    """A folder beside `workdir` with the same prepared data and its params.yaml with `changes` applied."""
    root = workdir / name
    root.mkdir()
    shutil.copytree(workdir / "prepared", root / "prepared")
    shutil.copyfile(workdir / "params.yaml", root / "params.yaml")
    edit_params(root, changes)
    return root


@pytest.fixture(scope="module")
def uninterrupted(workdir: Path) -> Path:
    run(
        train_command("ckpt-reference", "reference"),
        workdir,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=sqlite_uri(workdir),
    )
    return workdir / "reference"


# Slow: each case trains three times in subprocesses (with the module's uninterrupted reference); the default
# suite keeps the resume logic's unit tests below, and the slow suite (in CI) these end-to-end runs.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_training_resumes_and_matches_an_uninterrupted_run(workdir, uninterrupted, sig) -> None:
    env, ckpt, model_dir = stage_environ(workdir), f"ckpt-{sig.name}", f"model-{sig.name}"
    killed = kill_after_first_checkpoint(train_command(ckpt, model_dir), workdir, env, sig, workdir / ckpt)
    assert killed.returncode != 0
    assert "Traceback" not in killed.stdout
    assert not (workdir / model_dir / MODEL_FILE).exists()  # no model from a half-done training

    resumed = subprocess.run(
        train_command(ckpt, model_dir), cwd=workdir, env=env, capture_output=True, text=True, timeout=KILL_TIMEOUT_S
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "train: resuming after epoch" in resumed.stdout

    expected, got = weights(uninterrupted), weights(workdir / model_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    assert (workdir / model_dir / "history.csv").read_text() == (uninterrupted / "history.csv").read_text()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("digits").experiment_id])}
    reference_id = yaml.safe_load((uninterrupted / "mlflow_run.json").read_text())["run_id"]
    resumed_id = yaml.safe_load((workdir / model_dir / "mlflow_run.json").read_text())["run_id"]
    killed_id = runs[resumed_id].data.tags[RESUMED_FROM_TAG]
    # The killed run does not stay RUNNING: SIGINT ends it on the spot, SIGKILL leaves it to the next attempt.
    assert runs[killed_id].info.status == "KILLED"
    assert runs[resumed_id].info.status == "FINISHED"
    assert 1 <= int(runs[resumed_id].data.tags[RESUMED_EPOCHS_TAG]) < RESUMABLE["train.max_epochs"]
    # The resumed run carries the whole curve: the killed run's epochs, then its own, as one uninterrupted run logs.
    for key in ("val/loss", "val/accuracy", "train/loss", "lr"):
        reference, continued = metric_history(client, reference_id, key), metric_history(client, resumed_id, key)
        assert [s for s, _ in continued] == [s for s, _ in reference], key
        assert [v for _, v in continued] == pytest.approx([v for _, v in reference], rel=1e-6), key


@pytest.mark.slow
def test_a_changed_param_starts_over_instead_of_resuming(workdir, uninterrupted) -> None:
    """A checkpoint of other params is never continued: the folder is emptied and training starts from epoch 0."""
    other = variant_of(workdir, "other-params", {"train.lr": 0.002, "train.max_epochs": 2})
    ckpt = other / "ckpt"  # the reference's checkpoints, made to look like an attempt killed at its last epoch
    shutil.copytree(workdir / "ckpt-reference", ckpt)
    record = json.loads((ckpt / checkpoints.RESUME_FILE).read_text())
    checkpoints.record_attempt(ckpt, record["fingerprint"], record["run_id"], record["tracking_uri"], finished=False)
    (ckpt / "stale.txt").write_text("left by the interrupted attempt")

    result = run(
        train_command(ckpt.name, "model"),
        other,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI=sqlite_uri(other),
    )
    assert "train: resuming" not in result.stdout
    assert f"not resuming the interrupted training in {ckpt.name}: its params" in result.stdout
    assert not (ckpt / "stale.txt").exists()
    assert (other / "model" / "history.csv").read_text().count("\n") == 1 + 2  # header, then every epoch from 0


def test_fingerprint_ignores_display_keys_and_sees_everything_that_shapes_training() -> None:
    base = load_params(REPO / "params.yaml")
    reference = checkpoints.fingerprint(base, "digest")
    assert (
        checkpoints.fingerprint(
            load_params(
                REPO / "params.yaml",
                overrides=[
                    "trainer.progress_bar=false",
                    "trainer.log_every_n_steps=1",
                    "mlflow.run_name=x",
                    "evaluate.batch_size=7",
                    "data.seed=1",
                    "trainer.num_workers=0",
                ],
            ),
            "digest",
        )
        == reference
    )  # data.* reaches training only through the data digest
    for override in ("train.lr=0.5", "train.max_epochs=3", "model.mlp.dropout=0.3", "trainer.precision=64-true"):
        assert (
            checkpoints.fingerprint(load_params(REPO / "params.yaml", overrides=[override]), "digest") != reference
        ), override
    assert checkpoints.fingerprint(base, "other data") != reference


def test_training_code_in_the_fingerprint_is_the_train_stage_code_dvc_tracks() -> None:
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert set(checkpoints.TRAINING_CODE) == {d for d in deps if not d.startswith("${")}


@pytest.mark.parametrize(
    "record",
    [
        None,
        "{not json",
        {"fingerprint": "abc", "run_id": "r", "tracking_uri": "uri", "finished": True},
        {"fingerprint": "other", "run_id": "r", "tracking_uri": "uri", "finished": False},
        {"fingerprint": "abc", "run_id": "r", "tracking_uri": "another store", "finished": False},
    ],
    ids=["no record", "cut-short record", "finished attempt", "other fingerprint", "other tracking store"],
)
def test_only_an_unfinished_attempt_with_the_same_fingerprint_and_store_is_resumed(tmp_path, record) -> None:
    last = tmp_path / checkpoints.LAST_CHECKPOINT
    torch.save({"epoch": 2, "global_step": 30}, last)  # what a Lightning checkpoint says of its progress
    if isinstance(record, dict):
        checkpoints.record_attempt(
            tmp_path, record["fingerprint"], record["run_id"], record["tracking_uri"], record["finished"]
        )
    elif record is not None:
        (tmp_path / checkpoints.RESUME_FILE).write_text(record)
    assert checkpoints.find_resume_point(tmp_path, "abc", "uri") is None
    checkpoints.record_attempt(tmp_path, "abc", "run", "uri")
    assert checkpoints.find_resume_point(tmp_path, "abc", "uri") == checkpoints.ResumePoint(last, "run", "uri", 3, 30)
    last.write_bytes(b"cut short")  # a checkpoint torn by the kill is not resumed either
    assert checkpoints.find_resume_point(tmp_path, "abc", "uri") is None


def test_a_run_killed_before_its_first_checkpoint_ends_killed_and_training_starts_over(
    tmp_path, mlflow_store: str
) -> None:
    uri = mlflow_store
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id  # RUNNING, as a SIGKILL leaves it
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    checkpoints.record_attempt(ckpt, "abc", run_id, uri)  # no last.ckpt: killed during the first epoch
    assert checkpoints.resume_or_start_over(ckpt, "abc", uri) is None
    assert client.get_run(run_id).info.status == "KILLED"
    assert ckpt.is_dir() and not any(ckpt.iterdir())


@pytest.mark.slow
def test_a_resumed_final_fit_keeps_the_cross_validation_of_the_interrupted_run(workdir) -> None:
    root = variant_of(workdir, "cv", {"train.cv_folds": 2})
    env, cmd = stage_environ(root), [*train_command("ckpt", "model"), "--cv-metrics", "model/cv_metrics.json"]
    # The folds write under ckpt/cv/; ckpt/last.ckpt appears with the final fit's first epoch.
    killed = kill_after_first_checkpoint(cmd, root, env, signal.SIGKILL, root / "ckpt")
    assert killed.returncode != 0

    resumed = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "train: resuming after epoch" in resumed.stdout
    assert "cross-validation:" not in resumed.stdout  # the folds are not trained again

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    resumed_id = json.loads((root / "model" / "mlflow_run.json").read_text())["run_id"]
    final = next(r for r in runs if r.info.run_id == resumed_id)
    killed_id = final.data.tags[RESUMED_FROM_TAG]
    folds = [r for r in runs if r.data.tags.get("cv.fold") is not None]
    assert len(folds) == 2 and all(r.data.tags["mlflow.parentRunId"] == resumed_id for r in folds)
    assert next(r for r in runs if r.info.run_id == killed_id).info.status == "KILLED"
    summary = json.loads((root / "model" / "cv_metrics.json").read_text())
    assert summary["cv/folds"] == 2
    assert final.data.metrics["cv/val/accuracy_mean"] == pytest.approx(summary["cv/val/accuracy_mean"])


@pytest.mark.slow
def test_ddp_training_resumes_on_every_process_and_matches_an_uninterrupted_ddp_run(workdir) -> None:
    """Each of the 2 DDP processes decides on its own to resume (rank zero alone empties or records); they agree."""
    root = variant_of(workdir, "ddp", {"trainer.devices": 2, "trainer.strategy": "ddp"})
    env = stage_environ(root)
    reference = subprocess.run(
        train_command("ckpt-reference", "reference"),
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=KILL_TIMEOUT_S,
    )
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]

    killed = kill_after_first_checkpoint(train_command("ckpt", "model"), root, env, signal.SIGKILL, root / "ckpt")
    assert killed.returncode != 0
    resumed = subprocess.run(
        train_command("ckpt", "model"), cwd=root, env=env, capture_output=True, text=True, timeout=KILL_TIMEOUT_S
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "MEMBER: 2/2" in resumed.stdout + resumed.stderr
    # Said once, by global rank zero (the console's rank-zero filter); that both processes resumed from the same
    # checkpoint shows in the weights, equal to the uninterrupted run's.
    assert resumed.stdout.count("train: resuming after epoch") == 1

    expected, got = weights(root / "reference"), weights(root / "model")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("digits").experiment_id
    assert sorted(r.info.status for r in client.search_runs([experiment])) == ["FINISHED", "FINISHED", "KILLED"]


@pytest.mark.slow
def test_dvc_repro_after_sigkill_resumes_and_reaches_the_uninterrupted_result(repo_copy) -> None:
    edit_params(repo_copy, RESUMABLE)
    run(["git", "commit", "-qam", "resumable params"], repo_copy)
    run(["dvc", "repro"], repo_copy)
    reference = {
        name: (repo_copy / name).read_bytes() for name in ("outputs/train_history.csv", "outputs/eval/metrics.json")
    }
    reference_weights = weights(repo_copy / "outputs/model")

    ckpt = repo_copy / "outputs/checkpoints"
    env = {**stage_environ(repo_copy), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH")
    env.pop("MLFLOW_TRACKING_URI")  # the stage's own default: mlflow.db at the repository root
    killed = kill_after_first_checkpoint(["dvc", "repro", "--force", "train"], repo_copy, env, signal.SIGKILL, ckpt)
    assert killed.returncode != 0

    resumed = run(["dvc", "repro"], repo_copy)
    assert "train: resuming after epoch" in resumed.stdout
    for name, content in reference.items():
        assert (repo_copy / name).read_bytes() == content, name
    got = weights(repo_copy / "outputs/model")
    for name in reference_weights:
        torch.testing.assert_close(got[name], reference_weights[name], rtol=1e-6, atol=1e-7, msg=name)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo_copy).stdout

    client = MlflowClient(sqlite_uri(repo_copy))
    statuses = sorted(
        r.info.status for r in client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    )
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]  # reference, resumed, killed; none left RUNNING


def test_an_interrupt_whose_shutdown_fails_is_still_an_interrupt(tmp_path: Path) -> None:
    """Ctrl+C during an MLflow write leaves SQLite locked and Lightning's shutdown raises "database is locked": the
    stage still ends as interrupted (no traceback), and leaves the run for the next attempt to end KILLED."""
    from mlflow.exceptions import MlflowException
    from pytorch_lightning.loggers import MLFlowLogger

    from pipeline.stages.train import ending_run

    logger = MLFlowLogger(experiment_name="interrupts", tracking_uri=sqlite_uri(tmp_path))
    client = logger.experiment

    with pytest.raises(KeyboardInterrupt), ending_run(logger, tmp_path):  # noqa: PT012
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise MlflowException("(sqlite3.OperationalError) database is locked") from None
    assert client.get_run(logger.run_id).info.status == "RUNNING"  # untouched: the store may still be locked

    with pytest.raises(KeyboardInterrupt), ending_run(logger, tmp_path):
        raise KeyboardInterrupt
    assert client.get_run(logger.run_id).info.status == "KILLED"

    with pytest.raises(MlflowException), ending_run(logger, tmp_path):  # not an interrupt: as raised
        raise MlflowException("some other failure")
    assert client.get_run(logger.run_id).info.status == "FAILED"

    with ending_run(logger, tmp_path):  # the block completed: the run ends FINISHED, whatever it was before
        pass
    assert client.get_run(logger.run_id).info.status == "FINISHED"
