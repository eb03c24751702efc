"""Stage 2, train: fit a `models/` network on the prepared splits with Lightning, tracked as one MLflow run.

    python -m pipeline.stages.train --prepared data/prepared --out outputs/model --checkpoints outputs/checkpoints

Reads `model`, `train`, `trainer`, `mlflow`. Writes `<out>/model.pt` (the best checkpoint's weights and the config
to rebuild the network), `<out>/mlflow_run.json` (the run evaluate continues), and with `--history` and
`--cv-metrics` the per-epoch metrics and the cross-validation summary. Under DDP every process runs this file; only
global rank zero talks to MLflow and writes outputs.

`fit` starts the run, trains and publishes; the steps import Lightning, torch and MLflow themselves, so that a bad
params.yaml or an unreachable tracking server is reported before paying several seconds of imports.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import console, defaults, tracking
from pipeline.artifacts import CV_SUMMARY_FILE, LAST_CHECKPOINT, MODEL_FILE, RUN_FILE, read_meta
from pipeline.config import Params, ParamsError, check_model_fits_data, load_params, resolve_auto, resolved
from pipeline.errors import run_cli
from pipeline.files import read_json, write_json
from pipeline.training.threads import configure_threads, devices_per_node

log = console.get_logger(__name__)

if TYPE_CHECKING:
    from pytorch_lightning.loggers import MLFlowLogger

    from pipeline.training.checkpoints import ResumePoint

WEIGHTS_ARTIFACT_DIR = "weights"  # model.pt in the run; "model" is the pyfunc model evaluate logs
RESUMED_FROM_TAG = "resumed_from.run_id"  # on a run that continued an interrupted one
RESUMED_EPOCHS_TAG = "resumed_from.epochs"  # epochs the interrupted run had completed
STEP_TIMES_ENV = "PIPELINE_STEP_TIMES"  # a JSON file: benchmarks learn how long the training steps took
STOPPED_BECAUSE_TAG = "stopped_because"  # why training ended; metrics best_epoch and stopped_epoch say when


@dataclass
class TrainingRun:
    """The MLflow run of one training attempt, and what the attempt resumes from (None: a fresh start)."""

    logger: MLFlowLogger  # owns the run
    run_id: str  # "" on processes other than global rank zero: only that one talks to MLflow
    uri: str
    digest: str  # the prepared data's, as logged with the run
    attempt: str  # the fingerprint recorded in the checkpoint folder
    resume: ResumePoint | None
    system_metrics: Any  # a monitor sampling into the run, or None


def fit(
    params: Params,
    prepared_dir: Path,
    model_dir: Path,
    checkpoint_dir: Path,
    extra_callbacks: list | None = None,
    history_file: Path | None = None,
    cv_metrics_file: Path | None = None,
) -> str | None:
    """Train, save the best model and return the MLflow run id (None on ranks other than zero).

    `extra_callbacks` are Lightning callbacks added to the stage's own (benchmarks use one to time epochs).
    `history_file` receives one row per epoch of train/val metrics, for `dvc plots`; `cv_metrics_file` the
    cross-validation summary (`train.cv_folds`), for `dvc metrics`.
    """
    meta = read_meta(prepared_dir)
    apply_defaults(params, meta["kind"])
    if params.auto_keys:
        log.info(f"train: {defaults.describe(params, params.defaults_kind, params.auto_keys)}")
    run = start_run(params, prepared_dir, meta, checkpoint_dir)
    with ending_run(run.logger, checkpoint_dir), tracking.stopping(run.system_metrics):
        cv_summary = cross_validation(params, prepared_dir, meta, run, checkpoint_dir)
        trainer, module, checkpoint = train(params, prepared_dir, meta, run, checkpoint_dir, extra_callbacks)
        if not trainer.is_global_zero:
            return None
        publish(
            params,
            prepared_dir,
            meta,
            run,
            model_dir,
            checkpoint_dir,
            trainer,
            module,
            checkpoint,
            history_file,
            cv_metrics_file,
            cv_summary,
        )
    return run.run_id


def start_run(params: Params, prepared_dir: Path, meta: dict[str, Any], checkpoint_dir: Path) -> TrainingRun:
    """The attempt's run, continuing an interrupted attempt's when its checkpoints can be resumed from. The run
    exists on global rank zero from here on: a kill at any later point is on record."""
    from pipeline.training import checkpoints
    from pipeline.training.builders import new_logger

    uri = tracking.tracking_uri(params.mlflow)
    digest = tracking.data_digest(prepared_dir, meta)
    attempt = checkpoints.fingerprint(params, meta["digest"])
    resume = checkpoints.resume_or_start_over(checkpoint_dir, attempt, uri)
    logger = new_logger(
        params,
        meta,
        digest,
        extra_tags={RESUMED_FROM_TAG: resume.run_id or "", RESUMED_EPOCHS_TAG: str(resume.epochs)} if resume else None,
    )
    system_metrics = None
    run_id = (logger.run_id or "") if console.launched_as_global_zero() else ""  # creates the run
    if run_id:
        if resume and resume.run_id:  # metrics are logged per epoch (step = epoch)
            tracking.take_over_run(logger.experiment, resume.run_id, run_id, resume.epochs)
        checkpoints.record_attempt(checkpoint_dir, attempt, run_id, uri)
        if params.mlflow.system_metrics:
            system_metrics = tracking.start_system_metrics(uri, run_id)
    return TrainingRun(logger, run_id, uri, digest, attempt, resume, system_metrics)


def cross_validation(
    params: Params, prepared_dir: Path, meta: dict[str, Any], run: TrainingRun, checkpoint_dir: Path
) -> dict[str, dict[str, float]] | None:
    """With `train.cv_folds` > 1, the folds first, each a nested run under this one; a resumed attempt finished
    them before its final fit began, and reads their summary back."""
    from pipeline.training.cross_validation import cross_validate

    summary_file = checkpoint_dir / CV_SUMMARY_FILE
    if params.train.cv_folds <= 1:
        return None
    if run.resume:
        return read_json(summary_file)
    summary = cross_validate(params, prepared_dir, meta, run.logger, checkpoint_dir / "cv")
    write_json(summary_file, summary)
    return summary


def train(
    params: Params,
    prepared_dir: Path,
    meta: dict[str, Any],
    run: TrainingRun,
    checkpoint_dir: Path,
    extra_callbacks: list | None,
) -> tuple[Any, Any, Any]:
    """The model as configured, on the train split: the trainer, the module and its best-checkpoint callback."""
    import pytorch_lightning as pl

    from pipeline.training.builders import loading, new_callbacks, new_module, new_trainer
    from pipeline.training.datamodule import PreparedDataModule, split_labels

    pl.seed_everything(params.train.seed, workers=True, verbose=False)
    module = new_module(params, meta, split_labels(prepared_dir, "train"))
    checkpoint, callbacks = new_callbacks(params, checkpoint_dir)
    trainer = new_trainer(params, [run.logger], callbacks + (extra_callbacks or []), checkpoint_dir)
    trainer.fit(
        module,
        datamodule=PreparedDataModule(prepared_dir, resolved(params.train.batch_size), *loading(params, meta)),
        ckpt_path=run.resume.checkpoint if run.resume else None,
    )
    return trainer, module, checkpoint


def publish(
    params: Params,
    prepared_dir: Path,
    meta: dict[str, Any],
    run: TrainingRun,
    model_dir: Path,
    checkpoint_dir: Path,
    trainer: Any,
    module: Any,
    checkpoint: Any,
    history_file: Path | None,
    cv_metrics_file: Path | None,
    cv_summary: dict[str, dict[str, float]] | None,
) -> None:
    """The best epoch's weights as model.pt, the run file, the history and the cross-validation metrics, logged to
    the run; the attempt recorded as finished, so the next `dvc repro` starts over."""
    from pipeline.training import checkpoints
    from pipeline.training.builders import model_hparams
    from pipeline.training.cross_validation import write_cv_metrics
    from pipeline.training.trained_model import save_trained_model

    logger, run_id = run.logger, run.run_id
    best = torch_load_checkpoint(checkpoint.best_model_path or checkpoint.last_model_path)
    module.load_state_dict(best["state_dict"])
    log_stopping(logger, params, trainer, int(best["epoch"]), checkpoint.best_model_score)
    save_trained_model(model_dir / MODEL_FILE, module.net, params.model.name, model_hparams(params), meta)
    logger.experiment.log_inputs(run_id, [tracking.prepared_data_input(prepared_dir, meta, run.digest)])
    logger.experiment.log_artifact(run_id, str(model_dir / MODEL_FILE), WEIGHTS_ARTIFACT_DIR)
    tracking.write_run_file(model_dir, run_id, run.uri)
    if history_file:
        write_history(logger.experiment, run_id, history_file)
    if cv_metrics_file:
        write_cv_metrics(cv_metrics_file, params.train.cv_folds, cv_summary)
    logger.experiment.log_artifact(run_id, str(model_dir / RUN_FILE), WEIGHTS_ARTIFACT_DIR)
    checkpoints.record_attempt(checkpoint_dir, run.attempt, run_id, run.uri, finished=True)


def apply_defaults(params: Params, kind: str) -> None:
    """The auto keys take the defaults of the prepared data's kind (params built in code arrive unresolved; loaded
    ones are resolved already, by params.yaml's data section, which must then describe the same kind)."""
    resolve_auto(params, kind)
    if params.auto_keys and params.defaults_kind != kind:
        raise ParamsError(
            f"the prepared data is {kind} data, but params.yaml's data section describes "
            f"{params.defaults_kind} data, whose defaults the auto keys took; rerun prepare "
            "(`dvc repro`) so that the prepared data matches params.yaml."
        )


@contextmanager
def ending_run(logger: Any, checkpoint_dir: Path) -> Iterator[None]:
    """The one place the training run ends, on global rank zero: FINISHED when the block completes, KILLED on an
    interrupt, FAILED on any other error.

    Ctrl+C / SIGINT: Lightning shuts down cleanly, marks the run FAILED and exits 1; between Lightning's loops it is
    a plain KeyboardInterrupt. Either way the run ends KILLED and the user learns what the next run will do. An
    interrupt that cuts an MLflow write short leaves that SQLite transaction holding the store's lock, and
    Lightning's shutdown then fails to mark the run ("database is locked"). That is still the interrupt: the run is
    left to the next attempt, which ends it KILLED when it finds it RUNNING (as after a SIGKILL). A tracking server
    that stopped answering is not asked again: marking the run would wait as long again, and fail."""
    owner = console.launched_as_global_zero()
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, (SystemExit, KeyboardInterrupt))
        if not interrupted and not _raised_by_interrupt(exc):
            if tracking.is_unreachable(exc):
                tracking.stop_retrying()
            elif owner and logger.run_id:
                logger.experiment.set_terminated(logger.run_id, "FAILED")
            raise
        if owner and logger.run_id:
            if interrupted:
                logger.experiment.set_terminated(logger.run_id, "KILLED")
            last = checkpoint_dir / LAST_CHECKPOINT
            log.warning(
                f"train: interrupted; the next `dvc repro` resumes from {last}"
                if last.is_file()
                else "train: interrupted before the first checkpoint; the next `dvc repro` starts over"
            )
        raise KeyboardInterrupt from None
    if owner and logger.run_id:
        logger.experiment.set_terminated(logger.run_id, "FINISHED")


def _raised_by_interrupt(exc: BaseException) -> bool:
    """Did `exc` happen while a KeyboardInterrupt was being handled (its context chain holds one)?"""
    context = exc.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


def log_stopping(logger: Any, params: Params, trainer: Any, best_epoch: int, best_score: Any) -> None:
    """The early-stopping outcome on the run (metrics best_epoch, stopped_epoch; tag stopped_because) and the
    console. Epochs count from 0, as on the progress bar and the x axis of the run's charts."""
    from pytorch_lightning.callbacks import EarlyStopping

    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    stopped_epoch = trainer.current_epoch - 1  # the last epoch run: current_epoch counts those completed
    if stopper is not None and stopper.stopped_epoch:
        # Lightning 2.6 says why (an EarlyStoppingReason); older versions stop on patience only.
        reason = getattr(getattr(stopper, "stopping_reason", None), "name", "PATIENCE_EXHAUSTED")
        because = (
            f"early stopping: {params.train.monitor} did not improve for {params.train.early_stopping_patience} epochs"
            if reason == "PATIENCE_EXHAUSTED"
            else f"early stopping: {reason.lower().replace('_', ' ')}"
        )
    elif trainer.current_epoch >= params.train.max_epochs:
        because = f"train.max_epochs ({params.train.max_epochs}) reached"
    else:
        because = "stopped by the trainer"
    logger.experiment.log_batch(
        logger.run_id,
        metrics=tracking.metrics_at_step(
            {"best_epoch": best_epoch, "stopped_epoch": stopped_epoch}, step=stopped_epoch
        ),
    )
    logger.experiment.set_tag(logger.run_id, STOPPED_BECAUSE_TAG, because)
    score = f" ({params.train.monitor} {float(best_score):.4f})" if best_score is not None else ""
    log.info(
        f"train: best epoch {best_epoch}{score} of {stopped_epoch + 1} run (epochs 0-{stopped_epoch}); "
        f"stopped: {because}"
    )


def write_history(client: Any, run_id: str, history_file: Path) -> None:
    """One row per epoch of the run's train/ and val/ metrics, for DVC plots. Read back from MLflow, not kept in a
    file while training: the run is the one record that a resumed training continues (see checkpoints.py)."""
    import pandas as pd

    from pipeline.files import atomic_path

    keys = sorted(k for k in client.get_run(run_id).data.metrics if k.startswith(("train/", "val/")))
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):  # logged per epoch, the epoch as step
            rows.setdefault(m.step, {})[key] = m.value
    table = pd.DataFrame.from_dict(rows, orient="index", columns=keys).sort_index().rename_axis("epoch")
    with atomic_path(history_file) as tmp:
        table.to_csv(tmp)


def torch_load_checkpoint(path: str) -> dict[str, Any]:
    import torch

    # Tensors and plain types only (the random state included, see checkpoints.py), like every file we load.
    return torch.load(path, map_location="cpu", weights_only=True)


def step_timer(path: Path) -> Any:
    """A callback that writes to `path` the seconds spent inside training steps (forward, backward, optimizer,
    per-step metrics) and inside the whole `Trainer.fit`, to tell training from start-up in a benchmark."""
    import time

    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.steps, self.step_s, self.fit_start, self.step_start = 0, 0.0, 0.0, 0.0

        def on_fit_start(self, trainer, pl_module) -> None:
            self.fit_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps, self.step_s = self.steps + 1, self.step_s + time.perf_counter() - self.step_start

        def on_fit_end(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                write_json(
                    path, {"steps": self.steps, "step_s": self.step_s, "fit_s": time.perf_counter() - self.fit_start}
                )

    return StepTimer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepare stage's output folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt and mlflow_run.json")
    parser.add_argument("--checkpoints", type=Path, required=True, help="folder for Lightning checkpoints")
    parser.add_argument("--history", type=Path, default=None, help="CSV of per-epoch metrics, for dvc plots")
    parser.add_argument("--cv-metrics", type=Path, default=None, help="cross-validation summary, for dvc metrics")
    args = parser.parse_args()
    params = load_params()
    kind = read_meta(args.prepared)["kind"]
    apply_defaults(params, kind)
    check_model_fits_data(params.model.name, kind)
    console.quiet_libraries()
    uri = tracking.tracking_uri(params.mlflow)
    tracking.ensure_store(uri, params.mlflow.experiment_name)
    tracking.configure_client(uri, params.mlflow.max_unreachable_s, "train")
    configure_threads(
        params.trainer.num_threads,
        processes_per_node=devices_per_node(params.trainer.accelerator, params.trainer.devices),
    )
    timing = os.environ.get(STEP_TIMES_ENV)
    with tracking.outage_ends_clearly(
        uri,
        params.mlflow.max_unreachable_s,
        "training",
        f"Training stopped; the checkpoints in {args.checkpoints} are kept: once the "
        "server answers again, `dvc repro` resumes from the last one.",
    ):
        run_id = fit(
            params,
            args.prepared,
            args.out,
            args.checkpoints,
            history_file=args.history,
            cv_metrics_file=args.cv_metrics,
            extra_callbacks=[step_timer(Path(timing))] if timing else None,
        )
    if run_id:
        log.info(
            f"train: model saved to {args.out / MODEL_FILE}; MLflow run {run_id}\n"
            f"train: {tracking.run_url(uri, run_id)}"
        )


if __name__ == "__main__":
    run_cli(main)
