"""Where MLflow runs go, what they are tagged with, and how train hands its run to evaluate.

The default store is MLflow's embedded SQLite database at the repository root. "Root" is `$DVC_ROOT` when DVC runs
the stage (a queued or `--temp` experiment runs in `.dvc/tmp/exps/...`, which DVC deletes afterwards, but points
DVC_ROOT at the main repository), else the working directory, where stages always run. MLflow is imported only
inside the functions that talk to the store, so validation stays fast.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pipeline import console
from pipeline.artifacts import RUN_FILE
from pipeline.config import PARAMS_FILE, MlflowParams, Params, params_from_dict, to_flat_dict, used_params
from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.uris import masked_uri

log = console.get_logger(__name__)

STORE_FILE = "mlflow.db"
SQLITE_HEADER = b"SQLite format 3\x00"  # the first bytes of every SQLite database file
ARTIFACT_DIR = "mlartifacts"
REACHABILITY_TIMEOUT_S = 5
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow nests runs (cross-validation folds) in its UI
# MLflow's ceiling on MLFLOW_HTTP_REQUEST_MAX_RETRIES, and urllib3's on one backoff wait (Retry.DEFAULT_BACKOFF_MAX).
MAX_RETRIES, MAX_BACKOFF_S, RETRY_JITTER_S = 10, 120, 1.0
CONFIG_HASH_TAG = "config.hash"  # of the whole resolved params.yaml: equal configurations share it
# MLflow 3 opens an experiment on its GenAI overview unless it is tagged as model training: then on the runs table.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
RUN_NAME_MAX_CHARS = 100
SHORT_PARAM_NAMES = {
    "batch_size": "bs",
    "max_epochs": "epochs",
    "weight_decay": "wd",
    "early_stopping_patience": "patience",
}
NOT_IN_RUN_NAMES = ("trainer.progress_bar", "trainer.log_every_n_steps")  # display only: same run either way
UI_DEFAULT_URL = "http://127.0.0.1:5000"  # `make ui` serves the local store there
UI_WORKFLOW = "workflowType=machine_learning"


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(params: MlflowParams) -> str:
    return params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / STORE_FILE}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local store go beside it at the root; a tracking server decides for itself."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (repo_root() / ARTIFACT_DIR).as_uri()


def ensure_store(uri: str, experiment_name: str) -> None:
    """Make the store and the experiment ready before training, and fail in seconds when they cannot be.

    A tracking server that does not answer is reported at once (MLflow itself retries for minutes). A local SQLite
    store is created and the experiment added under a file lock: MLflow's first-time table creation, and two
    processes creating the same experiment, both fail when parallel queue workers (`dvc queue start -j 2`) race.
    """
    check_reachable(uri)
    lock = Path(uri[len("sqlite:///") :] + ".lock") if uri.startswith("sqlite:///") else None
    from filelock import FileLock
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with FileLock(lock) if lock else nullcontext():
        try:
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                try:
                    client.create_experiment(
                        experiment_name, artifact_location=artifact_location(uri), tags=EXPERIMENT_KIND_TAGS
                    )
                except MlflowException as exc:  # another worker on a shared store created it meanwhile
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = client.get_experiment_by_name(experiment_name)
            elif experiment.lifecycle_stage == "active" and not EXPERIMENT_KIND_TAGS.items() <= experiment.tags.items():
                for key, value in EXPERIMENT_KIND_TAGS.items():  # created before the tag was set
                    client.set_experiment_tag(experiment.experiment_id, key, value)
        except MlflowException as exc:
            reason = exc.message.strip().splitlines()[0]
            raise PipelineError(
                f"MLflow tracking store {masked_uri(uri)} cannot be used ({reason}). Fix "
                "mlflow.tracking_uri in params.yaml / $MLFLOW_TRACKING_URI, or leave both unset for "
                f"the local store {STORE_FILE} at the repository root."
            ) from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"MLflow experiment '{experiment_name}' is deleted in {masked_uri(uri)}. Restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set another "
            "mlflow.experiment_name in params.yaml."
        )


def check_reachable(uri: str) -> None:
    """Fail in seconds when a tracking server does not answer (MLflow itself retries for minutes), or when the
    local store is not a sound database."""
    check_local_store(uri)
    if not uri.startswith(("http://", "https://")):
        return
    # urllib takes no user:password in a URL (MLflow's requests sends it as basic authentication): do the same.
    parts = urllib.parse.urlsplit(uri)
    headers = {}
    if parts.username is not None:
        userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    health = urllib.request.Request(f"{urllib.parse.urlunsplit(parts).rstrip('/')}/health", headers=headers)
    try:
        urllib.request.urlopen(health, timeout=REACHABILITY_TIMEOUT_S).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"MLflow tracking server {masked_uri(uri)} is unreachable ({reason}). Start it (see README, 'Tracking "
            "server'), or fix mlflow.tracking_uri in params.yaml / $MLFLOW_TRACKING_URI; leave both unset to use the "
            f"local store {STORE_FILE} at the repository root."
        ) from None


def configure_client(uri: str, max_unreachable_s: int, stage: str) -> float:
    """How this process's MLflow talks to the store. Its retries of a server that stops answering are bounded to
    about `max_unreachable_s` (by default it retries 7 times with doubling waits, minutes in all, silently), and on
    the first retry the stage says what is happening. Its "View run at <URL>" lines are left out when the URL holds
    a password.

    MLflow reads its MLFLOW_HTTP_REQUEST_* variables at each request. urllib3 waits nothing before the first retry,
    then backoff * 2**(k-1) s (at most MAX_BACKOFF_S) plus up to RETRY_JITTER_S before retry k. Returns the
    seconds of waiting the chosen retries add up to."""
    schedules = [(1, 1, RETRY_JITTER_S)]  # (backoff, retries, seconds of waiting)
    for backoff in range(1, MAX_BACKOFF_S + 1):
        for retries in range(1, MAX_RETRIES + 1):
            waits = sum(min(MAX_BACKOFF_S, backoff * 2 ** (k - 1)) for k in range(2, retries + 1))
            if waits + retries * RETRY_JITTER_S <= max_unreachable_s:
                schedules.append((backoff, retries, waits + retries * RETRY_JITTER_S))
    # Most of the time allowed, then as many retries as fit (a server back soon is noticed soon), then all of it.
    backoff, retries, total = max(schedules, key=lambda s: (s[2] >= 0.75 * max_unreachable_s, s[1], s[2]))
    if masked_uri(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ.update(
        {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(backoff),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(RETRY_JITTER_S),
        }
    )
    retry_log = logging.getLogger("urllib3.connectionpool")  # where urllib3 says it retries
    retry_log.addHandler(
        _OutageReport(
            f"{stage}: MLflow tracking server {masked_uri(uri)} does not answer; "
            f"retrying for up to {total:.0f} s (mlflow.max_unreachable_s = "
            f"{max_unreachable_s}) before giving up.",
            every_s=max(total, 1.0),
        )
    )
    retry_log.propagate = False  # urllib3's own lines, one per retry, say less
    return total


class _OutageReport(logging.Handler):
    """Prints `message` on a retry, at most once per `every_s` seconds (once per outage, in practice)."""

    def __init__(self, message: str, every_s: float):
        super().__init__(logging.WARNING)
        self.message, self.every_s, self.last = message, every_s, -float("inf")

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying") and time.monotonic() - self.last > self.every_s:
            self.last = time.monotonic()
            log.warning(self.message)


def is_unreachable(exc: BaseException) -> bool:
    """Did `exc`, or an exception it was raised from or while handling, come from a server that does not answer?"""
    import requests
    import urllib3.exceptions

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(
            current,
            (
                requests.exceptions.ConnectionError,
                urllib3.exceptions.MaxRetryError,
                urllib3.exceptions.NewConnectionError,
            ),
        ) or "Max retries exceeded" in str(current):  # MlflowException wraps the requests error as text
            return True
        todo += [current.__cause__, current.__context__]
    return False


@contextmanager
def outage_ends_clearly(uri: str, max_unreachable_s: int, activity: str, then: str) -> Iterator[None]:
    """A server that stopped answering for good becomes one message (not MLflow's chained retry traceback)."""
    try:
        yield
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise PipelineError(
            f"MLflow tracking server {masked_uri(uri)} stopped answering during {activity} and did "
            f"not come back within mlflow.max_unreachable_s ({max_unreachable_s} s). {then}"
        ) from None


def stop_retrying() -> None:
    """The server is gone: whatever is still said to it (marking the run) fails at once instead of waiting again."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


def outage_callback() -> Any:
    """A Lightning callback: when training fails because the server stopped answering, Lightning's own attempt to
    mark the run FAILED (which would wait as long again) gives up at once."""
    import pytorch_lightning as pl

    class StopRetryingOnOutage(pl.Callback):
        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if is_unreachable(exception):
                stop_retrying()

    return StopRetryingOnOutage()


def check_local_store(uri: str) -> None:
    """A local SQLite store that exists must be a whole database. MLflow fails on a damaged one with a long
    traceback, and silently makes a new store in an empty file, which hides that the runs are gone."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if not path.is_file():
        return
    fix = (
        "Restore it from a backup, or move it aside to start a new store; mlflow.tracking_uri in params.yaml / "
        "$MLFLOW_TRACKING_URI can also name another store."
    )
    if path.stat().st_size == 0:
        raise PipelineError(f"MLflow tracking store {path} is an empty file (0 bytes), not a database. {fix}")
    with open(path, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise PipelineError(
                f"MLflow tracking store {path} is not an SQLite database (it does not start with "
                f"SQLite's header). {fix}"
            )
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            problem = db.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # another process is writing: it is sound enough to be written
            return
        problem = str(exc)
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    if problem != "ok":
        raise PipelineError(f"MLflow tracking store {path} is damaged ({problem}). {fix}")


def run_name(params: Params, kind: str) -> str:
    """mlflow.run_name, else what the run is and what differs: the DVC experiment's name (when DVC runs one), the
    model, and the params that differ from the committed params.yaml, e.g. `tawny-mope cnn bs=32 lr=0.01`.

    Not MLflow's made-up name: it comes from the global random generator, which `seed_everything` has just seeded,
    so every run would get the same one."""
    if params.mlflow.run_name:
        return params.mlflow.run_name
    parts = [
        os.environ.get("DVC_EXP_NAME", ""),
        params.model.name,
        *(f"{name}={value}" for name, value in overridden_params(params, kind).items()),
    ]
    name = " ".join(p for p in parts if p)
    return name if len(name) <= RUN_NAME_MAX_CHARS else name[: RUN_NAME_MAX_CHARS - 1] + "…"


def overridden_params(params: Params, kind: str) -> dict[str, str]:
    """The params the run uses whose value differs from the committed params.yaml (that of the experiment's baseline
    commit under DVC, else HEAD; the schema's defaults outside git), by their short name (`lr`, `bs`). A key left
    auto in both is unchanged, whatever the data kind made of it."""
    committed = committed_params()
    used, reference = used_params(params, kind), to_flat_dict(committed)
    both_auto = set(params.auto_keys) & set(committed.auto_keys)
    changed = {
        key: value
        for key, value in used.items()
        if key != "model.name" and key not in NOT_IN_RUN_NAMES and key not in both_auto and reference.get(key) != value
    }
    short = {key: SHORT_PARAM_NAMES.get(key.rsplit(".", 1)[-1], key.rsplit(".", 1)[-1]) for key in changed}
    clashes = {name for name in short.values() if list(short.values()).count(name) > 1}
    return {key if short[key] in clashes else short[key]: _short_value(value) for key, value in changed.items()}


def committed_params() -> Params:
    import yaml

    revision = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    text = _git("show", f"{revision}:{PARAMS_FILE}")
    try:
        return params_from_dict(yaml.safe_load(text) or {}) if text else params_from_dict({})
    except (PipelineError, yaml.YAMLError):
        return params_from_dict({})  # a committed file that no longer validates: compare with the schema's defaults


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(_short_value, value))
    return str(value)


def run_tags(dataset: str, data_digest: str, model_name: str) -> dict[str, str]:
    """Lineage tags. Only these names and values are sent: nothing from the environment beyond DVC's own."""
    tags = {"data.dataset": dataset, "data.digest": data_digest, "model.name": model_name}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
        ("DVC_STAGE", "dvc.stage"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def data_digest(prepared_dir: Path, meta: dict[str, Any]) -> str:
    """DVC's md5 of the prepared folder (from dvc.lock, written when prepare ran), else prepare's own digest."""
    import yaml

    lock = Path("dvc.lock")
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if Path(out["path"]) == Path(prepared_dir) and "md5" in out:
                    return out["md5"]
    return meta["digest"]


def prepared_data_input(prepared_dir: Path, meta: dict[str, Any], digest: str) -> Any:
    """The prepared data as an MLflow dataset input (shown on the run's page and searchable)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=meta["dataset"],
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": str(Path(prepared_dir).resolve())}),
        profile=json.dumps({"splits": meta["split_sizes"], "kind": meta["kind"]}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def run_url(uri: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI: the tracking server itself, else `make ui` on the local store. The UI
    (3.17) shows the GenAI or the model-training pages by a switch of its own, remembered per browser, whatever the
    experiment's tag says: the link picks model training."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    path = f"#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {masked_uri(uri).rstrip('/')}/{path}"  # never a password on the console
    return f"MLflow UI (`make ui`): {UI_DEFAULT_URL}/{path}"


def metrics_at_step(values: dict[str, float], step: int) -> list[Any]:
    """`values` as MLflow Metric entities logged at `step` now, for `log_batch`."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


def start_system_metrics(uri: str, run_id: str) -> Any:
    """MLflow's system metrics (CPU, memory, disk, network; GPU when present) sampled into the run in a thread.
    The run is created by Lightning's logger, not `mlflow.start_run`, so the monitor is started here."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


@contextmanager
def stopping(monitor: Any) -> Iterator[None]:
    """Stops a system-metrics monitor (or nothing) when the block ends, however it ends."""
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()


def write_run_file(model_dir: Path, run_id: str, uri: str) -> None:
    """The run and its store, the store's URI masked: the file goes into the DVC cache and the run's artifacts."""
    write_json(model_dir / RUN_FILE, {"run_id": run_id, "tracking_uri": masked_uri(uri)})


@contextmanager
def continue_run(uri: str, run_id: str, system_metrics: bool = False) -> Iterator[Any]:
    """Re-open train's run; it ends FINISHED, KILLED on Ctrl+C or SIGTERM (as train's runs do), or FAILED if the
    block raises. A SIGKILL leaves it RUNNING: the next training ends it KILLED (see checkpoints.py)."""
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        existing = mlflow.get_run(run_id)
    except MlflowException:
        raise PipelineError(
            f"MLflow run {run_id} (named in {RUN_FILE}) is not in the tracking store "
            f"{masked_uri(uri)}. Point mlflow.tracking_uri / $MLFLOW_TRACKING_URI at the store train "
            "used, or rerun train (dvc repro --force-downstream)."
        ) from None
    mlflow.set_experiment(experiment_id=existing.info.experiment_id)  # whatever was active before
    # The handler and the try come first: a signal that lands while the run is being re-opened ends it too.
    in_main_thread = threading.current_thread() is threading.main_thread()  # the only one that may set handlers
    previous_handler = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        yield mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    except KeyboardInterrupt as exc:
        _release_interrupted_queries(exc)
        _end_run(uri, run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        if is_unreachable(exc):  # marking the run (here, or MLflow's own at exit) would wait as long again, and fail
            stop_retrying()
        else:
            _end_run(uri, run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


def _release_interrupted_queries(exc: BaseException) -> None:
    """A signal that lands while MLflow reads from SQLite leaves the cursor alive in the traceback's frames, and
    with it a read lock that makes the write marking the run wait, then fail with "database is locked"."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()


def _end_run(uri: str, run_id: str, status: str) -> None:
    """End the run with `status`, also when the signal came before start_run had made it the active run."""
    import mlflow

    if mlflow.active_run():
        mlflow.end_run(status)
    else:
        mlflow.MlflowClient(uri).set_terminated(run_id, status)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def end_if_running(client: Any, run_id: str) -> Any:
    """End an interrupted attempt's run KILLED if it was left RUNNING (a SIGKILL gives it no chance to say so).
    Returns the run as it was read, or None if it is gone."""
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # deleted meanwhile
    if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    return run


def take_over_run(client: Any, interrupted_id: str, run_id: str, up_to_step: int) -> None:
    """`run_id` continues the interrupted run: that one ends KILLED if left RUNNING, its metrics before the
    checkpoint we resume from are copied into `run_id` (so it shows the whole curve), and its cross-validation folds
    are nested under `run_id` instead."""
    interrupted = end_if_running(client, interrupted_id)
    if interrupted is None:
        return
    history = [
        m
        for key in interrupted.data.metrics
        for m in client.get_metric_history(interrupted_id, key)
        if m.step < up_to_step
    ]  # the step a resumed run starts at, it logs itself
    for start in range(0, len(history), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=history[start : start + METRICS_PER_BATCH])
    folds = client.search_runs(
        [interrupted.info.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{interrupted_id}'"
    )
    for fold in folds:
        client.set_tag(fold.info.run_id, PARENT_RUN_TAG, run_id)
