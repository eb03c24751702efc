"""Hyperparameter search: an Optuna study over `tune.space`, then the best setting trained as a DVC experiment.

    python -m pipeline.stages.tune              # dvc repro prepare, the trials, then `dvc exp run -n <tune.study_name>`
    python -m pipeline.stages.tune --no-final   # the trials only (a worker of a shared study; data/prepared must exist)

Each trial trains the configured model on the prepared train split with the values Optuna suggests, and is judged
on the validation split only: its value is the best epoch's `tune.metric`, which is also the trial's
`train.monitor` (early stopping, best checkpoint). The pruner sees that metric after every epoch and stops trials
that fall behind. Every trial is an MLflow run nested under the study's run; the study run carries the best trial's
values, the trial counts and Optuna's parameter importances.

The study lives in Optuna's storage, so rerunning the command continues it up to `tune.n_trials` finished trials:
by default a journal file at the repository root; with `tune.storage: postgresql://...` any number of processes on
any machines share one study (start them with --no-final, and the command without it once, anywhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from omegaconf import OmegaConf

from pipeline import console, tracking
from pipeline.artifacts import RUN_FILE, read_meta, read_run_file
from pipeline.config import (
    Params,
    TuneParams,
    check_model_fits_data,
    is_integer_key,
    load_params,
    objective_direction,
    params_from_dict,
    resolved,
)
from pipeline.errors import PipelineError, run_cli
from pipeline.uris import masked_uri

log = console.get_logger(__name__)

JOURNAL_FILE = "optuna-journal.log"  # the default storage, at the repository root
PREPARED_DIR = "data/prepared"  # dvc.yaml's prepare output
MODEL_DIR = "outputs/model"  # dvc.yaml's train output: its run file names the final model's MLflow run
STUDY_TAG = "tune.study"
STORAGE_TAG = "tune.storage"  # the storage URL with its password masked
TRIAL_TAG = "tune.trial"
STATE_TAG = "tune.state"  # complete, pruned or diverged
FINAL_RUN_TAG = "tune.final_run_id"  # on the study run: the DVC experiment's train run
# A trial left RUNNING by a killed worker is failed by the others after this long without a heartbeat (RDB only).
HEARTBEAT_S, HEARTBEAT_GRACE_S = 60, 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, default=Path(PREPARED_DIR), help="the prepare stage's output")
    parser.add_argument(
        "--no-final",
        action="store_true",
        help="run trials only: no `dvc repro prepare` first, no DVC experiment of the best setting",
    )
    args = parser.parse_args()
    params = load_params()
    if params.trainer.devices not in (1, [0]) or params.trainer.num_nodes > 1:
        raise PipelineError(
            "tune runs each trial in this one process: set trainer.devices 1 and num_nodes 1 (the "
            "final DVC experiment trains with the same trainer settings)."
        )
    if not params.tune.space:
        raise PipelineError(
            "tune.space is empty: name the params.yaml keys to search, e.g. "
            "train.lr: {low: 1.0e-4, high: 1.0e-1, log: true} (see README, 'Hyperparameter search')."
        )
    if not args.no_final:
        _run(["dvc", "repro", "prepare"], "dvc repro prepare")
    meta = read_meta(args.prepared)
    check_model_fits_data(params.model.name, meta["kind"])
    uri = tracking.tracking_uri(params.mlflow)
    tracking.ensure_store(uri, params.mlflow.experiment_name)

    import torch
    from optuna.trial import TrialState

    torch.set_num_threads(threads_per_worker(params.tune.workers))
    study = open_study(params.tune)
    best = run_study(study, params, args.prepared, meta, uri)
    if best is None:
        raise PipelineError(
            f"study '{params.tune.study_name}' has no complete trial yet (every trial was pruned "
            "or stopped): raise tune.n_trials or tune.timeout_s, or widen tune.space."
        )
    log.info(
        f"tune: best trial {best.number}: {params.tune.metric} {best.value:.4f} with "
        f"{' '.join(f'{k}={v}' for k, v in best_values(best, params.tune.space).items())}"
    )
    if not args.no_final:
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        train_best_as_experiment(params, best_values(best, params.tune.space), finished, uri)


def threads_per_worker(workers: int) -> int:
    """This process's share of the cores it may run on: torch's default of one thread per core in every one of
    several processes oversubscribes the cores (2-4x slower measured on 2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


# ---------------------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------------------
def _secret_masked(text: str, url: str | None) -> str:
    password = urlsplit(url).password if url else None
    return text.replace(password, "***") if password else text


def storage_label(tune: TuneParams) -> str:
    return masked_uri(tune.storage) if tune.storage else str(tracking.repo_root() / JOURNAL_FILE)


def open_study(tune: TuneParams) -> Any:
    """Create the study, or load it when it exists (a rerun, or another worker): that is what makes it resumable
    and shareable."""
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is printed here instead
    sampler_seed = tune.seed if tune.workers == 1 else tune.seed + os.getpid()  # workers must not draw alike
    sampler = (
        optuna.samplers.TPESampler(seed=sampler_seed)
        if tune.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=sampler_seed)
    )
    pruner: Any = optuna.pruners.NopPruner()
    if tune.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_epochs
        )
    elif tune.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1)
    try:
        if tune.storage:
            storage: Any = _database_storage(tune.storage)
        else:
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(tracking.repo_root() / JOURNAL_FILE)))
        return optuna.create_study(
            storage=storage,
            study_name=tune.study_name,
            sampler=sampler,
            pruner=pruner,
            direction=objective_direction(tune.metric, tune.direction),
            load_if_exists=True,
        )
    except (optuna.exceptions.OptunaError, ValueError, ImportError) as exc:
        reason = _secret_masked(str(exc), tune.storage).strip().splitlines()[0]
        raise PipelineError(
            f"Optuna storage {storage_label(tune)} cannot be used for study '{tune.study_name}' "
            f"({reason}). Fix tune.storage (or tune.study_name) in params.yaml."
        ) from None
    except SQLAlchemyError as exc:  # an unreachable or refusing database server
        reason = type(exc).__name__ + ": " + _secret_masked(str(exc), tune.storage).strip().splitlines()[0]
        raise PipelineError(
            f"Optuna storage {storage_label(tune)} cannot be reached ({reason}). Check that the "
            "database server runs and tune.storage names it."
        ) from None


def _database_storage(url: str, attempts: int = 3) -> Any:
    """Optuna's RDB storage. Workers started together on an empty database race to create its tables, and all but
    one fail on a duplicate; they retry once the winner is done."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; psycopg2 is the driver installed.
    url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9; said every run
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)


def budget_left(study: Any, n_trials: int | None, deadline: float | None) -> bool:
    """Time left to this command, and trials left to the study: finished and running trials (of every worker)
    count, those that failed (a crash) do not."""
    from optuna.trial import TrialState

    if deadline is not None and time.monotonic() >= deadline:
        return False
    if n_trials is None:
        return True
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states)) < n_trials


def run_study(study: Any, params: Params, prepared_dir: Path, meta: dict[str, Any], uri: str) -> Any:
    """Trials until the budget is spent (checked before each: several workers share it), then the study run's
    summary. Returns the best trial, or None if none has completed."""
    from mlflow.tracking import MlflowClient

    from pipeline.training.datamodule import split_labels

    tune = params.tune
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(params.mlflow.experiment_name)
    if experiment is None:  # tracking.ensure_store made it: gone only if deleted since
        raise PipelineError(
            f"MLflow experiment '{params.mlflow.experiment_name}' is no longer in {uri} (deleted "
            "while tune started?). Run tune again."
        )
    experiment_id = experiment.experiment_id
    parent = study_run(client, experiment_id, tune)
    digest = tracking.data_digest(prepared_dir, meta)
    train_labels = split_labels(prepared_dir, "train")
    deadline = time.monotonic() + tune.timeout_s if tune.timeout_s else None
    try:
        while budget_left(study, tune.n_trials, deadline):
            study.optimize(
                lambda trial: run_trial(trial, params, prepared_dir, meta, digest, train_labels, parent), n_trials=1
            )
        summarise(client, parent, study, tune)
    except BaseException as exc:
        client.set_terminated(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return _best_trial(study)


def study_run(client: Any, experiment_id: str, tune: TuneParams) -> str:
    """The study's one MLflow run, found by its tags, else created; marked RUNNING while this process works on it.

    Two workers that start together may both create one: each then keeps the older, and a worker whose own run is
    not the older deletes it (it is empty)."""
    tags = {STUDY_TAG: tune.study_name, STORAGE_TAG: storage_label(tune)}
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

    def oldest() -> Any:
        runs = client.search_runs([experiment_id], filter_string=where)
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)

    found = oldest()
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    mine = client.create_run(
        experiment_id,
        run_name=tune.study_name,
        tags={**tags, "tune.metric": tune.metric, "tune.sampler": tune.sampler, "tune.pruner": tune.pruner},
    )
    kept = oldest()
    if kept.info.run_id != mine.info.run_id:
        client.set_terminated(mine.info.run_id, "FINISHED")
        client.delete_run(mine.info.run_id)
        client.update_run(kept.info.run_id, status="RUNNING")
    return kept.info.run_id


def summarise(client: Any, run_id: str, study: Any, tune: TuneParams) -> None:
    """The study's state on its run: trial counts, the best trial (tags `best.<key>` and metric `best/<metric>`;
    tags since the best changes as the study goes on, and MLflow params cannot), and the parameter importances
    (metrics `importance/<key>`). The same as JSON: artifact tune/summary.json."""
    import optuna
    from mlflow.entities import Metric
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    best = _best_trial(study)
    importances: dict[str, float] = {}
    if sum(t.state == TrialState.COMPLETE for t in trials) >= 2:
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=tune.seed)
            )
        except (RuntimeError, ValueError):  # every complete trial has the same values: nothing to attribute
            importances = {}
    step, now = counts["complete"] + counts["pruned"], int(time.time() * 1000)  # x axis: finished trials
    metrics = [Metric(f"trials/{state}", n, now, step) for state, n in counts.items() if n]
    metrics += [Metric(f"importance/{key}", value, now, step) for key, value in importances.items()]
    tags = {}
    if best is not None:
        metrics.append(Metric(f"best/{tune.metric}", best.value, now, step))
        tags = {
            "best.trial": str(best.number),
            **{f"best.{k}": json.dumps(v) for k, v in best_values(best, tune.space).items()},
        }
    client.log_batch(run_id, metrics=metrics, tags=[_tag(k, v) for k, v in tags.items()])
    summary = {
        "study": tune.study_name,
        "metric": tune.metric,
        "direction": study.direction.name.lower(),
        "trials": counts,
        "importances": importances,
        "best": None
        if best is None
        else {"trial": best.number, "value": best.value, "params": best_values(best, tune.space)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        client.log_artifact(run_id, str(path), "tune")


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def _best_trial(study: Any) -> Any:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


# ---------------------------------------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------------------------------------
def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's value for every key of the space. Optuna's categorical choices are plain scalars, so a choice
    that is a list (model.mlp.hidden_dims) travels as its JSON text."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if _as_json(spec):
            values[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in spec["choices"]]))
        elif "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif is_integer_key(key):
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step") or 1, log=bool(spec.get("log"))
            )
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=bool(spec.get("log"))
            )
    return values


def best_values(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's values as params.yaml takes them (list choices decoded)."""
    return {key: json.loads(value) if _as_json(space.get(key, {})) else value for key, value in trial.params.items()}


def _as_json(spec: dict[str, Any]) -> bool:
    return "choices" in spec and not all(isinstance(c, (bool, int, float, str)) or c is None for c in spec["choices"])


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """`params` with dotted keys set, validated like an override."""
    data = OmegaConf.create(dataclasses.asdict(params))
    for key, value in values.items():
        OmegaConf.update(data, key, value, merge=False)
    return params_from_dict(cast(dict, OmegaConf.to_container(data)))  # a DictConfig converts to a dict


def run_trial(
    trial: Any,
    params: Params,
    prepared_dir: Path,
    meta: dict[str, Any],
    digest: str,
    train_labels: Any,
    parent_run: str,
) -> float:
    """Train with the trial's values; the best epoch's tune.metric on the validation split is the trial's value.
    Its MLflow run ends FINISHED (complete or pruned, tagged so), FAILED when the loss diverged (the trial counts
    as pruned) and KILLED on Ctrl+C."""
    import optuna
    import pytorch_lightning as pl

    from pipeline.training.builders import loading, new_callbacks, new_logger, new_module, new_trainer
    from pipeline.training.datamodule import PreparedDataModule
    from pipeline.training.module import NonFiniteLoss

    tune = params.tune
    values = suggest(trial, tune.space)
    trial_params = with_values(params, {**values, "train.monitor": tune.metric})
    logger = new_logger(
        trial_params,
        meta,
        digest,
        run_name=f"{tune.study_name}-trial{trial.number}",
        extra_tags={tracking.PARENT_RUN_TAG: parent_run, STUDY_TAG: tune.study_name, TRIAL_TAG: str(trial.number)},
    )
    pruning = new_pruning_callback(trial, tune.metric)
    with tempfile.TemporaryDirectory(prefix="tune-trial-") as checkpoint_dir:  # the trial's checkpoints, then gone
        pl.seed_everything(trial_params.train.seed, workers=True, verbose=False)
        module = new_module(trial_params, meta, train_labels)
        checkpoint, callbacks = new_callbacks(trial_params, Path(checkpoint_dir))
        trainer = new_trainer(trial_params, [logger], [*callbacks, pruning], Path(checkpoint_dir))
        try:
            data = PreparedDataModule(
                prepared_dir, resolved(trial_params.train.batch_size), *loading(trial_params, meta)
            )
            trainer.fit(module, datamodule=data)
        except NonFiniteLoss:  # Lightning has ended the run FAILED; for the study it is a hopeless setting
            logger.experiment.set_tag(logger.run_id, STATE_TAG, "diverged")
            log.info(f"tune: trial {trial.number} diverged (non-finite loss): {values}")
            raise optuna.TrialPruned("the training loss diverged") from None
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl+C into SystemExit after marking the run
            if logger.run_id:
                logger.experiment.set_terminated(logger.run_id, "KILLED")
            raise KeyboardInterrupt from None  # Optuna then ends the trial as failed, not leaving it running
    state = "pruned" if pruning.pruned_at is not None else "complete"
    logger.experiment.set_tag(logger.run_id, STATE_TAG, state)
    value = float(resolved(checkpoint.best_model_score))  # every trial validates at least once
    when = f"at epoch {pruning.pruned_at}" if pruning.pruned_at is not None else f"after {trainer.current_epoch} epochs"
    log.info(
        f"tune: trial {trial.number} {state} {when}: best {tune.metric} {value:.4f} with "
        f"{' '.join(f'{k}={v}' for k, v in values.items())}"
    )
    if pruning.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
    logger.experiment.log_metric(logger.run_id, f"tune/{tune.metric}", value)
    return value


def new_pruning_callback(trial: Any, metric: str) -> Any:
    """A callback that reports the objective to Optuna after every validation epoch and stops the trial when Optuna
    prunes it (`pruned_at` then says after which epoch).

    Not optuna-integration's PyTorchLightningPruningCallback: it is built on the `lightning` package's Callback,
    not `pytorch_lightning`'s (this project's; `lightning` is not installed), and it raises TrialPruned inside
    `fit`, which Lightning treats as a crash (the MLflow run would end FAILED). Stopping the trainer instead lets
    the run end normally, tagged pruned."""
    import pytorch_lightning as pl

    class PruneOnValidation(pl.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.pruned_at: int | None = None

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            value = trainer.callback_metrics.get(metric)
            if trainer.sanity_checking or value is None:
                return
            trial.report(float(value), step=trainer.current_epoch)
            if trial.should_prune():
                self.pruned_at = trainer.current_epoch
                trainer.should_stop = True

    return PruneOnValidation()


# ---------------------------------------------------------------------------------------------------------------
# The best setting as a DVC experiment
# ---------------------------------------------------------------------------------------------------------------
def override_value(value: Any) -> str:
    """A value in `dvc exp run -S`'s (Hydra's) grammar."""
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers, true/false, null and lists are written alike in both


def experiment_name(study_name: str, finished_trials: int) -> str | None:
    """The study's name, or once that is taken (a continued study) `<study>-<finished trials>`; None when both
    are: this state of the study has been trained already. Existing experiments are never overwritten."""
    listed = subprocess.run(
        ["dvc", "exp", "list", "--all-commits", "--name-only"], capture_output=True, text=True, check=False
    )
    taken = set(listed.stdout.split())
    return next((n for n in (study_name, f"{study_name}-{finished_trials}") if n not in taken), None)


def train_best_as_experiment(params: Params, values: dict[str, Any], finished_trials: int, uri: str) -> None:
    """`python -m pipeline.stages.exp -S ... -n <name>`: validated, then `dvc exp run` trains and evaluates the best
    setting like any experiment (the workspace then holds it, as after any `dvc exp run`)."""
    sets = [f"{key}={override_value(value)}" for key, value in {**values, "train.monitor": params.tune.metric}.items()]
    name = experiment_name(params.tune.study_name, finished_trials)
    if name is None:
        log.info(
            f"tune: DVC experiments '{params.tune.study_name}' and '{params.tune.study_name}-{finished_trials}' "
            "exist already: the study's best after these trials has been trained (see `dvc exp show`)."
        )
        return
    log.info(f"tune: training the best setting as DVC experiment '{name}'")
    _run(
        [sys.executable, "-m", "pipeline.stages.exp", *[a for s in sets for a in ("-S", s)], "-n", name],
        f"dvc exp run -n {name}",
    )
    final_run = read_run_file(Path(MODEL_DIR)).run_id if Path(MODEL_DIR, RUN_FILE).is_file() else None
    if final_run:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        client.set_tag(final_run, STUDY_TAG, name)
        parent = client.search_runs(
            [client.get_run(final_run).info.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{name}' and tags.`{STORAGE_TAG}` = '{storage_label(params.tune)}'",
        )
        for run in parent:
            client.set_tag(run.info.run_id, FINAL_RUN_TAG, final_run)
    log.info(f"tune: done; compare with `dvc exp show`, the study in MLflow (run '{params.tune.study_name}')")


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise PipelineError(
            f"{what} failed (exit {result.returncode}, its output is above); fix that and rerun "
            "`python -m pipeline.stages.tune`: the study continues where it stopped."
        )


if __name__ == "__main__":
    run_cli(main)
