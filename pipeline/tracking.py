"""Where MLflow runs go, what they are tagged with, and how train hands its run to evaluate.

The default store is MLflow's embedded SQLite database at the repository root. "Root" is `$DVC_ROOT` when DVC runs
the stage (a queued or `--temp` experiment runs in `.dvc/tmp/exps/...`, which DVC deletes afterwards, but points
DVC_ROOT at the main repository), else the working directory, where stages always run. MLflow is imported only
inside the functions that talk to the store, so validation stays fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from pipeline.config import PARAMS_FILE, MlflowParams, Params, params_from_dict, to_flat_dict, used_params
from pipeline.errors import PipelineError
from pipeline.files import read_json, write_json

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
RUN_FILE = "mlflow_run.json"  # written by train next to the model: the run evaluate continues
REACHABILITY_TIMEOUT_S = 5
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow nests runs (cross-validation folds) in its UI
CONFIG_HASH_TAG = "config.hash"  # of the whole resolved params.yaml: equal configurations share it
# MLflow 3 opens an experiment on its GenAI overview unless it is tagged as model training: then on the runs table.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
RUN_NAME_MAX_CHARS = 100
SHORT_PARAM_NAMES = {"batch_size": "bs", "max_epochs": "epochs", "weight_decay": "wd",
                     "early_stopping_patience": "patience"}
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
    lock = Path(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else None
    from filelock import FileLock
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with FileLock(lock) if lock else nullcontext():
        try:
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                client.create_experiment(experiment_name, artifact_location=artifact_location(uri),
                                         tags=EXPERIMENT_KIND_TAGS)
            elif experiment.lifecycle_stage == "active" and not EXPERIMENT_KIND_TAGS.items() <= experiment.tags.items():
                for key, value in EXPERIMENT_KIND_TAGS.items():  # created before the tag was set
                    client.set_experiment_tag(experiment.experiment_id, key, value)
        except MlflowException as exc:
            reason = exc.message.strip().splitlines()[0]
            raise PipelineError(f"MLflow tracking store {uri} cannot be used ({reason}). Fix mlflow.tracking_uri in "
                                "params.yaml / $MLFLOW_TRACKING_URI, or leave both unset for the local store "
                                f"{STORE_FILE} at the repository root.") from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise PipelineError(f"MLflow experiment '{experiment_name}' is deleted in {uri}. Restore it (mlflow "
                            f"experiments restore --experiment-id {experiment.experiment_id}) or set another "
                            "mlflow.experiment_name in params.yaml.")


def check_reachable(uri: str) -> None:
    """Fail in seconds when a tracking server does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABILITY_TIMEOUT_S).close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Start it (see README, 'Tracking server'), "
            "or fix mlflow.tracking_uri in params.yaml / $MLFLOW_TRACKING_URI; leave both unset to use the local "
            f"store {STORE_FILE} at the repository root."
        ) from None


def run_name(params: Params, kind: str) -> str:
    """mlflow.run_name, else what the run is and what differs: the DVC experiment's name (when DVC runs one), the
    model, and the params that differ from the committed params.yaml, e.g. `tawny-mope cnn bs=32 lr=0.01`.

    Not MLflow's made-up name: it comes from the global random generator, which `seed_everything` has just seeded,
    so every run would get the same one."""
    if params.mlflow.run_name:
        return params.mlflow.run_name
    parts = [os.environ.get("DVC_EXP_NAME", ""), params.model.name,
             *(f"{name}={value}" for name, value in overridden_params(params, kind).items())]
    name = " ".join(p for p in parts if p)
    return name if len(name) <= RUN_NAME_MAX_CHARS else name[:RUN_NAME_MAX_CHARS - 1] + "…"


def overridden_params(params: Params, kind: str) -> dict[str, str]:
    """The params the run uses whose value differs from the committed params.yaml (that of the experiment's baseline
    commit under DVC, else HEAD; the schema's defaults outside git), by their short name (`lr`, `bs`). A key left
    auto in both is unchanged, whatever the data kind made of it."""
    committed = committed_params()
    used, reference = used_params(params, kind), to_flat_dict(committed)
    both_auto = set(params.auto_keys) & set(committed.auto_keys)
    changed = {key: value for key, value in used.items()
               if key != "model.name" and key not in NOT_IN_RUN_NAMES and key not in both_auto
               and reference.get(key) != value}
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
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")):
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

    dataset = Dataset(name=meta["dataset"], digest=digest, source_type="local",
                      source=json.dumps({"uri": str(Path(prepared_dir).resolve())}),
                      profile=json.dumps({"splits": meta["split_sizes"], "kind": meta["kind"]}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def run_url(uri: str, run_id: str) -> str:
    """Where the run opens in the MLflow UI: the tracking server itself, else `make ui` on the local store. The UI
    (3.17) shows the GenAI or the model-training pages by a switch of its own, remembered per browser, whatever the
    experiment's tag says: the link picks model training."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    path = f"#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {uri.rstrip('/')}/{path}"
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
    write_json(model_dir / RUN_FILE, {"run_id": run_id, "tracking_uri": uri})


def read_run_file(model_dir: Path) -> dict[str, Any]:
    path = model_dir / RUN_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: not found. Run the train stage first (dvc repro).")
    return read_json(path)


@contextmanager
def continue_run(uri: str, run_id: str, system_metrics: bool = False) -> Iterator[Any]:
    """Re-open train's run; it ends FINISHED, or FAILED (never RUNNING) if the block raises."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        existing = mlflow.get_run(run_id)
    except MlflowException:
        raise PipelineError(f"MLflow run {run_id} (named in {RUN_FILE}) is not in the tracking store {uri}. "
                            "Point mlflow.tracking_uri / $MLFLOW_TRACKING_URI at the store train used, or rerun "
                            "train (dvc repro --force-downstream).") from None
    mlflow.set_experiment(experiment_id=existing.info.experiment_id)  # whatever was active before
    with mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics) as run:
        yield run


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
    history = [m for key in interrupted.data.metrics for m in client.get_metric_history(interrupted_id, key)
               if m.step < up_to_step]  # the step a resumed run starts at, it logs itself
    for start in range(0, len(history), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=history[start:start + METRICS_PER_BATCH])
    folds = client.search_runs([interrupted.info.experiment_id],
                               filter_string=f"tags.`{PARENT_RUN_TAG}` = '{interrupted_id}'")
    for fold in folds:
        client.set_tag(fold.info.run_id, PARENT_RUN_TAG, run_id)
