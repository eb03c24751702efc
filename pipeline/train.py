"""Stage 2, train: fit a `models/` network on the prepared splits with Lightning, tracked as one MLflow run.

    python -m pipeline.train --prepared data/prepared --out outputs/model --checkpoints outputs/checkpoints

Reads `model`, `train`, `trainer`, `mlflow`. Writes `<out>/model.pt` (the best checkpoint's weights and the config
to rebuild the network), `<out>/mlflow_run.json` (the run evaluate continues), and with `--history` and
`--cv-metrics` the per-epoch metrics and the cross-validation summary. Under DDP every process runs this file; only
global rank zero talks to MLflow and writes outputs.

Lightning, torch and MLflow are imported inside `fit` so that a bad params.yaml or an unreachable tracking server
is reported before paying several seconds of imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pipeline import console, defaults, tracking
from pipeline.config import (
    Params,
    ParamsError,
    check_model_fits_data,
    config_hash,
    load_params,
    resolve_auto,
    resolved,
    used_params,
)
from pipeline.errors import PipelineError, run_cli
from pipeline.files import read_json, write_json
from pipeline.threads import configure_threads, devices_per_node

if TYPE_CHECKING:
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT

MODEL_FILE = "model.pt"
BEST_CHECKPOINT = "best"
WEIGHTS_ARTIFACT_DIR = "weights"  # model.pt in the run; "model" is the pyfunc model evaluate logs
CV_SUMMARY_FILE = "cv_summary.json"  # kept with the checkpoints: a resumed final fit does not redo the folds
RESUMED_FROM_TAG = "resumed_from.run_id"  # on a run that continued an interrupted one
RESUMED_EPOCHS_TAG = "resumed_from.epochs"  # epochs the interrupted run had completed
STEP_TIMES_ENV = "PIPELINE_STEP_TIMES"  # a JSON file: benchmarks learn how long the training steps took
STOPPED_BECAUSE_TAG = "stopped_because"  # why training ended; metrics best_epoch and stopped_epoch say when
DEFAULTS_KIND_TAG = "defaults.kind"  # the kind of data whose defaults `auto` took
AUTO_KEYS_TAG = "defaults.auto_keys"  # the keys that took them (comma-separated); their values are the run's params


def fit(params: Params, prepared_dir: Path, model_dir: Path, checkpoint_dir: Path,
        extra_callbacks: list | None = None, history_file: Path | None = None,
        cv_metrics_file: Path | None = None) -> str | None:
    """Train, save the best model and return the MLflow run id (None on ranks other than zero).

    `extra_callbacks` are Lightning callbacks added to the stage's own (benchmarks use one to time epochs).
    `history_file` receives one row per epoch of train/val metrics, for `dvc plots`; `cv_metrics_file` the
    cross-validation summary (`train.cv_folds`), for `dvc metrics`.
    """
    import pytorch_lightning as pl

    from pipeline import checkpoints
    from pipeline.cross_validation import cross_validate, write_cv_metrics
    from pipeline.datamodule import PreparedDataModule, load_split
    from pipeline.trained_model import save_trained_model

    meta = read_meta(prepared_dir)
    apply_defaults(params, meta["kind"])
    if params.auto_keys and checkpoints.launched_as_global_zero():
        print(f"train: {defaults.describe(params, params.defaults_kind, params.auto_keys)}")
    uri = tracking.tracking_uri(params.mlflow)
    digest = tracking.data_digest(prepared_dir, meta)
    attempt = checkpoints.fingerprint(params, meta["digest"])
    resume = checkpoints.resume_or_start_over(checkpoint_dir, attempt, uri)
    logger = new_logger(params, meta, digest, extra_tags={
        RESUMED_FROM_TAG: resume.run_id or "", RESUMED_EPOCHS_TAG: str(resume.epochs)} if resume else None)
    system_metrics = None
    if checkpoints.launched_as_global_zero():  # the run exists from here on: a kill at any point is on record
        if resume and resume.run_id:  # metrics are logged per epoch (step = epoch)
            tracking.take_over_run(logger.experiment, resume.run_id, logger.run_id, resume.epochs)
        checkpoints.record_attempt(checkpoint_dir, attempt, logger.run_id, uri)
        if params.mlflow.system_metrics:
            system_metrics = tracking.start_system_metrics(uri, logger.run_id)

    with ends_killed_on_interrupt(logger, checkpoint_dir), tracking.stopping(system_metrics):
        cv_summary, cv_summary_file = None, checkpoint_dir / CV_SUMMARY_FILE
        if params.train.cv_folds > 1 and resume:  # the folds finished before the final fit began
            cv_summary = read_json(cv_summary_file)
        elif params.train.cv_folds > 1:  # folds first, each a nested run under this one; then the model as set
            try:
                cv_summary = cross_validate(params, prepared_dir, meta, logger, checkpoint_dir / "cv")
            except BaseException:  # the parent run exists already; no Trainer owns it yet to mark it
                logger.experiment.set_terminated(logger.run_id, "FAILED")
                raise
            write_json(cv_summary_file, cv_summary)
        pl.seed_everything(params.train.seed, workers=True, verbose=False)
        module = new_module(params, meta, load_split(prepared_dir, "train").y)
        checkpoint, callbacks = new_callbacks(params, checkpoint_dir)
        trainer = new_trainer(params, [logger], callbacks + (extra_callbacks or []), checkpoint_dir)
        trainer.fit(module, datamodule=PreparedDataModule(prepared_dir, resolved(params.train.batch_size)),
                    ckpt_path=resume.checkpoint if resume else None)
        # (on any other failure Lightning marks the run FAILED before re-raising)

    if not trainer.is_global_zero:
        return None
    try:
        best = torch_load_checkpoint(checkpoint.best_model_path or checkpoint.last_model_path)
        module.load_state_dict(best["state_dict"])
        log_stopping(logger, params, trainer, int(best["epoch"]), checkpoint.best_model_score)
        save_trained_model(model_dir / MODEL_FILE, module.net, params.model.name, model_hparams(params), meta)
        logger.experiment.log_inputs(logger.run_id, [tracking.prepared_data_input(prepared_dir, meta, digest)])
        logger.experiment.log_artifact(logger.run_id, str(model_dir / MODEL_FILE), WEIGHTS_ARTIFACT_DIR)
        tracking.write_run_file(model_dir, logger.run_id, uri)
        if history_file:
            write_history(logger.experiment, logger.run_id, history_file)
        if cv_metrics_file:
            write_cv_metrics(cv_metrics_file, params.train.cv_folds, cv_summary)
        logger.experiment.log_artifact(logger.run_id, str(model_dir / tracking.RUN_FILE), WEIGHTS_ARTIFACT_DIR)
        checkpoints.record_attempt(checkpoint_dir, attempt, logger.run_id, uri, finished=True)
    except BaseException as exc:
        if tracking.is_unreachable(exc):  # marking the run would wait as long again, and fail
            tracking.stop_retrying()
            raise
        logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
    return logger.run_id


def apply_defaults(params: Params, kind: str) -> None:
    """The auto keys take the defaults of the prepared data's kind (params built in code arrive unresolved; loaded
    ones are resolved already, by params.yaml's data section, which must then describe the same kind)."""
    resolve_auto(params, kind)
    if params.auto_keys and params.defaults_kind != kind:
        raise ParamsError(f"the prepared data is {kind} data, but params.yaml's data section describes "
                          f"{params.defaults_kind} data, whose defaults the auto keys took; rerun prepare "
                          "(`dvc repro`) so that the prepared data matches params.yaml.")


@contextmanager
def ends_killed_on_interrupt(logger: Any, checkpoint_dir: Path) -> Iterator[None]:
    """Ctrl+C / SIGINT: Lightning shuts down cleanly, marks the run FAILED and exits 1; between Lightning's loops it
    is a plain KeyboardInterrupt. Either way the run ends KILLED and the user learns what the next run will do.

    An interrupt that cuts an MLflow write short leaves that SQLite transaction holding the store's lock, and
    Lightning's shutdown then fails to mark the run ("database is locked"). That is still the interrupt: the run is
    left to the next attempt, which ends it KILLED when it finds it RUNNING (as after a SIGKILL)."""
    from pipeline import checkpoints

    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, (SystemExit, KeyboardInterrupt)) and not _raised_by_interrupt(exc):
            raise
        if checkpoints.launched_as_global_zero() and logger.run_id:
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                logger.experiment.set_terminated(logger.run_id, "KILLED")
            last = checkpoint_dir / checkpoints.LAST_CHECKPOINT
            print(f"train: interrupted; the next `dvc repro` resumes from {last}" if last.is_file() else
                  "train: interrupted before the first checkpoint; the next `dvc repro` starts over", file=sys.stderr)
        raise KeyboardInterrupt from None


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
        reason = getattr(getattr(stopper, "stopping_reason", None), "value", "patience_exhausted")  # Lightning 2.6
        because = (f"early stopping: {params.train.monitor} did not improve for "
                   f"{params.train.early_stopping_patience} epochs" if reason == "patience_exhausted"
                   else f"early stopping: {reason}")
    elif trainer.current_epoch >= params.train.max_epochs:
        because = f"train.max_epochs ({params.train.max_epochs}) reached"
    else:
        because = "stopped by the trainer"
    logger.experiment.log_batch(logger.run_id, metrics=tracking.metrics_at_step(
        {"best_epoch": best_epoch, "stopped_epoch": stopped_epoch}, step=stopped_epoch))
    logger.experiment.set_tag(logger.run_id, STOPPED_BECAUSE_TAG, because)
    score = f" ({params.train.monitor} {float(best_score):.4f})" if best_score is not None else ""
    print(f"train: best epoch {best_epoch}{score} of {stopped_epoch + 1} run (epochs 0-{stopped_epoch}); "
          f"stopped: {because}")


def model_hparams(params: Params) -> dict[str, Any]:
    return dataclasses.asdict(getattr(params.model, params.model.name))


def new_logger(params: Params, meta: dict[str, Any], digest: str, run_name: str | None = None,
               extra_tags: dict[str, str] | None = None) -> Any:
    """An MLFlowLogger; it creates its run on global rank zero when first used."""
    from pytorch_lightning.loggers import MLFlowLogger

    uri = tracking.tracking_uri(params.mlflow)
    return MLFlowLogger(
        experiment_name=params.mlflow.experiment_name,
        run_name=run_name or tracking.run_name(params, meta["kind"]),
        tracking_uri=uri,
        artifact_location=tracking.artifact_location(uri),
        tags={**tracking.run_tags(meta["dataset"], digest, params.model.name), **(extra_tags or {}),
              tracking.CONFIG_HASH_TAG: config_hash(params), **auto_tags(params)},
        log_model=False,  # model.pt is logged by fit; checkpoints stay DVC outputs
    )


def auto_tags(params: Params) -> dict[str, str]:
    if not params.auto_keys:
        return {}
    return {DEFAULTS_KIND_TAG: params.defaults_kind, AUTO_KEYS_TAG: ",".join(params.auto_keys)}


def new_module(params: Params, meta: dict[str, Any], train_labels: Any) -> Any:
    from models import build_model
    from pipeline.lightning_module import Classifier

    net = build_model(params.model.name, model_hparams(params), meta["input_shape"], meta["num_classes"],
                      meta.get("vocab_size"), meta.get("categorical_cardinalities"))
    # Only what this run reads (evaluate.* may change without retraining; evaluate logs those itself).
    run_params = used_params(params, meta["kind"])
    weights = balanced_class_weights(train_labels, meta["num_classes"]) if params.train.class_weights == "balanced" \
        else None
    return Classifier(net, meta["num_classes"], params.train, logged_params=run_params, class_weights=weights)


def new_callbacks(params: Params, checkpoint_dir: Path) -> tuple[Any, list]:
    """The best-checkpoint callback (returned apart: fit reloads its best weights), plus the others."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from pipeline.checkpoints import RandomStateCheckpoint
    from pipeline.lightning_module import monitor_mode

    monitor = resolved(params.train.monitor)
    mode = monitor_mode(monitor)
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename=BEST_CHECKPOINT, monitor=monitor, mode=mode,
                                 save_last=True, auto_insert_metric_name=False)
    callbacks = [checkpoint, RandomStateCheckpoint()]  # the module logs the learning rate, as `lr`
    if params.trainer.progress_bar:
        callbacks.append(console.progress_bar())
    if params.train.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=params.train.early_stopping_patience))
    return checkpoint, callbacks


def new_trainer(params: Params, loggers: list, callbacks: list, root_dir: Path) -> Any:
    import pytorch_lightning as pl

    from pipeline.checkpoints import AtomicCheckpointIO

    t = params.trainer
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=cast("_PRECISION_INPUT", t.precision),  # one of the choices config.py allows
        deterministic=t.deterministic, enable_progress_bar=t.progress_bar,
        log_every_n_steps=t.log_every_n_steps, max_epochs=params.train.max_epochs,
        gradient_clip_val=params.train.gradient_clip_val, callbacks=[*callbacks, tracking.outage_callback()],
        logger=loggers, default_root_dir=root_dir, plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,  # the network's size is in its MLflow params
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


def balanced_class_weights(labels: Any, num_classes: int) -> Any:
    """n_samples / (n_classes * count) per class (scikit-learn's 'balanced'), from the training labels."""
    import numpy as np
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(labels))
    return torch.tensor(weights, dtype=torch.float32)


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
                write_json(path, {"steps": self.steps, "step_s": self.step_s,
                                  "fit_s": time.perf_counter() - self.fit_start})

    return StepTimer()


def read_meta(prepared_dir: Path) -> dict[str, Any]:
    path = prepared_dir / "meta.json"
    if not path.is_file():
        raise PipelineError(f"{path}: not found. Run the prepare stage first (dvc repro prepare).")
    return read_json(path)


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
    configure_threads(params.trainer.num_threads,
                      processes_per_node=devices_per_node(params.trainer.accelerator, params.trainer.devices))
    timing = os.environ.get(STEP_TIMES_ENV)
    with tracking.outage_ends_clearly(uri, params.mlflow.max_unreachable_s, "training",
                                      f"Training stopped; the checkpoints in {args.checkpoints} are kept: once the "
                                      "server answers again, `dvc repro` resumes from the last one."):
        run_id = fit(params, args.prepared, args.out, args.checkpoints, history_file=args.history,
                     cv_metrics_file=args.cv_metrics, extra_callbacks=[step_timer(Path(timing))] if timing else None)
    if run_id:
        print(f"train: model saved to {args.out / MODEL_FILE}; MLflow run {run_id}\n"
              f"train: {tracking.run_url(uri, run_id)}")


if __name__ == "__main__":
    run_cli(main)
